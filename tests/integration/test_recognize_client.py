"""`seqserve recognize` and SeqserveClient.recognize / recognize_stream against a live server with tiny
random-weight speech models: the structure of what they print and return (not the transcripts),
a stream equal to one offline call, and errors that name what is wrong."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import re
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from service.client import ClientError, SeqserveClient, cli
from tests.bundles import make_bundle
from tests.integration.harness import run_cli, serving

pytestmark = pytest.mark.asyncio(loop_scope="module")
STREAMING, BIDIRECTIONAL = "tiny-recognize", "tiny-recognize-bi"
SECONDS = 1.2  # of each test recording
DIGITS = re.compile(r"[0-9]( [0-9])*|")  # a transcript of the digit models: "4 0 7", or nothing


def speech(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """int16 (N,): tone bursts with pauses and a little noise, speech-like input for a random-weight model."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.005 * rng.standard_normal(len(t))
    for start in np.arange(0.1, seconds - 0.3, 0.45):
        burst = (t >= start) & (t < start + 0.25)
        x[burst] += 0.3 * np.sin(2 * np.pi * rng.uniform(300, 3000) * t[burst])
    return (np.clip(x, -1, 1) * 32767).astype("<i2")


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(samples, channels).tobytes())
    return path


@pytest.fixture(scope="module")
def wav16k(tmp_path_factory) -> Path:
    return write_wav(tmp_path_factory.mktemp("audio") / "speech.wav", speech(SECONDS, 16000), 16000)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    make_bundle(models, "recognize")  # streams: unidirectional, with a step graph
    make_bundle(models, "recognize", name=BIDIRECTIONAL, bidirectional=True, hidden_size=8, seed=2)
    async with serving(models) as s:
        yield s


def offline(address: str, audio: bytes, **kw):
    with SeqserveClient(address, timeout=30) as client:
        return client.recognize(audio, **kw)


# -- command line --------------------------------------------------------------------------------


async def test_cli_prints_the_transcript_or_json(served, capsys, wav16k):
    rc, out, err = await run_cli(capsys, "recognize", str(wav16k), "--address", served.address)
    assert rc == 0, err
    assert len(out.splitlines()) == 1 and DIGITS.fullmatch(out.rstrip("\n"))
    assert err == f"[{STREAMING} v1, {SECONDS:.2f} s of audio]\n"
    rc, js, _ = await run_cli(capsys, "recognize", str(wav16k), "--json", "--address", served.address)
    data = json.loads(js)
    assert rc == 0 and (data["model"], data["version"], data["transcript"]) == (STREAMING, "1", out.rstrip("\n"))
    (result,) = data["results"]
    assert len(result["alternatives"]) == 1 and result["alternatives"][0]["words"] == []
    assert data["total_billed_time"] == pytest.approx(SECONDS) and result["result_end_time"] == pytest.approx(SECONDS)


async def test_cli_lists_alternatives_and_words(served, capsys, wav16k):
    argv = ["recognize", str(wav16k), "--alternatives", "3", "--words", "--address", served.address]
    rc, out, err = await run_cli(capsys, *argv)
    assert rc == 0, err
    best, alternatives, words = out.split("\n\n")
    header, *rows = alternatives.splitlines()
    assert header == "alternative\tconfidence\ttranscript" and 1 <= len(rows) <= 3
    assert [r.split("\t")[0] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    assert rows[0].split("\t")[2] == best
    header, *rows = words.splitlines()
    assert header == "word\tstart\tend\tconfidence" and [r.split("\t")[0] for r in rows] == best.split()

    rc, out, _ = await run_cli(capsys, *argv, "--json")
    alts = json.loads(out)["results"][0]["alternatives"]
    confidences = [a["confidence"] for a in alts]
    assert 1 <= len(alts) <= 3 and all(0 <= c <= 1 for c in confidences) and sum(confidences) <= 1 + 1e-6
    assert confidences == sorted(confidences, reverse=True)
    for a in alts:
        assert [w["word"] for w in a["words"]] == a["transcript"].split()
        spans = [(w["start_time"], w["end_time"]) for w in a["words"]]
        # (words the model names only in the silence the server appends end the audio, possibly together)
        assert all(0 <= start < end or start == end == spans[-1][1] for start, end in spans)
        assert all(end <= SECONDS + 1e-9 for _, end in spans)
        assert all(a_end <= b_start + 1e-9 for (_, a_end), (b_start, _) in itertools.pairwise(spans))  # in order
        assert all(0 <= w["confidence"] <= 1 for w in a["words"])


async def test_cli_stream_shows_interim_results_and_ends_as_the_offline_call(served, capsys, wav16k):
    reference = await asyncio.to_thread(offline, served.address, wav16k.read_bytes(), max_alternatives=2)
    rc, out, err = await run_cli(capsys, "recognize", str(wav16k), "--stream", "--chunk-ms", "80",
                                 "--address", served.address)
    assert rc == 0, err
    assert out == reference.transcript + "\n"
    interim = [line for line in err.splitlines() if line.startswith("interim ")]  # not a terminal: one line each
    assert interim and all(re.fullmatch(r"interim \d+\.\d\d s \(stability [01]\.\d\d\): [0-9 ]*", line)
                           for line in interim)
    assert err.splitlines()[-1] == f"[{STREAMING} v1, {SECONDS:.2f} s of audio, streamed]"

    rc, out, _ = await run_cli(capsys, "recognize", str(wav16k), "--stream", "--json", "--alternatives", "2",
                               "--address", served.address)
    updates = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and [u["is_final"] for u in updates] == [False] * (len(updates) - 1) + [True]
    assert len(updates) >= 2 and all(u["model"] == STREAMING for u in updates)
    ends = [u["result_end_time"] for u in updates]
    assert ends == sorted(ends) and ends[-1] == pytest.approx(reference.results[0].result_end_time)
    final = updates[-1]
    assert [(a["transcript"], a["confidence"]) for a in final["alternatives"]] == [
        (a.transcript, pytest.approx(a.confidence, abs=1e-6)) for a in reference.results[0].alternatives]


async def test_cli_reads_standard_input_and_paces_at_real_time(served, capsys, monkeypatch, tmp_path):
    samples = speech(0.5, 8000, seed=3)
    data = write_wav(tmp_path / "short.wav", samples, 8000).read_bytes()
    reference = await asyncio.to_thread(offline, served.address, data)
    for extra in ([], ["--stream", "--realtime", "--chunk-ms", "100"]):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
        started = time.perf_counter()
        rc, out, err = await run_cli(capsys, "recognize", "-", *extra, "--address", served.address)
        assert (rc, out) == (0, reference.transcript + "\n"), err
    assert time.perf_counter() - started >= 0.5  # --realtime: the last chunk left once the 0.5 s had played


async def test_cli_errors_name_the_problem(served, capsys, tmp_path):
    stereo = str(write_wav(tmp_path / "stereo.wav", speech(0.3, 8000), 8000, channels=2))
    rc, out, err = await run_cli(capsys, "recognize", stereo, "--address", served.address)
    assert (rc, out) == (cli.EXIT_RPC_ERROR, "")
    assert err == "error: INVALID_ARGUMENT: audio: the WAV file has 2 channels; only mono is accepted\n"
    rc, out, err = await run_cli(capsys, "recognize", stereo, "--stream", "--address", served.address)
    assert (rc, out) == (cli.EXIT_USAGE, "")  # refused here, before a stream opens
    assert err == f"error: INVALID_ARGUMENT: {stereo}: audio: the WAV file has 2 channels; only mono is accepted\n"

    missing = str(tmp_path / "nowhere.wav")
    rc, out, err = await run_cli(capsys, "recognize", missing, "--address", served.address)
    assert (rc, out) == (cli.EXIT_USAGE, "")
    assert err == f"error: INVALID_ARGUMENT: audio file {missing!r} cannot be read: No such file or directory\n"

    mono = str(write_wav(tmp_path / "mono.wav", speech(0.3, 8000), 8000))
    rc, out, err = await run_cli(capsys, "recognize", mono, "--stream", "--model", BIDIRECTIONAL,
                                 "--address", served.address)
    assert (rc, out) == (cli.EXIT_RPC_ERROR, "")
    assert err.startswith(f"error: FAILED_PRECONDITION: model '{BIDIRECTIONAL}' is bidirectional and cannot stream;")
    assert err.endswith("leave out --stream to recognise the whole file at once\n")
    rc, out, err = await run_cli(capsys, "recognize", mono, "--model", BIDIRECTIONAL, "--address", served.address)
    assert rc == 0 and err == f"[{BIDIRECTIONAL} v1, 0.30 s of audio]\n"  # offline it answers

    for extra in ([], ["--stream"]):
        rc, _, err = await run_cli(capsys, "recognize", mono, "--alternatives", "11", *extra, "--address",
                                   served.address)
        assert (rc, err) == (cli.EXIT_RPC_ERROR, "error: INVALID_ARGUMENT: --alternatives 11 is outside 0..10\n")
    for flags in (["--realtime"], ["--single-utterance"]):
        rc, _, err = await run_cli(capsys, "recognize", mono, *flags, "--address", served.address)
        assert (rc, err) == (cli.EXIT_USAGE, "error: INVALID_ARGUMENT: --chunk-ms, --realtime and --single-utterance "
                                             "apply to --stream only\n")
    rc, _, err = await run_cli(capsys, "recognize", mono, "--stream", "--end-silence-ms", "500", "--address",
                               served.address)
    assert (rc, err) == (cli.EXIT_USAGE, "error: INVALID_ARGUMENT: --end-silence-ms applies to --single-utterance only\n")
    rc, _, err = await run_cli(capsys, "recognize", mono, "--stream", "--single-utterance", "--end-silence-ms", "50",
                               "--address", served.address)
    assert rc == cli.EXIT_RPC_ERROR and "streaming_config.end_silence_ms 50 is outside 100..10000" in err


async def test_recognize_help_describes_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["recognize", "--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "seqserve recognize" in text
    for flag in ("FILE", "--stream", "--chunk-ms", "--realtime", "--single-utterance", "--end-silence-ms",
                 "--alternatives", "--words", "--json", "--model",
                 "--version", "--address", "--timeout", "--tls", "--token-file"):
        assert flag in text


# -- client --------------------------------------------------------------------------------------


def _stream_calls(address: str, pcm: bytes) -> dict:
    def uneven(sizes: list[int]):  # a generator, as a microphone loop would be
        i = k = 0
        while i < len(pcm):
            yield pcm[i : i + sizes[k % len(sizes)]]
            i, k = i + sizes[k % len(sizes)], k + 1

    def fails():
        yield pcm[:3200]
        raise OSError("microphone unplugged")

    with SeqserveClient(address, timeout=30) as client:
        out = {
            "offline": client.recognize(pcm, encoding="LINEAR16", sample_rate_hertz=8000, word_time_offsets=True),
            "stream": list(client.recognize_stream(uneven([6, 1000, 322, 4800, 2]), sample_rate_hertz=8000,
                                                   word_time_offsets=True)),
        }
        for name, chunks in (("odd", uneven([3200, 33])), ("raises", fails())):
            try:
                list(client.recognize_stream(chunks, sample_rate_hertz=8000))
            except (ClientError, OSError) as err:
                out[name] = err
        return out


async def test_client_stream_of_uneven_chunks_ends_as_the_offline_call(served):
    r = await asyncio.to_thread(_stream_calls, served.address, speech(SECONDS, 8000, seed=1).tobytes())
    offline_result, updates = r["offline"], r["stream"]
    assert [u.is_final for u in updates] == [False] * (len(updates) - 1) + [True] and len(updates) >= 2
    final = updates[-1]
    assert (final.model, final.version, final.stability) == (STREAMING, "1", 0.0)
    assert final.transcript == offline_result.transcript
    assert final.alternatives[0].words == offline_result.results[0].alternatives[0].words
    assert final.total_billed_time == pytest.approx(SECONDS)
    assert all(len(u.alternatives) == 1 and 0 <= u.stability <= 1 and not u.alternatives[0].words
               for u in updates[:-1])

    err = r["odd"]
    assert (err.code, err.field) == ("INVALID_ARGUMENT", "audio_content")
    assert err.message.startswith("audio_content of message ") and err.message.endswith(
        " has 33 bytes; LINEAR16 needs an even number (2 bytes per sample)")
    assert isinstance(r["raises"], OSError) and str(r["raises"]) == "microphone unplugged"  # the caller's own error
