"""Signals to `seqserve serve`: SIGINT drains like SIGTERM and exits 0; SIGTERM while the models
are still loading stops loading at once and exits 0 after a clean drain."""

from __future__ import annotations

import asyncio
import signal

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.v1 import forecast_pb2, forecast_pb2_grpc, generate_pb2, generate_pb2_grpc
from tests.bundles import make_bundle
from tests.integration.harness import ServerProcess, rpc_error

GRACE_S = 2.0
ENDLESS = generate_pb2.GenerateRequest(model="tiny-generate", prompt="First", max_tokens=100_000, temperature=0.0)
CLEAN_EXIT = ("Traceback", "KeyboardInterrupt", "Task was destroyed", "Event loop is closed")


def _assert_clean(log: str) -> None:
    for sign in CLEAN_EXIT:
        assert sign not in log, f"{sign!r} in the log:\n{log[-4000:]}"


async def _until_not_serving(channel: grpc.aio.Channel) -> None:
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    async for reply in call:
        if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
            call.cancel()
            return
    raise AssertionError("the health watch ended while SERVING")


async def test_sigint_drains_like_sigterm_and_exits_0(module_models):
    with ServerProcess(module_models, "--grace-s", str(GRACE_S), "--max-tokens", "100000") as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stream = generate_pb2_grpc.GeneratorStub(channel).GenerateStream(ENDLESS)
            first = await stream.read()
            server.send_signal(signal.SIGINT)

            # Draining: health turns NOT_SERVING, new calls are refused (retryable), and the stream
            # in flight goes on decoding through the grace period ...
            await _until_not_serving(channel)
            request = forecast_pb2.ForecastRequest(history=np.linspace(0, 1, 30).tolist())
            refused = await rpc_error(forecast_pb2_grpc.ForecasterStub(channel).Forecast(request))
            assert (refused.code(), refused.details()) == (grpc.StatusCode.UNAVAILABLE, "server is draining")
            later = await stream.read()
            assert later.completion_tokens > first.completion_tokens and not later.finish_reason
            # ... until the grace period is over: then the server ends it rather than hang.
            err = await rpc_error(_read_to_the_end(stream))
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), err

        code = await asyncio.to_thread(server.wait, 30)
    assert code == 0, server.log[-4000:]
    assert "draining" in server.log and "drained" in server.log
    _assert_clean(server.log)


async def _read_to_the_end(stream) -> None:
    while await stream.read() is not grpc.aio.EOF:
        pass


BUNDLES = 40
# A forecaster that takes ~50 ms to load and warm up (a 2,048-step warm-up window): loading 40 of
# them, one after the other, takes seconds.
SLOW_TO_LOAD = {"window": 2048, "hidden_size": 256}


def test_sigterm_while_models_load_stops_loading_and_exits_cleanly(tmp_path):
    models = tmp_path / "models"
    for i in range(BUNDLES):
        make_bundle(models, "forecast", name=f"forecast-{i:02d}", **SLOW_TO_LOAD)
    loaded = r"model forecast-\d+ version 1 .*ready in"
    with ServerProcess(models, "--grace-s", "5", ready=None) as server:
        server.wait_for_log(loaded)  # loading is under way
        server.sigterm()
        code = server.wait(timeout=60)
    assert code == 0, server.log[-4000:]
    assert "drained" in server.log
    _assert_clean(server.log)
    # Loading stopped at the signal (the bundle being read when it came may still finish), not
    # after every bundle, and no half-loaded version was left running.
    assert server.count(loaded) < BUNDLES // 2, server.log[-4000:]
    assert server.count(r"engine started") == 0
