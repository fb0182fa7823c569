"""The benchmark baselines: the echo and eager-PyTorch servers driven by ``seqserve bench``, and the
in-process onnxruntime floor, over tiny random-weight bundles."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from bench import inprocess
from service.loadgen.config import BenchConfig
from service.loadgen.results import LevelResult
from service.loadgen.runners import benchmark
from service.v1 import forecast_pb2, forecast_pb2_grpc, generate_pb2, generate_pb2_grpc, models_pb2, models_pb2_grpc
from tests.integration.harness import ServerProcess

REPO = Path(__file__).resolve().parents[2]
ENDPOINTS = ["forecast", "generate", "generate_stream"]
MAX_TOKENS = 8
STOP_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """tiny-forecast/1 and tiny-generate/1 (tests/bundles.py)."""
    torch = pytest.importorskip("torch")
    from tests.bundles import make_bundle

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("baseline-models")
    for task in ("forecast", "generate"):
        make_bundle(root, task)
    return root


@dataclass
class Served:
    """A baseline server subprocess: its address, its log, and its exit status once stopped."""

    address: str
    lines: list[str] = field(default_factory=list)
    returncode: int | None = None


@contextlib.contextmanager
def serving(module: str, *args: str) -> Iterator[Served]:
    """``python -m module --port 0 *args`` (the suite's one launcher) until the block ends; then
    SIGTERM, and its exit status and log."""
    with ServerProcess(None, *args, command=("-m", module), server_flags=(), ready=None, cwd=REPO) as server:
        served = Served(address=server.address)
        yield served
        server.sigterm()
        served.returncode = server.wait(STOP_TIMEOUT_S)
        served.lines = list(server.lines)


async def run_bench(address: str) -> list[LevelResult]:
    """Every ENDPOINTS at concurrency 1 and 4, one second each."""
    config = BenchConfig(address=address, endpoints=ENDPOINTS, concurrency=[1, 4], duration_s=1.0,
                         warmup_s=0.2, max_tokens=MAX_TOKENS, timeout_s=30.0)
    return await benchmark(config)


def assert_clean(results: list[LevelResult]) -> None:
    """Every level answered, without errors, by the tiny models, generating MAX_TOKENS per request."""
    assert [(r.endpoint, r.load.label) for r in results] == [(e, c) for e in ENDPOINTS for c in ("c=1", "c=4")]
    for r in results:
        assert r.ok > 0 and r.errors == {} and r.requests == r.ok, r
        if r.endpoint != "generate_stream":  # chunks do not name the model
            assert r.model == ("tiny-forecast" if r.endpoint == "forecast" else "tiny-generate"), r
        assert 0 < r.latency_ms["p50"] <= r.latency_ms["p99"], r
        if r.endpoint != "forecast":
            assert r.tokens_per_s * r.elapsed_s == pytest.approx(r.ok * MAX_TOKENS), r
        if r.endpoint == "generate_stream":
            assert r.ttft_ms["p50"] > 0 and r.itl_ms["p50"] > 0, r


async def test_echo_server_under_bench(models):
    with serving("bench.echo_server", "--models", str(models)) as served:
        results = await run_bench(served.address)
        with grpc.insecure_channel(served.address) as channel:
            listed = models_pb2_grpc.ModelsStub(channel).ListModels(models_pb2.ListModelsRequest())
            reply = forecast_pb2_grpc.ForecasterStub(channel).Forecast(
                forecast_pb2.ForecastRequest(history=[1.0] * 10, horizon=4))
    assert_clean(results)
    assert [(m.name, m.task, m.is_default) for m in listed.models] == [
        ("tiny-forecast", "forecast", True), ("tiny-generate", "generate", True)]
    spec = listed.models[0].forecast
    assert (spec.window, spec.min_history, spec.horizon, list(spec.quantiles)) == (24, 8, 6, [0.1, 0.5, 0.9])
    assert list(reply.forecast) == [0.0] * 4 and [q.quantile for q in reply.quantiles] == [0.1, 0.5, 0.9]
    assert served.returncode == 0, "".join(served.lines)


def test_echo_server_without_models_serves_made_up_ones():
    with serving("bench.echo_server") as served, grpc.insecure_channel(served.address) as channel:
        listed = models_pb2_grpc.ModelsStub(channel).ListModels(models_pb2.ListModelsRequest(task="forecast"))
        chunks = list(generate_pb2_grpc.GeneratorStub(channel).GenerateStream(
            generate_pb2.GenerateRequest(prompt="abc", max_tokens=3)))
        with pytest.raises(grpc.RpcError) as err:
            forecast_pb2_grpc.ForecasterStub(channel).Forecast(forecast_pb2.ForecastRequest(model="nope"))
    assert [m.name for m in listed.models] == ["echo-forecast"] and listed.models[0].forecast.window > 0
    assert [(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in chunks] == [
        ("a", "", 3, 1), ("a", "", 3, 2), ("a", "length", 3, 3)]
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_torch_server_under_bench(models):
    with serving("bench.torch_server", "--models", str(models), "--workers", "4") as served:
        results = await run_bench(served.address)
        with grpc.insecure_channel(served.address) as channel:
            forecast = forecast_pb2_grpc.ForecasterStub(channel).Forecast(
                forecast_pb2.ForecastRequest(history=[float(i % 5) for i in range(40)], horizon=3))
            generator = generate_pb2_grpc.GeneratorStub(channel)
            generated = generator.Generate(generate_pb2.GenerateRequest(prompt="First", max_tokens=MAX_TOKENS, seed=1))
            chunks = list(generator.GenerateStream(
                generate_pb2.GenerateRequest(prompt="First", max_tokens=MAX_TOKENS, seed=1)))
            with pytest.raises(grpc.RpcError) as err:
                forecast_pb2_grpc.ForecasterStub(channel).Forecast(forecast_pb2.ForecastRequest(history=[1.0] * 3))
    assert_clean(results)
    assert (forecast.model, forecast.version) == ("tiny-forecast", "1")
    assert len(forecast.forecast) == 3 and all(math.isfinite(v) for v in forecast.forecast)
    assert [(q.quantile, len(q.values)) for q in forecast.quantiles] == [(0.1, 3), (0.5, 3), (0.9, 3)]
    assert list(forecast.quantiles[1].values) == list(forecast.forecast)
    assert (generated.model, generated.finish_reason) == ("tiny-generate", "length")
    assert generated.completion_tokens == MAX_TOKENS and generated.prompt_tokens == len("First")
    assert [c.completion_tokens for c in chunks] == list(range(1, MAX_TOKENS + 1))
    assert "".join(c.text for c in chunks) == generated.text  # same seed, same text
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # shorter than min_history 8
    assert served.returncode == 0, "".join(served.lines)


def test_inprocess_floor(models):
    forecast = inprocess.forecast_latency(models / "tiny-forecast" / "1", n=20, warmup=2)
    steps = inprocess.decode_step_latency(models / "tiny-generate" / "1", n=20, batch=4, warmup=2)
    assert sorted(steps) == [1, 4]
    for latency in (forecast, *steps.values()):
        assert latency.calls == 20
        assert math.isfinite(latency.p50_ms) and 0 < latency.p50_ms <= latency.p99_ms
    with pytest.raises(ValueError, match="below the model's min_history"):
        inprocess.forecast_latency(models / "tiny-forecast" / "1", n=1, history_len=3)


def test_inprocess_batched_calls_and_translation_steps(models, tmp_path):
    pytest.importorskip("torch")
    from tests.bundles import make_bundle

    batched = inprocess.forecast_latency(models / "tiny-forecast" / "1", n=10, warmup=1, batch=8)
    assert batched.calls == 10 and batched.p50_ms > 0
    with pytest.raises(ValueError, match="batch must be at least 1"):
        inprocess.forecast_latency(models / "tiny-forecast" / "1", n=1, batch=0)
    make_bundle(tmp_path, "translate")
    steps = inprocess.translate_step_latency(tmp_path / "tiny-translate" / "1", rows=(4, 16), n=10, warmup=1)
    assert sorted(steps) == [4, 16] and all(v.calls == 10 and v.p50_ms > 0 for v in steps.values())
    with pytest.raises(ValueError, match="not a translate one"):
        inprocess.translate_step_latency(models / "tiny-forecast" / "1", n=1)
    assert inprocess.main(["--models", str(tmp_path), "-n", "3", "--warmup", "1", "--batch", "2"]) == 0


def test_inprocess_command_prints_every_bundle(models, capsys):
    assert inprocess.main(["--models", str(models), "-n", "5", "--warmup", "1", "--batch", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    bundles = report["bundles"]
    assert sorted(bundles) == ["tiny-forecast/1", "tiny-generate/1"]
    assert bundles["tiny-forecast/1"]["forecast"]["p50_ms"] > 0
    assert sorted(bundles["tiny-generate/1"]["decode_step"]) == ["batch_1", "batch_2"]


def test_gil_command_times_a_step_beside_a_busy_thread(models, capsys):
    from bench import gil

    assert gil.main(["--models", str(models), "--model", "tiny-generate", "--steps", "30"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("one-row step on a worker thread, the other thread idle: ")
    assert [line.split("running Python ")[1].split(" of")[0] for line in lines[1:]] == ["10%", "30%", "60%"]
    assert all(float(line.rsplit("(", 1)[1].rstrip("x)")) > 0 for line in lines[1:])
