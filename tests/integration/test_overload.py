"""Overload, deadlines and cancellation under load, against a `seqserve serve` subprocess.

- Overload: Poisson arrivals at four times the measured capacity of a forecaster with an expensive graph;
  the excess is refused with RESOURCE_EXHAUSTED and counted, and memory does not blow up; with
  ``-m slow`` (a quiet machine), refusals are also faster than admitted calls, which keep the
  latency they had at capacity.
- Deadlines: calls whose deadline passes while queued behind the load are not computed (the
  batch-size histogram counts only rows of calls that were answered) and are counted as expired.
- Cancellation: cancelled streams (generation and recognition) free their slots while unary load
  goes on; streams past the caps (max_streams, max_speech_streams) are RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from service.v1 import generate_pb2, generate_pb2_grpc, recognize_pb2, recognize_pb2_grpc
from tests.integration.harness import ServerProcess, wait_until
from tests.integration.load import (
    Mix,
    Tally,
    closed_loop,
    metric,
    open_loop,
    pct,
    report,
    sample_rss,
    timed,
)

FORECASTER = "heavy-forecast"
QUEUE = 16


@pytest.fixture(scope="module")
def heavy_models(tmp_path_factory) -> Path:
    """A forecaster whose graph costs tens of milliseconds per call, so that capacity is set by the
    model (as in production) and not by how fast Python can parse requests on this 2-core box."""
    pytest.importorskip("torch")
    from tests.bundles import make_bundle

    out = tmp_path_factory.mktemp("heavy") / "models"
    make_bundle(out, "forecast", name=FORECASTER, hidden_size=256, num_layers=2, window=512, min_history=32, horizon=48)
    return out


def _forecast_mix(channel, seed: int) -> Mix:
    return Mix(channel, seed=seed, weights={"Forecast": 1}, forecast=FORECASTER)


@dataclass
class Overload:
    capacity: float  # calls per second served at capacity
    base: np.ndarray  # latencies (ms) at capacity
    overload: Tally  # the calls at 4x capacity
    exposition: str  # the server's /metrics after them
    peak_growth_mib: float  # resident memory at its peak under overload, above that at capacity

    @property
    def admitted(self) -> np.ndarray:
        return self.overload.latencies_ms("OK")

    @property
    def refused(self) -> np.ndarray:
        return self.overload.latencies_ms("RESOURCE_EXHAUSTED")


async def _overload(heavy_models) -> Overload:
    """Measure capacity with as many closed-loop callers as the queue holds, then offer 4x that
    in open loop (Poisson arrivals) for 4 s."""
    with ServerProcess(heavy_models, "--max-queue", str(QUEUE), "--max-batch-size", "8", "--worker-threads", "1") as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            mix = _forecast_mix(channel, seed=1)
            await mix.prepare()
            # At capacity: as many callers as the queue holds, nothing refused.
            await closed_loop(mix, Tally(), QUEUE, 1.0)  # warm-up
            at_capacity = Tally()
            await closed_loop(mix, at_capacity, QUEUE, 3.0)
            assert set(at_capacity.codes()) == {"OK"}, at_capacity.summary()
            capacity = len(at_capacity.calls) / 3.0
            rss_before = server.rss_bytes()

            # Far past capacity: open-loop arrivals at 4x what it served.
            overload, samples, stop = Tally(), [], asyncio.Event()
            sampler = asyncio.create_task(sample_rss(server, samples, stop))
            await open_loop(mix, overload, 4 * capacity, 4.0, "Forecast")
            stop.set()
            await sampler
            exposition = server.scrape()
    peak_growth = (max(rss for _, rss in samples) - rss_before) / 2**20
    result = Overload(capacity, at_capacity.latencies_ms(), overload, exposition, peak_growth)
    base, admitted, refused = result.base, result.admitted, result.refused
    report("overload", capacity_rps=round(capacity, 1), offered_rps=round(4 * capacity, 1),
           codes=dict(overload.codes()), at_capacity_p50_ms=round(pct(base, 50), 1),
           at_capacity_p99_ms=round(pct(base, 99), 1), admitted_p50_ms=round(pct(admitted, 50), 1),
           admitted_p99_ms=round(pct(admitted, 99), 1), refused_p50_ms=round(pct(refused, 50), 2),
           refused_p99_ms=round(pct(refused, 99), 2), rss_peak_growth_mib=round(peak_growth, 1))
    return result


async def test_overload_is_refused_with_resource_exhausted_and_counted(heavy_models):
    run = await _overload(heavy_models)
    codes = run.overload.codes()
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, run.overload.summary()
    assert codes["RESOURCE_EXHAUSTED"] >= 0.3 * len(run.overload.calls)  # most of the excess was refused
    assert metric(run.exposition, "seqserve_requests_rejected_total", reason="queue_full") == codes["RESOURCE_EXHAUSTED"]
    details = {c.details for c in run.overload.calls if c.code == "RESOURCE_EXHAUSTED"}
    assert all("queue" in d and str(QUEUE) in d for d in details), details
    # The queue is bounded, so memory is too (a generous bound: the allocator keeps what it freed).
    assert run.peak_growth_mib < 64, f"resident memory grew {run.peak_growth_mib:.1f} MiB under overload"


@pytest.mark.slow  # latency ratios: meaningful on a quiet machine, not on a loaded 2-core one
async def test_under_overload_refusals_are_fast_and_admitted_calls_keep_their_latency(heavy_models):
    run = await _overload(heavy_models)
    base, admitted, refused = run.base, run.admitted, run.refused
    # Refusals are quick: faster than the typical admitted call.
    assert pct(refused, 50) < pct(admitted, 50)
    # Admitted calls wait in a bounded queue: their latency stays that of the load at capacity
    # (generous bounds: this shares the cores with the load generator).
    assert pct(admitted, 50) <= 3 * pct(base, 50) + 20, (pct(admitted, 50), pct(base, 50))
    assert pct(admitted, 99) <= 4 * pct(base, 99) + 50, (pct(admitted, 99), pct(base, 99))


async def test_calls_that_expire_in_the_queue_are_not_computed_and_are_counted(heavy_models):
    with ServerProcess(heavy_models, "--max-queue", "256", "--max-batch-size", "8", "--worker-threads", "1") as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            background, hurried = _forecast_mix(channel, seed=2), _forecast_mix(channel, seed=3)
            await background.prepare()
            hurried.spec = background.spec
            await closed_loop(background, Tally(), 8, 1.0)  # warm-up
            before = server.scrape()
            load, short = Tally(), Tally()
            stop = asyncio.Event()

            async def hurry() -> None:
                # Deadlines far below the queueing delay behind 48 callers (~0.7 s).
                while not stop.is_set():
                    short.calls.append(await timed("Forecast", hurried.request("Forecast"), timeout_s=0.05))

            hurrying = [asyncio.create_task(hurry()) for _ in range(8)]
            await closed_loop(background, load, 48, 4.0)
            stop.set()
            await asyncio.gather(*hurrying)
            # The server counts a call once its handler has ended, which may be after the client
            # gave up on it: wait until none is left in flight.
            await wait_until(lambda: metric(server.scrape(), "seqserve_requests_in_flight") == 0,
                             what="the server to finish every call")
            after = server.scrape()

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    expired = short.codes()["DEADLINE_EXCEEDED"]
    answered = load.codes()["OK"] + short.codes()["OK"]
    rows = delta("seqserve_batch_size_sum", graph="forecast")
    counted = delta("seqserve_requests_expired_total", method="Forecast")
    report("deadlines", background_calls=len(load.calls), short_deadline_calls=len(short.calls),
           expired=expired, answered=answered, rows_computed=rows, counted_expired=counted)
    assert set(load.codes()) == {"OK"}, load.summary()
    assert set(short.codes()) <= {"OK", "DEADLINE_EXCEEDED"}, short.summary()
    assert expired >= 0.5 * len(short.calls) > 0
    # Rows computed = calls answered, give or take calls whose deadline passed during their batch.
    assert answered <= rows <= answered + 0.1 * expired, (rows, answered, expired)
    # The server counted them (the ones that reached it before their deadline; most do).
    assert 0.5 * expired <= counted <= expired, (counted, expired)


async def test_cancelled_streams_free_their_slots_under_load(module_models):
    cap = 6
    with ServerProcess(module_models, "--max-streams", str(cap), "--max-tokens", "100000") as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            generator = generate_pb2_grpc.GeneratorStub(channel)
            mix = Mix(channel, seed=4, weights={"Forecast": 3, "ListModels": 1, "GetModel": 1})
            await mix.prepare()
            before = server.scrape()
            load, stop = Tally(), asyncio.Event()
            loading = asyncio.create_task(closed_loop(mix, load, 16, 60.0, stop=stop))

            def endless(seed: int):
                return generator.GenerateStream(generate_pb2.GenerateRequest(
                    model="tiny-generate", prompt="First", max_tokens=100000, temperature=0.0, seed=seed))

            for round_ in range(3):
                streams = [endless(round_ * cap + i) for i in range(cap)]
                for stream in streams:
                    await stream.read()  # admitted and decoding
                refused = await timed("GenerateStream", lambda t: endless(99).read())
                assert refused.code == "RESOURCE_EXHAUSTED", refused
                for stream in streams:
                    stream.cancel()
                # The server learns of the cancellations asynchronously: once nothing is left
                # decoding, the slots are back and the next round's streams are admitted (each
                # read above).
                await wait_until(lambda: metric(server.scrape(), "seqserve_active_streams") == 0,
                                 what="the cancelled streams to leave the step loop")
            stop.set()
            await loading
            exposition = server.scrape()

    cancelled = metric(exposition, "seqserve_requests_cancelled_total", method="GenerateStream") - \
        metric(before, "seqserve_requests_cancelled_total", method="GenerateStream")
    report("cancellation", rounds=3, streams_cancelled=3 * cap, counted_cancelled=cancelled,
           background_calls=len(load.calls), background_codes=dict(load.codes()))
    assert metric(exposition, "seqserve_active_streams") == 0
    assert cancelled == 3 * cap
    assert set(load.codes()) == {"OK"}, load.summary()
    assert np.isfinite(pct(load.latencies_ms(), 50))


async def test_speech_streams_past_the_cap_are_refused_and_cancelled_ones_free_their_slots_under_load(module_models):
    """StreamingRecognize as GenerateStream above: beyond --max-speech-streams a stream is refused with
    RESOURCE_EXHAUSTED (counted as streams_full), and cancelled streams give their slots back while
    unary load (offline recognition among it) goes on."""
    cap = 4
    with ServerProcess(module_models, "--max-speech-streams", str(cap)) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            recognizer = recognize_pb2_grpc.RecognizerStub(channel)
            mix = Mix(channel, seed=5, weights={"Forecast": 2, "Recognize": 2, "GetModel": 1})
            await mix.prepare()
            before = server.scrape()
            load, stop = Tally(), asyncio.Event()
            loading = asyncio.create_task(closed_loop(mix, load, 12, 60.0, stop=stop))
            config = recognize_pb2.RecognitionConfig(encoding=recognize_pb2.RecognitionConfig.LINEAR16,
                                                     sample_rate_hertz=8000)
            first = recognize_pb2.StreamingRecognizeRequest(
                streaming_config=recognize_pb2.StreamingRecognitionConfig(config=config, interim_results=True))
            audio = recognize_pb2.StreamingRecognizeRequest(audio_content=mix.speech_samples(0.2, 8000).tobytes())

            async def live_stream():
                """A stream that never half-closes, once it has answered an interim result (admitted)."""
                call = recognizer.StreamingRecognize()
                await call.write(first)
                await call.write(audio)
                return call

            refusals = []
            for _ in range(3):
                streams = [await live_stream() for _ in range(cap)]
                for stream in streams:
                    reply = await stream.read()
                    assert not reply.results[0].is_final
                # Only the config message: the refusal answers it, and a client write racing the
                # server's status makes grpc.aio report INTERNAL instead (grpc/grpc#36066).
                refused = await timed("StreamingRecognize",
                                      lambda t: _drain(recognizer.StreamingRecognize(iter([first]), timeout=t)))
                refusals.append(refused)
                assert refused.code == "RESOURCE_EXHAUSTED", refused
                assert refused.details == (f"{cap} of {cap} recognition streams are open (max_speech_streams); "
                                           "retry later"), refused
                for stream in streams:
                    stream.cancel()
                await wait_until(lambda: metric(server.scrape(), "seqserve_active_streams", model="tiny-recognize") == 0,
                                 what="the cancelled speech streams to leave the step loop")
            # ... and a new stream runs to its final result.
            responses = [r async for r in recognizer.StreamingRecognize(iter([first, audio]))]
            assert responses[-1].results[0].is_final
            stop.set()
            await loading
            exposition = server.scrape()

    def delta(name: str, **labels: str) -> float:
        return metric(exposition, name, **labels) - metric(before, name, **labels)

    cancelled = delta("seqserve_requests_cancelled_total", method="StreamingRecognize")
    rejected = delta("seqserve_requests_rejected_total", method="StreamingRecognize", reason="streams_full")
    report("speech_cancellation", rounds=3, streams_cancelled=3 * cap, counted_cancelled=cancelled,
           refused=len(refusals), counted_refused=rejected, background_calls=len(load.calls),
           background_codes={rpc: dict(load.codes(rpc)) for rpc in ("Forecast", "Recognize", "GetModel")})
    assert metric(exposition, "seqserve_active_streams") == 0
    assert cancelled == 3 * cap
    assert rejected == 3
    assert set(load.codes()) == {"OK"}, load.summary()
    assert load.codes("Recognize")["OK"] > 0 and not load.failures()


async def _drain(call) -> bool:
    async for _ in call:
        pass
    return True
