"""Health while loading and draining, graceful drain, hot reload, and broken versions."""

from __future__ import annotations

import asyncio
import os
import shutil

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from service.v1 import forecast_pb2, generate_pb2, models_pb2
from service.v1 import open_inference_grpc_pb2 as oip_pb2
from service.v1 import open_inference_grpc_pb2_grpc as oip_grpc
from tests.integration.harness import rpc_error, serving, wait_until, watch_health

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TASK_SERVICES = ["seqserve.v1.Translator", "seqserve.v1.Forecaster", "seqserve.v1.Generator"]
HISTORY = [float(x) for x in np.linspace(0.0, 5.0, 30)]


async def _read_rest(call) -> list:
    """The remaining messages of a stream that was read with call.read() before."""
    out = []
    while (message := await call.read()) is not grpc.aio.EOF:
        out.append(message)
    return out


async def _status(served, service: str) -> int:
    return (await served.health_stub.Check(health_pb2.HealthCheckRequest(service=service))).status


async def test_health_follows_loading_and_draining(models_dir):
    async with serving(models_dir, start_engine=False, max_tokens=5000) as s:
        for service in ["", "seqserve.v1.Models", *TASK_SERVICES]:
            assert await _status(s, service) == NOT_SERVING, service
        err = await rpc_error(s.forecaster.Forecast(forecast_pb2.ForecastRequest(history=HISTORY)))
        assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "server is starting")

        watchers = [asyncio.create_task(watch_health(s, service, SERVING)) for service in ["", *TASK_SERVICES]]
        await s.engine.start()
        await asyncio.gather(*watchers)
        reply = await s.forecaster.Forecast(forecast_pb2.ForecastRequest(history=HISTORY))
        assert reply.version == "1"

        # A stream in flight when draining starts may finish within the grace period (long enough, at
        # ~0.3 ms a token, to be still running when the checks below are done).
        in_flight = s.generator.GenerateStream(
            generate_pb2.GenerateRequest(prompt="First", max_tokens=5000, temperature=0.0))
        await in_flight.read()
        overall_down = asyncio.create_task(watch_health(s, "", NOT_SERVING))
        draining = asyncio.create_task(s.drain(grace_s=20.0))
        await overall_down
        for service in TASK_SERVICES:
            assert await _status(s, service) == NOT_SERVING
        err = await rpc_error(s.forecaster.Forecast(forecast_pb2.ForecastRequest(history=HISTORY)))
        assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "server is draining")
        # The Open Inference Protocol says the same: not ready, and inference refused as retryable.
        oip = oip_grpc.GRPCInferenceServiceStub(s.channel)
        assert not (await oip.ServerReady(oip_pb2.ServerReadyRequest())).ready
        assert not (await oip.ModelReady(oip_pb2.ModelReadyRequest(name="tiny-forecast"))).ready
        err = await rpc_error(oip.ModelInfer(oip_pb2.ModelInferRequest(model_name="tiny-forecast")))
        assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "server is draining")
        rest = await _read_rest(in_flight)
        assert rest[-1].finish_reason == "length" and rest[-1].completion_tokens == 5000
        await asyncio.wait_for(draining, timeout=20)

        # Drained: the port no longer answers.
        err = await rpc_error(s.models.ListModels(models_pb2.ListModelsRequest(), timeout=2))
        assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_drain_cancels_what_outlives_the_grace_period(models_dir):
    async with serving(models_dir, max_tokens=100_000) as s:
        endless = s.generator.GenerateStream(
            generate_pb2.GenerateRequest(prompt="First", max_tokens=100_000, temperature=0.0))
        await endless.read()
        await asyncio.wait_for(s.drain(grace_s=0.3), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _read_rest(endless)
        assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def _install(src, dst):
    """Copy a bundle next to its destination, then rename it into place (atomic, as a deploy does)."""
    staging = dst.parent / f".staging-{dst.name}"
    shutil.copytree(src, staging)
    os.rename(staging, dst)


async def _versions(served, name: str) -> dict[str, str]:
    listed = (await served.models.ListModels(models_pb2.ListModelsRequest())).models
    return {m.version: m.state for m in listed if m.name == name}


async def test_hot_reload_serves_a_new_version_and_keeps_it_over_a_broken_one(models_dir, bundle_source):
    async with serving(models_dir, poll_interval_s=0.05) as s:
        request = forecast_pb2.ForecastRequest(history=HISTORY, quantiles=[0.1, 0.9])
        v1 = await s.forecaster.Forecast(request)
        assert v1.version == "1"

        _install(bundle_source.spare / "tiny-forecast" / "2", models_dir / "tiny-forecast" / "2")

        async def v2_served() -> bool:
            return (await s.forecaster.Forecast(request)).version == "2"

        await wait_until(v2_served, what="version 2 to be served")
        v2 = await s.forecaster.Forecast(request)
        assert not np.allclose(v2.forecast, v1.forecast)  # other weights, other answers
        info = (await s.models.GetModel(models_pb2.GetModelRequest(name="tiny-forecast"))).model
        assert (info.version, info.state, info.is_default) == ("2", "READY", True)
        await wait_until(lambda: _gone(s, "1"), what="version 1 to be retired (keep_versions=1)")

        # Version 3 with a corrupt graph.
        staging = models_dir / "tiny-forecast" / ".staging-3"
        shutil.copytree(bundle_source.spare / "tiny-forecast" / "3", staging)
        (staging / "forecast.onnx").write_bytes(b"this is not an onnx graph")
        os.rename(staging, models_dir / "tiny-forecast" / "3")

        async def v3_failed() -> bool:
            return (await _versions(s, "tiny-forecast")).get("3") == "FAILED"

        await wait_until(v3_failed, what="version 3 to fail loading")
        v3 = (await s.models.GetModel(models_pb2.GetModelRequest(name="tiny-forecast", version="3"))).model
        assert v3.error  # why it failed (the engine passes on onnxruntime's message)
        still = await s.forecaster.Forecast(request)
        assert still.version == "2"
        np.testing.assert_allclose(still.forecast, v2.forecast)
        err = await rpc_error(s.forecaster.Forecast(forecast_pb2.ForecastRequest(history=HISTORY, version="3")))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details() == "model 'tiny-forecast' version 3 is FAILED"


async def _gone(served, version: str) -> bool:
    return version not in await _versions(served, "tiny-forecast")
