"""The Python client and the seqserve command line against a live server."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest
import pytest_asyncio

from service.client import ClientError, SeqserveClient, cli
from tests.integration.harness import free_port, run_cli, serving

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(module_models):
    async with serving(module_models) as s:
        yield s


# -- client --------------------------------------------------------------------------------------


def _client_calls(address: str) -> dict:
    with SeqserveClient(address, timeout=10) as client:
        out = {
            "translate": client.translate("Ein Kind liest ein Buch.", beam_size=2, return_attention=True),
            "forecast": client.forecast(np.linspace(0, 1, 20), horizon=3, quantiles=[0.25, 0.75]),
            "forecast3": client.forecast(np.ones((12, 3)), model="tiny-forecast3"),
            "generate": client.generate("All:", max_tokens=12, seed=5, temperature=0.9),
            "stream": list(client.generate_stream("All:", max_tokens=12, seed=5, temperature=0.9)),
            "models": client.list_models(),
            "model": client.get_model("tiny-translate"),
            "model3": client.get_model("tiny-forecast3"),
            "health": client.health("seqserve.v1.Generator"),
        }
        try:
            client.generate("x", top_k=-1)
        except ClientError as err:
            out["error"] = err
        return out


async def test_client_returns_plain_values(served):
    r = await asyncio.to_thread(_client_calls, served.address)
    t = r["translate"].translations[0]
    assert r["translate"].model == "tiny-translate" and isinstance(t.text, str)
    assert len(t.attention) == len(t.tokens) and all(len(row) == len(t.source_tokens) for row in t.attention)
    f = r["forecast"]
    assert len(f.forecast) == 3 and sorted(f.quantiles) == [0.25, 0.75] and not f.channels
    f3 = r["forecast3"]
    assert f3.target_channel == 2 and len(f3.channels) == 3 and f3.forecast == f3.channels[2]
    assert r["model3"]["forecast"]["target_channel"] == 2  # the manifest's -1, described as the index it means
    assert set(f3.channel_quantiles) == set(f3.quantiles)
    assert "".join(c.text for c in r["stream"]) == r["generate"].text
    assert r["stream"][-1].finish_reason == r["generate"].finish_reason
    assert [m["name"] for m in r["models"]][0] == "tiny-forecast"
    assert r["model"]["limits"]["max_source_tokens"] == 64 and r["model"]["bidirectional"] is True
    assert r["health"] == "SERVING"
    err = r["error"]
    assert (err.code, err.field) == ("INVALID_ARGUMENT", "top_k") and "top_k -1" in err.message


def _break_early(address: str, n: int) -> list[str]:
    """Leave n endless streams after their first chunk; each must be cancelled on the server."""
    texts = []
    with SeqserveClient(address, timeout=30) as client:
        for _ in range(n):
            for chunk in client.generate_stream("First", max_tokens=1000, temperature=0.0):
                texts.append(chunk.text)
                break
        # All those streams were cancelled: a full-length one still fits under the default cap.
        texts.append(client.generate("First", max_tokens=5, temperature=0.0).text)
    return texts


async def test_leaving_a_stream_early_cancels_it(served):
    texts = await asyncio.to_thread(_break_early, served.address, 3)
    assert len(texts) == 4 and texts[-1].startswith(texts[0])


# -- command line --------------------------------------------------------------------------------


async def test_cli_translate(served, capsys):
    rc, out, _ = await run_cli(capsys, "translate", "Ein Mann trinkt Kaffee.", "Ein Mädchen lacht.",
                               "--beam", "2", "--address", served.address)
    assert rc == 0 and len(out.splitlines()) == 2
    rc, out, _ = await run_cli(capsys, "translate", "Ein Mann trinkt Kaffee.", "--json", "--address", served.address)
    data = json.loads(out)
    assert data["model"] == "tiny-translate" and len(data["translations"]) == 1


async def test_cli_forecast_from_csv(served, capsys, tmp_path):
    path = tmp_path / "load.csv"
    rows = ["time,load"] + [f"2024-01-01T{h:02d}:00,{50 + 10 * np.sin(h / 3):.3f}" for h in range(24)]
    path.write_text("\n".join(rows) + "\n")
    rc, out, _ = await run_cli(capsys, "forecast", "--csv", str(path), "--horizon", "4",
                               "--quantiles", "0.1,0.9", "--address", served.address)
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("# tiny-forecast v1, 24 steps of load")
    assert lines[1].split("\t") == ["step", "time", "forecast", "q0.1", "q0.9"]
    assert [line.split("\t")[:2] for line in lines[2:]] == [[str(h + 1), f"2024-01-02 0{h}:00:00"] for h in range(4)]
    rc, out, _ = await run_cli(capsys, "forecast", "--csv", str(path), "--column", "load", "--horizon", "2",
                               "--json", "--address", served.address)
    data = json.loads(out)
    assert len(data["forecast"]) == 2 and data["columns"] == ["load"]
    assert data["times"] == ["2024-01-02 00:00:00", "2024-01-02 01:00:00"]


async def test_cli_generate_plain_and_streamed_match(served, capsys):
    args = ["generate", "First", "--max-tokens", "15", "--seed", "3", "--temperature", "0.7", "--address", served.address]
    rc, plain, err = await run_cli(capsys, *args)
    assert rc == 0 and re.search(r"\[tiny-generate v1, \w+: 5 prompt \+ \d+ completion tokens\]", err)
    rc, streamed, _ = await run_cli(capsys, *args, "--stream")
    assert rc == 0 and streamed == plain
    rc, out, _ = await run_cli(capsys, *args, "--stream", "--json")
    chunks = [json.loads(line) for line in out.splitlines()]
    assert "".join(c["text"] for c in chunks) + "\n" == plain and chunks[-1]["finish_reason"]


async def test_cli_generate_lists_token_logprobs(served, capsys):
    args = ["generate", "First", "--max-tokens", "8", "--seed", "3", "--address", served.address]
    rc, plain, _ = await run_cli(capsys, *args)
    rc, out, _ = await run_cli(capsys, *args, "--logprobs", "2")
    head = plain + "\ntoken\tlogprob\tprob\talternatives\n"
    assert rc == 0 and out.startswith(head)  # the same text, then one row per token
    rows = [line.split("\t") for line in out[len(head):].splitlines()]
    assert rows and all(len(r) == 4 and float(r[1]) <= 0 and len(r[3].split("  ")) == 2 for r in rows)
    rc, streamed, _ = await run_cli(capsys, *args, "--logprobs", "2", "--stream")
    assert (rc, streamed) == (0, out)
    rc, _, err = await run_cli(capsys, *args, "--logprobs", "99")
    assert rc == cli.EXIT_RPC_ERROR and err.startswith("error: INVALID_ARGUMENT: --logprobs 99 must be within 0..20")


async def test_cli_score_marks_the_most_probable_continuation(served, capsys):
    from service.client import SeqserveClient

    rc, out, _ = await run_cli(capsys, "score", "First Citi", "zen", "qqq", "--address", served.address)
    header, columns, *rows = out.splitlines()
    assert rc == 0 and header == "# tiny-generate v1; prompt of 10 tokens" and len(rows) == 2
    with SeqserveClient(served.address) as client:
        result = await asyncio.to_thread(client.score, "First Citi", ["zen", "qqq"])
    best = result.best().text
    for row, s in zip(rows, result.scores, strict=True):
        mark, text, logprob, *_ = row.split("\t")
        assert (mark, text, float(logprob)) == ("*" if s.text == best else "", s.text, pytest.approx(s.logprob, abs=1e-3))
    rc, out, _ = await run_cli(capsys, "score", "First Citi", "zen", "--json", "--address", served.address)
    assert json.loads(out)["scores"][0]["tokens"][0]["token"] == "z"


async def test_cli_models_and_health(served, capsys):
    rc, out, _ = await run_cli(capsys, "models", "--address", served.address)
    lines = out.splitlines()
    assert rc == 0 and lines[0].split()[:3] == ["NAME", "VERSION", "TASK"]
    assert [line.split()[0] for line in lines[1:]] == ["tiny-forecast", "tiny-forecast3", "tiny-generate", "tiny-global", "tiny-recognize",
                                                   "tiny-translate"]
    assert "WEIGHTS" in lines[0].split() and all(" float32 " in line for line in lines[1:])
    rc, out, _ = await run_cli(capsys, "models", "tiny-generate", "--json", "--address", served.address)
    assert json.loads(out)["task"] == "generate"
    rc, out, _ = await run_cli(capsys, "health", "--service", "seqserve.v1.Forecaster", "--address", served.address)
    assert (rc, out) == (0, "SERVING\n")


async def test_cli_errors_print_code_and_message(served, capsys):
    rc, out, err = await run_cli(capsys, "generate", "x", "--model", "nope", "--address", served.address)
    assert rc == cli.EXIT_RPC_ERROR and out == ""
    assert err.startswith("error: NOT_FOUND: model 'nope' not found; the models are: tiny-")
    rc, _, err = await run_cli(capsys, "translate", "Hallo", "--beam", "99", "--address", served.address)
    assert rc == cli.EXIT_RPC_ERROR and err.startswith("error: INVALID_ARGUMENT: --beam 99")


async def test_a_server_that_is_not_there_gets_a_hint(capsys):
    port = free_port()
    rc, out, err = await run_cli(capsys, "health", "--address", f"127.0.0.1:{port}", "--timeout", "5")
    assert rc == cli.EXIT_RPC_ERROR and out == ""
    assert err.startswith("error: UNAVAILABLE: ")
    assert f"hint: is `seqserve serve` running at 127.0.0.1:{port}? Point --address (or SEQSERVE_ADDRESS) at it." in err
    rc, _, err = await run_cli(capsys, "bench", "--address", f"127.0.0.1:{port}", "--timeout", "1",
                               "--duration", "0.1", "--concurrency", "1")
    assert rc == cli.EXIT_RPC_ERROR
    assert f"no gRPC server answers at 127.0.0.1:{port} within 1 s: is `seqserve serve` running?" in err


async def test_health_takes_short_service_names_and_lists_the_real_ones(served, capsys):
    rc, out, _ = await run_cli(capsys, "health", "--service", "Translator", "--address", served.address)
    assert (rc, out) == (0, "SERVING\n")
    rc, out, err = await run_cli(capsys, "health", "--service", "Translater", "--address", served.address)
    assert rc == cli.EXIT_RPC_ERROR and out == ""
    assert err == ("error: NOT_FOUND: the server has no service 'Translater'; it answers for '' (the whole server), "
                   "seqserve.v1.Translator, seqserve.v1.Forecaster, seqserve.v1.Generator, seqserve.v1.Recognizer, "
                   "seqserve.v1.Models\n")


async def test_arguments_that_are_not_utf8_are_refused_in_one_line():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "service.client.cli", "translate", b"Gr\xfc\xdfe"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == cli.EXIT_USAGE and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr == "error: argument 2 ('Gr\\\\xfc\\\\xdfe') is not valid UTF-8; seqserve reads UTF-8 text\n"


async def test_a_reader_that_stops_early_is_no_crash(served):
    """`seqserve models --json | head -c 10` and `generate --stream | head -c 10`: exit 0, no traceback."""
    import subprocess
    import sys

    def head(argv: list[str]) -> tuple[int, str]:
        proc = subprocess.Popen([sys.executable, "-m", "service.client.cli", *argv, "--address", served.address],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = proc.stdout.read(10)
        assert len(first) == 10, proc.stderr.read().decode()
        proc.stdout.close()  # the reader is gone, as `head` leaves
        err = proc.stderr.read().decode()
        return proc.wait(timeout=60), err

    for argv in (["models", "--json"], ["generate", "First", "--stream", "--max-tokens", "1000", "--seed", "1"]):
        code, err = await asyncio.to_thread(head, argv)  # the server runs on this event loop
        assert code == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


async def test_translate_reads_standard_input_and_files_and_sends_in_batches(served, capsys, tmp_path, monkeypatch):
    import io

    texts = [f"Ein Mann {i}" for i in range(70)]  # more than the server's max_texts (32): three requests
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(texts[:40]) + "\n\n"))
    (tmp_path / "more.txt").write_text("\ufeff" + "\n".join(texts[40:]) + "\n", encoding="utf-8")
    rc, out, err = await run_cli(capsys, "translate", "-", "--file", str(tmp_path / "more.txt"),
                                 "--address", served.address, "--max-length", "3")
    assert rc == 0, err
    assert len(out.splitlines()) == 70
    rc, _, err = await run_cli(capsys, "translate", "--file", str(tmp_path / "none.txt"), "--address", served.address)
    assert rc == cli.EXIT_USAGE and err.startswith("error: INVALID_ARGUMENT: --file ")


async def test_json_keeps_non_ascii_and_errors_are_json_too(served, capsys):
    rc, out, _ = await run_cli(capsys, "translate", "Ein Mann fährt Fahrrad.", "--json", "--address", served.address)
    assert rc == 0 and "\\u" not in out and any(ord(c) > 127 for c in out)  # tokens such as "▁f\u00e4" come as text
    rc, out, err = await run_cli(capsys, "generate", "x", "--model", "nope", "--json", "--address", served.address)
    assert rc == cli.EXIT_RPC_ERROR and out == ""
    error = json.loads(err)["error"]
    assert error["code"] == "NOT_FOUND" and error["message"].startswith("model 'nope' not found")


async def test_the_readme_forecast_example_runs_with_the_shipped_csv(served, capsys):
    from tests.conftest import REPO

    sample = str(REPO / "examples" / "hourly_demand.csv")
    rc, out, err = await run_cli(capsys, "forecast", "--csv", sample, "--horizon", "4", "--address", served.address)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[1].split("\t")[:3] == ["step", "timestamp", "forecast"]
    assert [line.split("\t")[1] for line in lines[2:]] == [f"2024-03-25 0{h}:00:00" for h in range(4)]
    rc, out, _ = await run_cli(capsys, "forecast", "--csv", sample, "--address", served.address)  # no --horizon
    assert rc == 0 and len(out.splitlines()) == 2 + 6  # the tiny model's horizon
