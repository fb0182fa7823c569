"""The client commands of ``seqserve`` (translate, forecast, generate, score, recognize, models, health):
a call through SeqserveClient and its answer printed as text or JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from .csvhistory import read_csv_history
from .options import EXIT_RPC_ERROR, EXIT_USAGE


def print_json(value: Any, out: TextIO) -> None:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    json.dump(value, out, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    out.write("\n")


def read_texts(args: argparse.Namespace, stdin: TextIO) -> list[str]:
    """TEXT arguments, ``-`` replaced by standard input's lines, then --file's lines (blank lines skipped)."""
    texts: list[str] = []
    for text in args.texts:
        texts += [line.strip() for line in stdin if line.strip()] if text == "-" else [text]
    if args.file:
        try:
            with open(args.file, encoding="utf-8-sig") as f:
                texts += [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--file {args.file}: {err}") from None
    if not texts:
        raise ValueError("nothing to translate: give TEXT arguments, - for standard input, or --file PATH")
    return texts


def answering_model(client, task: str, model: str, version: str = "") -> dict[str, Any]:
    """What the server lists for the version that answers a ``task`` request naming ``model`` and
    ``version`` ("" = the default model, the newest version); {} when none is READY."""
    ready = [m for m in client.list_models(task=task) if m.get("state") == "READY"]
    if not model:
        return next((m for m in ready if m.get("is_default")), {})
    named = [m for m in ready if m["name"] == model and (not version or m["version"] == version)]
    return max(named, key=lambda m: int(m["version"]), default={})


def run_translate(client, args, out: TextIO) -> int:
    texts = read_texts(args, sys.stdin)
    batch = 0  # more texts than the server takes in one request go in batches (0 = unknown: the server says)
    if len(texts) > 1:
        batch = answering_model(client, "translate", args.model, args.version).get("limits", {}).get("max_texts", 0)
    result = client.translate(
        texts, model=args.model, version=args.version, beam_size=args.beam,
        max_length=args.max_length, return_attention=args.attention, batch_size=batch,
    )
    for i, t in enumerate(result.translations, start=1):
        for line in unknown_warnings(t, result.model, i if len(result.translations) > 1 else 0):
            print(line, file=sys.stderr)
    if args.json:
        print_json(result, out)
        return 0
    for t in result.translations:
        out.write(f"{t.text}\n")
        if t.attention is not None:
            width = max([len(s) for s in t.source_tokens] + [5])
            out.write("  " + " " * 12 + " ".join(s.rjust(width) for s in t.source_tokens) + "\n")
            for token, row in zip(t.tokens, t.attention, strict=True):
                out.write(f"  {token[:12]:<12}" + " ".join(f"{w:{width}.2f}" for w in row) + "\n")
    return 0


def unknown_warnings(t, model: str, number: int = 0) -> list[str]:
    """stderr lines for one translation whose source the model did not wholly know (``number`` > 0:
    which text, for several)."""
    if not t.unknown_source_tokens:
        return []
    which = f"text {number}: " if number else ""
    words = ", ".join(t.unknown_words[:8]) + (", ..." if len(t.unknown_words) > 8 else "")
    copied = f"; {t.copied_words} passed through as written" if t.copied_words else ""
    lines = [f"warning: {which}{t.unknown_source_tokens} of {len(t.source_tokens)} source tokens unknown to "
             f"{model}: {words}{copied}"]
    if t.warning:
        lines.append(f"warning: {which}{t.warning}")
    return lines


def run_forecast(client, args, out: TextIO) -> int:
    def channels() -> int:  # asked only when the file has several candidate columns
        spec = answering_model(client, "forecast", args.model, args.version).get("forecast") or {}
        return int(spec.get("channels", 0))

    try:
        csv_history = read_csv_history(args.csv, args.column, sys.stdin, channels=channels)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    for note in csv_history.notes:
        print(note, file=sys.stderr)
    names, rows = csv_history.names, csv_history.rows
    history = [r[0] for r in rows] if len(names) == 1 else rows
    frequency = args.frequency
    if not frequency and csv_history.frequency():
        spec = answering_model(client, "forecast", args.model, args.version).get("forecast") or {}
        if spec.get("season_input"):
            frequency = csv_history.frequency()
            print(f"frequency {frequency} (from the {csv_history.time_column!r} column)", file=sys.stderr)
    result = client.forecast(
        history, args.horizon, args.quantiles, model=args.model, version=args.version, frequency=frequency,
        season_length=args.season_length,
    )
    times = csv_history.next_times(len(result.forecast))
    if args.json:
        payload = dataclasses.asdict(result)
        payload["quantiles"] = {str(k): v for k, v in result.quantiles.items()}
        payload["channel_quantiles"] = {str(k): v for k, v in result.channel_quantiles.items()}
        payload["columns"] = names
        if times is not None:
            payload["times"] = [t.isoformat(sep=" ") for t in times]
        print_json(payload, out)
        return 0
    target = names[result.target_channel] if result.target_channel < len(names) else str(result.target_channel)
    levels = sorted(result.quantiles)
    season = f", season {result.season_length}" if result.season_length else ""
    out.write(f"# {result.model} v{result.version}, {len(rows)} steps of {', '.join(names)}; forecast of {target}{season}\n")
    out.write("\t".join(["step", *([csv_history.time_column] if times else []), "forecast",
                         *(f"q{q:g}" for q in levels)]) + "\n")
    digits = significant_digits([*result.forecast, *(v for q in levels for v in result.quantiles[q])])
    for h, point in enumerate(result.forecast, start=1):
        row = [point, *(result.quantiles[q][h - 1] for q in levels)]
        when = [times[h - 1].isoformat(sep=" ")] if times else []
        out.write("\t".join([str(h), *when, *(f"{v:.{digits}g}" for v in row)]) + "\n")
    return 0


def significant_digits(values: Sequence[float], base: int = 6) -> int:
    """Significant digits that show how ``values`` differ: ``base`` for numbers of the size of their
    spread, more when they sit far from zero (10 +- 5 around 1e9 needs 13), at most 17."""
    finite = [abs(v) for v in values if math.isfinite(v)]
    if not finite:
        return base
    spread = max(values) - min(values) if len(finite) == len(values) else 0.0
    largest = max(finite)
    if not spread > 0 or not largest > 0:
        return base
    return min(17, base + max(0, math.floor(math.log10(largest / spread)) - 1))


def run_generate(client, args, out: TextIO) -> int:
    params = dict(
        model=args.model, version=args.version, max_tokens=args.max_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop,
        logprobs=args.logprobs is not None, top_logprobs=args.logprobs or 0,
    )
    if args.stream:
        chunks = []
        for chunk in client.generate_stream(args.prompt, **params):
            chunks.append(chunk)
            if args.json:
                out.write(json.dumps(dataclasses.asdict(chunk), sort_keys=True) + "\n")
            else:
                out.write(chunk.text)
            out.flush()
        last = chunks[-1] if chunks else None
        if not args.json:
            out.write("\n")
            if last is not None:
                print(f"[{last.finish_reason}: {last.prompt_tokens} prompt + {last.completion_tokens} "
                      f"completion tokens]", file=sys.stderr)
            if args.logprobs is not None:
                write_logprobs([t for c in chunks for t in c.logprobs], out)
        return 0
    result = client.generate(args.prompt, **params)
    if args.json:
        print_json(result, out)
    else:
        out.write(result.text + "\n")
        print(f"[{result.model} v{result.version}, {result.finish_reason}: {result.prompt_tokens} prompt + "
              f"{result.completion_tokens} completion tokens]", file=sys.stderr)
        if args.logprobs is not None:
            write_logprobs(result.logprobs, out)
    return 0


def _shown(token: str) -> str:
    """A token as one visible cell: quoted and escaped when it has whitespace or control characters."""
    return repr(token) if not token.isprintable() or token.strip() != token or not token else token


def write_logprobs(entries, out: TextIO) -> None:
    """One line per token: the token, its log-probability and probability, then the alternatives."""
    out.write("\ntoken\tlogprob\tprob\talternatives\n")
    for t in entries:
        alternatives = "  ".join(f"{_shown(a.token)} {a.logprob:.3f}" for a in t.top_logprobs)
        out.write(f"{_shown(t.token)}\t{t.logprob:.3f}\t{math.exp(t.logprob):.3f}\t{alternatives}\n")


def run_score(client, args, out: TextIO) -> int:
    result = client.score(args.prompt, args.continuations, model=args.model, version=args.version)
    if args.json:
        print_json(result, out)
        return 0
    best = max(range(len(result.scores)), key=lambda i: result.scores[i].logprob)
    unknown = [s.text for s in result.scores if s.unknown_tokens]
    if result.unknown_prompt_tokens or unknown:
        where = (["the prompt"] if result.unknown_prompt_tokens else []) + [repr(t) for t in unknown]
        print(f"warning: {', '.join(where)} contain characters {result.model} never saw in training; their "
              "scores say little", file=sys.stderr)
    out.write(f"# {result.model} v{result.version}; prompt of {result.prompt_tokens} tokens\n")
    out.write("\tcontinuation\tlogprob\tprob\tper token\n")
    for i, s in enumerate(result.scores):
        tokens = "  ".join(f"{_shown(t.token)} {t.logprob:.3f}" for t in s.tokens)
        out.write(f"{'*' if i == best else ''}\t{_shown(s.text)}\t{s.logprob:.3f}\t{math.exp(s.logprob):.3g}\t{tokens}\n")
    return 0


DEFAULT_CHUNK_MS = 100.0


def read_audio(path: str, stdin: BinaryIO) -> bytes:
    """The bytes of FILE (``-`` = standard input); ValueError when it cannot be read or is empty."""
    if path == "-":
        data = stdin.read()
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise ValueError(f"audio file {path!r} cannot be read: {err.strerror or err}") from None
    if not data:
        raise ValueError(f"{'standard input' if path == '-' else repr(path)} is empty; expected a WAV file")
    return data


def wav_to_linear16(data: bytes, name: str) -> tuple[bytes, int]:
    """A mono WAV file's samples as LINEAR16 bytes (signed 16-bit little-endian) and its rate in Hz,
    for StreamingRecognize, which takes only LINEAR16.

    The file is read as the server reads a WAV for Recognize (service.core.audio.decode: PCM
    8/16/24/32-bit or float 32/64, mono, 8000..48000 Hz), so --stream takes every file the offline
    call takes; 16-bit PCM goes out exactly as stored, other formats rounded to 16 bits. Raises
    ValueError with the decoder's message (e.g. a stereo file: "the WAV file has 2 channels")."""
    import numpy as np

    from service.core import audio
    from service.core.errors import ServiceError

    try:
        decoded = audio.decode(data, audio.WAV, 0)
    except ServiceError as err:
        raise ValueError(f"{name}: {err.message}") from None
    # decode maps int16 to x / 32768, so this gives 16-bit files back bit for bit.
    samples = np.clip(np.round(decoded.samples * 32768.0), -32768, 32767).astype("<i2")
    return samples.tobytes(), decoded.rate


def pcm_chunks(pcm: bytes, rate: int, chunk_ms: float, realtime: bool) -> Iterator[bytes]:
    """LINEAR16 ``pcm`` at ``rate`` Hz in chunks of ``chunk_ms`` (whole samples, at least one);
    ``realtime`` holds each chunk back until the audio it carries has played, as a microphone would."""
    step = 2 * max(1, round(rate * chunk_ms / 1000))
    start = time.monotonic()
    for offset in range(0, len(pcm), step):
        chunk = pcm[offset : offset + step]
        if realtime:
            wait = start + (offset + len(chunk)) / (2 * rate) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        yield chunk


class InterimLine:
    """Interim transcripts on ``err``: one line rewritten in place on a terminal, else one line each."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.tty = err.isatty()
        self.shown = False

    def show(self, update) -> None:
        if self.tty:
            width = max(10, shutil.get_terminal_size().columns - 1)
            text = update.transcript
            if len(text) > width:  # a wrapped line cannot be rewritten: show the newest words
                text = "…" + text[-(width - 1) :]
            self.err.write(f"\r\x1b[K{text}")
            self.shown = True
        else:
            self.err.write(f"interim {update.result_end_time:.2f} s (stability {update.stability:.2f}): "
                           f"{update.transcript}\n")
        self.err.flush()

    def clear(self) -> None:
        if self.shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self.shown = False


def write_recognition(alternatives, args, out: TextIO) -> None:
    """The best transcript, then (--alternatives) each alternative with its confidence and (--words)
    each word of the best transcript with its offsets and confidence."""
    out.write((alternatives[0].transcript if alternatives else "") + "\n")
    if args.alternatives is not None:
        out.write("\nalternative\tconfidence\ttranscript\n")
        for i, a in enumerate(alternatives, start=1):
            out.write(f"{i}\t{a.confidence:.3f}\t{a.transcript}\n")
    if args.words:
        out.write("\nword\tstart\tend\tconfidence\n")
        for w in alternatives[0].words if alternatives else ():
            out.write(f"{w.word}\t{w.start_time:.3f}\t{w.end_time:.3f}\t{w.confidence:.3f}\n")


def run_recognize(client, args, out: TextIO) -> int:
    from service.client.client import ClientError

    if not args.stream and (args.realtime or args.chunk_ms is not None or args.single_utterance):
        raise ValueError("--chunk-ms, --realtime and --single-utterance apply to --stream only")
    if args.end_silence_ms and not args.single_utterance:
        raise ValueError("--end-silence-ms applies to --single-utterance only")
    data = read_audio(args.file, sys.stdin.buffer)
    params = dict(model=args.model, version=args.version, max_alternatives=args.alternatives or 1,
                  word_time_offsets=args.words)
    if not args.stream:
        result = client.recognize(data, encoding="WAV", **params)
        if args.json:
            print_json({**dataclasses.asdict(result), "transcript": result.transcript}, out)
            return 0
        write_recognition(result.results[0].alternatives if result.results else [], args, out)
        out.flush()  # the transcript before the note on stderr, where both go to one terminal
        print(f"[{result.model} v{result.version}, {result.total_billed_time:.2f} s of audio]", file=sys.stderr)
        return 0

    pcm, rate = wav_to_linear16(data, "standard input" if args.file == "-" else args.file)
    chunks = pcm_chunks(pcm, rate, args.chunk_ms or DEFAULT_CHUNK_MS, args.realtime)
    interim, final, utterance_ended = InterimLine(sys.stderr), None, False
    try:
        for update in client.recognize_stream(chunks, sample_rate_hertz=rate, interim_results=True,
                                              single_utterance=args.single_utterance,
                                              end_silence_ms=args.end_silence_ms, **params):
            if update.speech_event:
                utterance_ended = True
            if args.json:
                out.write(json.dumps({**dataclasses.asdict(update), "transcript": update.transcript}, sort_keys=True,
                                     ensure_ascii=False) + "\n")
                out.flush()
            elif not update.is_final and not update.speech_event:
                interim.show(update)
            if update.is_final:
                final = update
    except ClientError as err:
        interim.clear()
        if final is not None and not args.json:  # a deadline or a drain: what was heard, then the error
            write_recognition(final.alternatives, args, out)
        if err.code == "FAILED_PRECONDITION":
            raise ClientError(err.code, f"{err.message}; or leave out --stream to recognise the whole file at once",
                              err.field) from None
        raise
    interim.clear()
    if final is None:
        raise ClientError("UNKNOWN", "the stream ended without a final result")
    if not args.json:
        write_recognition(final.alternatives, args, out)
        out.flush()
        ended = f", the utterance ended at {final.result_end_time:.2f} s" if utterance_ended else ""
        print(f"[{final.model} v{final.version}, {final.total_billed_time:.2f} s of audio, streamed{ended}]",
              file=sys.stderr)
    return 0


def run_models(client, args, out: TextIO) -> int:
    if args.name:
        models = [client.get_model(args.name, args.version)]
    else:
        models = client.list_models(args.task)
    if args.json:
        print_json(models if not args.name else models[0], out)
        return 0
    if args.name:
        for key, value in models[0].items():
            out.write(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}\n")
        return 0
    columns = ("name", "version", "task", "cell", "num_layers", "hidden_size", "num_parameters", "weights", "state",
               "is_default")
    titles = ("NAME", "VERSION", "TASK", "CELL", "LAYERS", "HIDDEN", "PARAMS", "WEIGHTS", "STATE", "DEFAULT")
    table = [titles] + [tuple(str(m.get(c, "")) for c in columns) for m in models]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")
    for m in models:
        if m.get("error"):
            out.write(f"{m['name']} v{m['version']}: {m['error']}\n")
    return 0


SERVICES = ("seqserve.v1.Translator", "seqserve.v1.Forecaster", "seqserve.v1.Generator", "seqserve.v1.Recognizer",
            "seqserve.v1.Models")


def run_health(client, args, out: TextIO) -> int:
    from service.client.client import ClientError

    service = next((s for s in SERVICES if s.rsplit(".", 1)[1] == args.service), args.service)
    try:
        status = client.health(service)
    except ClientError as err:
        if err.code != "NOT_FOUND":
            raise
        raise ClientError(err.code, f"the server has no service {service!r}; it answers for '' (the whole "
                                    f"server), {', '.join(SERVICES)}") from None
    if args.json:
        print_json({"service": service, "status": status}, out)
    else:
        out.write(status + "\n")
    return 0 if status == "SERVING" else EXIT_RPC_ERROR


CLIENT_COMMANDS = {
    "translate": run_translate,
    "forecast": run_forecast,
    "generate": run_generate,
    "score": run_score,
    "recognize": run_recognize,
    "models": run_models,
    "health": run_health,
}
