"""`seqserve bench` against a real server: every endpoint, closed and open loop, reports and files."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
from dataclasses import dataclass

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from service.front.metrics import Metrics, start_metrics_server, stop_metrics_server
from service.loadgen import bench
from service.loadgen.config import ENDPOINTS, BenchConfig
from service.loadgen.pools import ForecastShape, forecast_requests
from service.loadgen.report import table_row
from service.loadgen.results import CSV_COLUMNS, LevelResult
from service.loadgen.runners import benchmark
from service.loadgen.senders import token_timings
from service.loadgen.server_metrics import server_stats
from tests.integration.harness import Served, serving

on_module_loop = pytest.mark.asyncio(loop_scope="module")  # the loop the server fixture runs on

# Short levels: each ends after 0.4 s or 12 requests, whichever comes first.
QUICK = {"concurrency": [1, 2], "rates": [40.0], "duration_s": 0.4, "max_requests": 12, "warmup_s": 0.05,
         "max_tokens": 6, "timeout_s": 10.0}


@dataclass
class Target:
    served: Served
    metrics_address: str

    @property
    def address(self) -> str:
        return self.served.address


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def target(module_models):
    metrics = Metrics(CollectorRegistry(), process_metrics=False)
    async with serving(module_models, metrics=metrics) as served:
        http, port = start_metrics_server(metrics, "127.0.0.1", 0)
        try:
            yield Target(served, f"127.0.0.1:{port}")
        finally:
            stop_metrics_server(http)


def _bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="seqserve")
    sub = parser.add_subparsers(dest="command", required=True)
    bench.add_parser(sub)
    return parser.parse_args(["bench", *argv])


def _assert_ordered(result: LevelResult) -> None:
    lat = result.latency_ms
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"], lat
    assert lat["mean"] > 0


@on_module_loop
async def test_every_endpoint_in_closed_and_open_loop(target):
    config = BenchConfig(address=target.address, metrics_address=target.metrics_address, **QUICK)
    seen: list[LevelResult] = []
    results = await benchmark(config, on_result=seen.append)

    assert seen == results
    assert [(r.endpoint, r.load.label) for r in results] == [
        (e, label) for e in ENDPOINTS for label in ("c=1", "c=2", "r=40/s")]
    for r in results:
        assert r.ok > 0 and r.errors == {} and r.requests == r.ok and r.dropped == 0, r
        assert r.ok <= QUICK["max_requests"]
        assert r.throughput_rps > 0 and r.elapsed_s > 0
        _assert_ordered(r)
        assert r.server is not None
        if r.endpoint in ("forecast", "translate"):  # batched graphs: queue wait and compute per request
            assert r.server.queue_ms is not None and r.server.queue_ms >= 0
            assert r.server.compute_ms is not None and r.server.compute_ms > 0
            assert r.tokens_per_s is None
            assert r.model.startswith("tiny-") and r.version == "1"
        elif r.endpoint == "score":  # continuations through the LM's step loop: no tokens generated
            assert r.tokens_per_s is None and (r.model, r.version) == ("tiny-generate", "1")
        elif r.endpoint == "infer":  # the Open Inference Protocol, forecast rows through the same batcher
            assert r.tokens_per_s is None and (r.model, r.version) == ("tiny-forecast", "1")
            assert r.server.queue_ms is not None and r.server.compute_ms > 0
        else:
            assert r.tokens_per_s > 0
            assert r.server.ttft_ms is not None and r.server.ttft_ms > 0
        if r.endpoint == "generate_stream":
            assert 0 < r.ttft_ms["p50"] <= r.ttft_ms["p99"] <= r.latency_ms["p99"]
            assert 0 < r.itl_ms["p50"] <= r.itl_ms["p99"]
        else:
            assert r.ttft_ms == {"p50": None, "p99": None} and r.itl_ms == {"p50": None, "p99": None}


@on_module_loop
async def test_request_errors_are_counted_by_code(target):
    config = BenchConfig(address=target.address, metrics_address=target.metrics_address,
                         model="no-such-model", **{**QUICK, "concurrency": [2], "rates": []})
    results = await benchmark(config)

    assert [r.endpoint for r in results] == list(ENDPOINTS)
    for r in results:
        assert r.ok == 0 and r.requests > 0 and r.errors == {"NOT_FOUND": r.requests}, r
        assert r.latency_ms["p50"] is None and r.throughput_rps == 0
        assert r.row()["error_codes"] == f"NOT_FOUND:{r.requests}"
        assert table_row(r).endswith(f"[NOT_FOUND:{r.requests}]")


@on_module_loop
async def test_forecasts_name_a_frequency_a_seasonal_model_takes_and_another_refuses(target):
    def config(model: str, frequency: str) -> BenchConfig:
        return BenchConfig(address=target.address, metrics_address=target.metrics_address, model=model,
                           frequency=frequency, **{**QUICK, "endpoints": ["forecast", "infer"], "concurrency": [2],
                                                   "rates": []})

    for r in await benchmark(config("tiny-global", "h")):
        assert r.ok > 0 and r.errors == {} and r.model == "tiny-global", r
    for r in await benchmark(config("tiny-forecast", "D")):  # trained on 1h only
        assert r.ok == 0 and r.errors == {"INVALID_ARGUMENT": r.requests}, r
    assert bench.config_from_args(_bench_args("--frequency", "M")).frequency == "M"


@on_module_loop
async def test_run_entry_prints_json_and_writes_csv_and_png(target, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    texts = tmp_path / "texts.txt"
    texts.write_text("Ein Mann fährt Fahrrad.\n\nDer Hund läuft schnell.\n", encoding="utf-8")
    table, plot = tmp_path / "bench.csv", tmp_path / "bench.png"
    args = _bench_args(
        "--address", target.address, "--metrics-address", target.metrics_address,
        "--endpoint", "forecast,translate", "--endpoint", "generate_stream", "--texts", str(texts),
        "--concurrency", "1,2", "--rate", "40", "--duration", "0.4", "--requests", "10", "--warmup", "0",
        "--max-tokens", "4", "--channels", "2", "--json", "--csv", str(table), "--plot", str(plot),
    )
    assert args.func is bench.run

    assert await asyncio.to_thread(args.func, args) == 0

    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["endpoint"], x["mode"], x["level"]) for x in lines] == [
        (e, m, lvl) for e in ("forecast", "translate", "generate_stream")
        for m, lvl in (("concurrency", 1), ("concurrency", 2), ("rate", 40.0))]
    assert all(x["errors"] == 0 and x["ok"] > 0 for x in lines)
    assert "total" in err
    reader = csv.DictReader(io.StringIO(table.read_text(encoding="utf-8"), newline=""))
    rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert [(r["endpoint"], r["mode"]) for r in rows] == [(x["endpoint"], x["mode"]) for x in lines]
    for r in rows:
        assert float(r["latency_p50_ms"]) <= float(r["latency_p99_ms"])
        assert r["server_compute_ms"] if r["endpoint"] != "generate_stream" else r["ttft_p50_ms"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@on_module_loop
async def test_run_prints_a_table_by_default(target, capsys):
    args = _bench_args("--address", target.address, "--endpoint", "generate", "--concurrency", "1",
                       "--duration", "0", "--requests", "3", "--warmup", "0", "--max-tokens", "3")
    assert await asyncio.to_thread(bench.run, args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["ENDPOINT", "LOAD", "OK", "ERR"]
    assert lines[1].split()[:4] == ["generate", "c=1", "3", "0"]
    assert lines[2].startswith("total ")


def test_unbounded_or_bad_levels_are_refused(capsys):
    assert bench.run(_bench_args("--duration", "0")) == 2
    assert "--duration" in capsys.readouterr().err
    assert bench.run(_bench_args("--endpoint", "nope", "--duration", "1")) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _bench_args("--concurrency", "1,x")


def test_missing_matplotlib_is_said_before_running(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert bench.run(_bench_args("--address", "127.0.0.1:1", "--plot", "x.png")) == 2
    assert "matplotlib" in capsys.readouterr().err


def test_token_timings_split_chunk_gaps_per_token():
    # Chunks at 10 ms (1 token), 14 ms (+2 tokens), 14.5 ms (no new token), 20 ms (+1 token).
    ttft, itl = token_timings(0.0, [(0.010, 1), (0.014, 3), (0.0145, 3), (0.020, 4)])
    assert ttft == pytest.approx(0.010)
    assert itl == pytest.approx([0.002, 0.002, 0.006])


def test_server_stats_are_histogram_deltas():
    def exposition(queue_sum: float, queue_count: int, other_sum: float) -> str:
        name = "seqserve_queue_duration_seconds"
        return (f"# TYPE {name} histogram\n"
                f'{name}_bucket{{model="a",version="1",graph="g",le="+Inf"}} {queue_count}\n'
                f'{name}_sum{{model="a",version="1",graph="g"}} {queue_sum}\n'
                f'{name}_count{{model="a",version="1",graph="g"}} {queue_count}\n'
                f'{name}_bucket{{model="b",version="1",graph="g",le="+Inf"}} 1\n'
                f'{name}_sum{{model="b",version="1",graph="g"}} {other_sum}\n'
                f'{name}_count{{model="b",version="1",graph="g"}} 1\n')

    stats = server_stats(exposition(1.0, 10, 0.0), exposition(1.5, 20, 0.0))
    assert stats.queue_ms == pytest.approx(50.0) and stats.compute_ms is None and stats.ttft_ms is None
    both = server_stats(exposition(1.0, 10, 0.0), exposition(1.5, 20, 5.0))  # b's sum moved, not its count
    assert both.queue_ms == pytest.approx(550.0)
    only_a = server_stats(exposition(1.0, 10, 0.0), exposition(1.5, 20, 5.0), model="a")
    assert only_a.queue_ms == pytest.approx(50.0)


def test_history_len_fixes_or_bounds_forecast_histories():
    import numpy as np

    shape = ForecastShape(window=48, min_history=8, channels=1)
    rng = np.random.default_rng(0)
    default = {len(r.history) for r in forecast_requests(BenchConfig(), shape, rng)}
    assert min(default) >= 8 and max(default) <= 48 and len(default) > 10
    fixed = {len(r.history) for r in forecast_requests(BenchConfig(history_len=[100]), shape, rng)}
    assert fixed == {100}  # longer than the window: the server cuts it, and every call shares batches
    ranged = {len(r.history) for r in forecast_requests(BenchConfig(history_len=[30, 40]), shape, rng)}
    assert ranged <= set(range(30, 41)) and len(ranged) > 3
    with pytest.raises(ValueError, match="--history-len"):
        bench.config_from_args(_bench_args("--history-len", "24,12"))


# ---- the recognize endpoints, against a server with the tiny streaming speech bundle ------------

SPEECH_QUICK = {"endpoints": ["recognize", "recognize_stream"], "rates": [], "warmup_s": 0.0, "timeout_s": 10.0,
                "digits": [2]}  # two-digit strings: ~0.5-1.5 s, so a stream level lasts about that long


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech_target(tmp_path_factory):
    pytest.importorskip("torch")
    from tests.bundles import make_bundle

    models = tmp_path_factory.mktemp("speech") / "models"
    make_bundle(models, "recognize")  # tiny-recognize/1: random weights, unidirectional (streams), 20 ms frames
    metrics = Metrics(CollectorRegistry(), process_metrics=False)
    async with serving(models, metrics=metrics) as served:
        http, port = start_metrics_server(metrics, "127.0.0.1", 0)
        try:
            yield Target(served, f"127.0.0.1:{port}")
        finally:
            stop_metrics_server(http)


def _fsdd_expected() -> str:
    from service.loadgen.speech import FSDD, SYNTHETIC, fsdd_folder

    return FSDD if fsdd_folder() is not None else SYNTHETIC


@on_module_loop
async def test_recognize_endpoints_report_audio_rate_and_chunk_latencies(speech_target):
    from service.loadgen.results import stream_capacity

    config = BenchConfig(address=speech_target.address, metrics_address=speech_target.metrics_address,
                         concurrency=[2, 4], duration_s=0.0, max_requests=4, **SPEECH_QUICK)
    results = await benchmark(config)

    assert [(r.endpoint, r.load.label) for r in results] == [
        (e, c) for e in ("recognize", "recognize_stream") for c in ("c=2", "c=4")]
    for r in results:
        assert r.ok == r.requests == 4 and r.errors == {}, r
        assert (r.model, r.version) == ("tiny-recognize", "1")
        assert r.audio_source == _fsdd_expected()
        assert r.audio_s > 4 * 0.3  # two digits of at least 0.144 s each, and the gap between them
        assert r.audio_x_realtime == pytest.approx(r.audio_s / r.elapsed_s)
        _assert_ordered(r)
        row = r.row()
        assert row["audio_s"] > 0 and row["audio_x_realtime"] > 0 and set(CSV_COLUMNS) == set(row)
    offline = [r for r in results if r.endpoint == "recognize"]
    for r in offline:  # offline audio goes through the dynamic batcher: queue and compute per request
        assert r.chunks is None and r.chunk_ms == {"p50": None, "p99": None} and r.final_ms["p50"] is None
        assert r.server is not None and r.server.compute_ms is not None and r.server.compute_ms > 0
        assert r.audio_x_realtime > 1  # a 16-unit LSTM is far faster than real time
    for r in (r for r in results if r.endpoint == "recognize_stream"):
        # Real-time pace: no stream ends before its audio has been sent, at most one stream's audio per second each.
        assert r.latency_ms["p50"] > 300 and r.audio_x_realtime <= r.load.level * 1.05
        assert r.chunks > 0 and 0 < r.chunk_ms["p50"] <= r.chunk_ms["p99"]
        assert 0 < r.final_ms["p50"] <= r.final_ms["p99"] and r.send_lag_p99_ms >= 0
        assert r.server.interim_ms > 0 and r.server.final_ms > 0  # the server's own view of the same latencies
        # Every 100 ms chunk that completes a 20 ms frame is timed (its interim) or left to the final
        # result: 4 streams of S s of audio have between S/0.1 - 4 and S/0.1 + 4 such chunks.
        assert abs(r.chunks + r.chunks_at_final - r.audio_s / 0.1) < r.ok
        assert r.chunks > r.chunks_at_final
        assert table_row(r).split()[:4] == ["recognize_stream", r.load.label, "4", "0"]
    summary = stream_capacity(results)
    assert summary.startswith("recognize_stream: p99 chunk-to-interim <= 100 ms held up to ")
    assert "(2: " in summary and "; 4: " in summary


@on_module_loop
async def test_recognize_run_prints_the_speech_table_and_csv(speech_target, tmp_path, capsys):
    table = tmp_path / "speech.csv"
    args = _bench_args("--address", speech_target.address, "--endpoint", "recognize_stream", "--endpoint", "recognize",
                       "--concurrency", "2", "--duration", "0", "--requests", "2", "--warmup", "0",
                       "--chunk-ms", "50", "--digits", "2", "--csv", str(table))
    assert (args.chunk_ms, args.digits) == (50.0, [2])

    assert await asyncio.to_thread(bench.run, args) == 0

    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:7] == ["ENDPOINT", "LOAD", "OK", "ERR", "REQ/S", "AUDIO_S", "xRT"]
    assert {"CHK50", "CHK99", "FIN50", "FIN99"} <= set(header)
    assert [line.split()[:4] for line in lines[1:3]] == [["recognize_stream", "c=2", "2", "0"],
                                                         ["recognize", "c=2", "2", "0"]]
    assert lines[3].startswith("recognize_stream: p99 chunk-to-interim <= 100 ms held up to ")
    assert lines[4].startswith("total ")
    rows = list(csv.DictReader(io.StringIO(table.read_text(encoding="utf-8"), newline="")))
    stream, offline = rows
    assert float(stream["chunk_p50_ms"]) > 0 and int(stream["chunks"]) > 0 and float(stream["final_p99_ms"]) > 0
    assert offline["chunk_p50_ms"] == "" and float(offline["audio_x_realtime"]) > 0
    assert stream["audio_source"] == offline["audio_source"] == _fsdd_expected()


@on_module_loop
async def test_recognize_errors_are_counted_by_code(speech_target):
    config = BenchConfig(address=speech_target.address, model="no-such-model", concurrency=[2], duration_s=0.0,
                         max_requests=3, **SPEECH_QUICK)
    results = await benchmark(config)

    assert [r.endpoint for r in results] == ["recognize", "recognize_stream"]
    for r in results:
        assert r.ok == 0 and r.errors == {"NOT_FOUND": 3} and r.audio_s == 0 and r.latency_ms["p50"] is None, r
        assert table_row(r).endswith("[NOT_FOUND:3]")
    assert results[1].chunks == 0 and results[1].chunk_ms["p99"] is None and not results[1].holds()


def test_speech_workload_reads_fsdd_test_takes_or_says_synthetic(tmp_path, caplog):
    import numpy as np

    from service.loadgen.speech import FSDD, SYNTHETIC, fsdd_folder, speech_workload

    synthetic, source = speech_workload(8, 8000, np.random.default_rng(0), data_dir=str(tmp_path))
    assert source == SYNTHETIC and "synthetic" in caplog.text
    assert all(2 <= len(u.digits) <= 10 and u.rate == 8000 and u.seconds > 0.3 for u in synthetic)
    wide, _ = speech_workload(4, 16000, np.random.default_rng(0), data_dir=str(tmp_path), digits=[3, 4])
    again, _ = speech_workload(4, 8000, np.random.default_rng(0), data_dir=str(tmp_path), digits=[3, 4])
    assert [len(u.digits) for u in wide] == [len(u.digits) for u in again] and {3, 4} >= {len(u.digits) for u in wide}
    assert [u.samples for u in wide] == [2 * u.samples for u in again]  # resampled to the model's rate
    if fsdd_folder() is None:
        pytest.skip("no fsdd/recordings under $SEQSERVE_DATA_DIR")
    spoken, source = speech_workload(8, 8000, np.random.default_rng(0), digits=[5])
    repeat, _ = speech_workload(8, 8000, np.random.default_rng(0), digits=[5])
    assert source == FSDD and [u.pcm for u in spoken] == [u.pcm for u in repeat]  # seeded
    assert all(len(u.digits) == 5 and 5 * 0.144 + 4 * 0.05 <= u.seconds <= 5 * 2.28 + 4 * 0.4 + 0.6 for u in spoken)
