"""What a hot reload does to work in flight on the version it retires: a stream keeps decoding on
the old version until it ends; one that outlives the grace period is ended with UNAVAILABLE (not
left hanging); requests waiting in the old version's batcher are answered when it closes."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from prometheus_client import CollectorRegistry

from service.front.metrics import Metrics
from service.v1 import forecast_pb2, generate_pb2, models_pb2
from tests.bundles import install
from tests.integration.harness import metric_value, rpc_error, serving, wait_until

# Greedy decoding of the tiny model never samples its end-of-text token: this stream runs until
# the test (or the server) ends it.
ENDLESS = generate_pb2.GenerateRequest(model="tiny-generate", prompt="First", max_tokens=100_000, temperature=0.0)
SHORT = generate_pb2.GenerateRequest(model="tiny-generate", prompt="First", max_tokens=3, seed=1)


async def _versions(served, name: str) -> dict[str, str]:
    listed = (await served.models.ListModels(models_pb2.ListModelsRequest())).models
    return {m.version: m.state for m in listed if m.name == name}


async def _reload(served, models_dir, bundle_source, name: str) -> None:
    """Deploy version 2 of ``name`` and scan now: version 2 loads, version 1 is retired."""
    install(bundle_source.spare / name / "2", models_dir / name / "2")
    await served.engine.refresh()


async def test_a_stream_in_flight_across_a_hot_reload_keeps_decoding_on_the_old_version(models_dir, bundle_source):
    metrics = Metrics(CollectorRegistry(), process_metrics=False)
    async with serving(models_dir, metrics=metrics, grace_s=60.0, max_tokens=100_000) as s:
        stream = s.generator.GenerateStream(ENDLESS)
        first = await stream.read()
        await _reload(s, models_dir, bundle_source, "tiny-generate")
        # Version 1 waits for its stream; everything new goes to version 2.
        assert await _versions(s, "tiny-generate") == {"1": "UNLOADING", "2": "READY"}
        assert (await s.generator.Generate(SHORT)).version == "2"

        # Tokens the old version computes after the reload still reach the client: read past the
        # number of decoding steps it had made when version 2 took over.
        steps_at_reload = metric_value(metrics, "seqserve_batch_size_count", model="tiny-generate", version="1",
                                       graph="lm")
        tokens = first.completion_tokens
        while tokens < steps_at_reload + 500:
            chunk = await stream.read()
            assert chunk is not grpc.aio.EOF and not chunk.finish_reason, chunk
            tokens = chunk.completion_tokens
        assert await _versions(s, "tiny-generate") == {"1": "UNLOADING", "2": "READY"}

        stream.cancel()  # its last request gone, version 1 unloads at once (not after the 60 s grace)
        await wait_until(lambda: _is_only_v2(s), timeout=10, what="version 1 to unload")


async def _is_only_v2(served) -> bool:
    return await _versions(served, "tiny-generate") == {"2": "READY"}


async def test_a_stream_that_outlives_the_grace_period_of_a_reload_ends_unavailable(models_dir, bundle_source):
    async with serving(models_dir, grace_s=0.5, max_tokens=100_000, max_streams=1) as s:
        stream = s.generator.GenerateStream(ENDLESS)
        await stream.read()
        await _reload(s, models_dir, bundle_source, "tiny-generate")

        async def rest() -> grpc.aio.AioRpcError:
            while (chunk := await stream.read()) is not grpc.aio.EOF:
                assert not chunk.finish_reason, chunk
            raise AssertionError("the endless stream ended without an error")

        # 0.5 s after the reload version 1 closes: its step loop fails the stream (retryable
        # UNAVAILABLE) instead of leaving the client waiting for tokens that never come.
        err = await asyncio.wait_for(rpc_error(rest()), timeout=20)
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        await wait_until(lambda: _is_only_v2(s), timeout=10, what="version 1 to unload")
        # Its decoding slot came back (max_streams=1): a new stream is admitted.
        assert (await s.generator.Generate(SHORT)).completion_tokens == 3


async def test_requests_queued_in_a_closing_version_are_answered_at_once(models_dir, bundle_source):
    metrics = Metrics(CollectorRegistry(), process_metrics=False)
    # Each forecast waits up to 30 s for company (batches of 8) and the reload grants 0.2 s.
    async with serving(models_dir, metrics=metrics, grace_s=0.2, max_batch_wait_ms=30_000, max_batch_size=8) as s:
        histories = [np.sin(np.arange(n) / 3.0).tolist() for n in (10, 11, 12)]  # three lengths: three groups
        calls = [asyncio.ensure_future(s.forecaster.Forecast(forecast_pb2.ForecastRequest(model="tiny-forecast", history=h)))
                 for h in histories]
        await wait_until(lambda: metric_value(metrics, "seqserve_queue_depth", model="tiny-forecast", version="1") == 3,
                         what="three forecasts waiting in version 1's batcher")
        await _reload(s, models_dir, bundle_source, "tiny-forecast")
        # Version 1 closes after the grace: what waits in its batcher runs now, on version 1,
        # instead of waiting out the 30 s or hanging.
        replies = await asyncio.wait_for(asyncio.gather(*calls), timeout=15)
        assert [r.version for r in replies] == ["1", "1", "1"]
        assert all(len(r.forecast) == 6 and np.all(np.isfinite(r.forecast)) for r in replies)
        assert metric_value(metrics, "seqserve_batch_size_sum", model="tiny-forecast", version="1") == 3
        await wait_until(lambda: _forecast_v1_gone(s), timeout=10, what="version 1 to unload")


async def _forecast_v1_gone(served) -> bool:
    return "1" not in await _versions(served, "tiny-forecast")
