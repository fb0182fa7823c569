"""The load generators and the benchmark loop: closed loop (N workers back to back), open loop (Poisson
arrivals at a rate), one level's warm-up and measurement, and ``benchmark`` over every endpoint and level."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import urllib.error
from collections.abc import Callable, Sequence

import grpc
import numpy as np

from service.client.options import ADDRESS_ENV
from service.loadgen.config import ALL_ENDPOINTS, BenchConfig, Load
from service.loadgen.pools import (
    POOL_SIZE,
    forecast_requests,
    forecast_shape,
    generate_requests,
    infer_requests,
    recognize_requests,
    score_requests,
    speech_shape,
    translate_requests,
)
from service.loadgen.results import OK, LevelResult, Outcome, summarize
from service.loadgen.senders import Sender, recognize_stream_sender, stream_sender, unary_sender
from service.loadgen.server_metrics import scrape, server_stats
from service.loadgen.speech import speech_workload

log = logging.getLogger(__name__)


def _remaining(sent: int, max_requests: int) -> bool:
    return max_requests <= 0 or sent < max_requests


async def closed_loop(send: Sender, concurrency: int, duration_s: float, max_requests: int,
                      first: int = 0) -> tuple[list[Outcome], float]:
    """``concurrency`` workers send back to back until ``duration_s`` has passed (0 = no limit) or
    ``max_requests`` were sent (0 = no limit); returns the outcomes and the seconds until the last
    request finished."""
    start = time.perf_counter()
    deadline = start + duration_s if duration_s > 0 else math.inf
    outcomes: list[Outcome] = []
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while time.perf_counter() < deadline and _remaining(sent, max_requests):
            i = sent
            sent += 1
            outcomes.append(await send(first + i))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes, time.perf_counter() - start


async def open_loop(send: Sender, rate: float, duration_s: float, max_requests: int, max_outstanding: int,
                    rng: np.random.Generator, first: int = 0) -> tuple[list[Outcome], float, int]:
    """Poisson arrivals at ``rate``/s until ``duration_s`` (0 = no limit) or ``max_requests`` arrivals
    (0 = no limit). An arrival that finds ``max_outstanding`` requests in flight is dropped.
    Returns the outcomes, the seconds until the last request finished and the dropped count."""
    start = time.perf_counter()
    tasks: list[asyncio.Task[Outcome]] = []
    in_flight = 0
    arrivals = dropped = 0
    at = 0.0

    def done(_: asyncio.Task[Outcome]) -> None:
        nonlocal in_flight
        in_flight -= 1

    while _remaining(arrivals, max_requests):
        at += float(rng.exponential(1.0 / rate))
        if duration_s > 0 and at >= duration_s:
            break
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        arrivals += 1
        if in_flight >= max_outstanding:
            dropped += 1
            continue
        in_flight += 1
        task = asyncio.create_task(send(first + arrivals - 1))
        task.add_done_callback(done)
        tasks.append(task)
    outcomes = list(await asyncio.gather(*tasks))
    return outcomes, time.perf_counter() - start, dropped


async def run_level(send: Sender, load: Load, config: BenchConfig,
                    rng: np.random.Generator) -> tuple[list[Outcome], float, int, tuple[str, str] | None, float | None]:
    """Warm up (not counted, drained), scrape, measure, scrape. Returns outcomes, elapsed seconds,
    dropped arrivals, the (before, after) expositions (None without a metrics address) and when the
    measured part stopped sending new requests (perf_counter; None when only --requests ends it)."""

    async def phase(duration_s: float, max_requests: int, first: int) -> tuple[list[Outcome], float, int]:
        if load.mode == "concurrency":
            return (*await closed_loop(send, int(load.level), duration_s, max_requests, first), 0)
        return await open_loop(send, load.level, duration_s, max_requests, config.max_outstanding, rng, first)

    if config.warmup_s > 0:
        await phase(config.warmup_s, 0, POOL_SIZE // 2)
    before = await _try_scrape(config.metrics_address)
    started = time.perf_counter()
    outcomes, elapsed, dropped = await phase(config.duration_s, config.max_requests, 0)
    after = await _try_scrape(config.metrics_address)
    expositions = (before, after) if before is not None and after is not None else None
    return outcomes, elapsed, dropped, expositions, started + config.duration_s if config.duration_s > 0 else None


async def _try_scrape(metrics_address: str) -> str | None:
    if not metrics_address:
        return None
    try:
        return await scrape(metrics_address)
    except (OSError, urllib.error.URLError) as err:
        log.warning("cannot scrape http://%s/metrics: %s", metrics_address, err)
        return None


async def _sender(endpoint: str, channels: Sequence[grpc.aio.Channel], config: BenchConfig) -> tuple[Sender, str | None]:
    """The endpoint's sender and, for the recognize endpoints, where its audio came from."""
    rng = np.random.default_rng([config.seed, ALL_ENDPOINTS.index(endpoint)])
    if endpoint in ("recognize", "recognize_stream"):
        streaming = endpoint == "recognize_stream"
        shape = await speech_shape(channels[0], config, streaming)
        utterances, source = speech_workload(POOL_SIZE, shape.sample_rate, rng, config.data_dir, config.digits)
        if streaming:
            return recognize_stream_sender(channels, utterances, shape, config.model, config.version, config.chunk_ms,
                                           config.timeout_s, rng), source
        return unary_sender(endpoint, channels, recognize_requests(config, utterances), config.timeout_s,
                            [u.seconds for u in utterances]), source
    if endpoint == "forecast":
        requests = forecast_requests(config, await forecast_shape(channels[0], config), rng)
    elif endpoint == "translate":
        requests = translate_requests(config, rng)
    elif endpoint == "infer":
        requests = infer_requests(config, await forecast_shape(channels[0], config), rng)
    elif endpoint == "score":
        requests = score_requests(config, rng)
    else:
        requests = generate_requests(config, rng)
    if endpoint == "generate_stream":
        return stream_sender(channels, requests, config.timeout_s), None
    return unary_sender(endpoint, channels, requests, config.timeout_s), None


CONNECT_TIMEOUT_S = 5.0  # how long to wait for the server to answer at all before giving up


async def benchmark(config: BenchConfig,
                    on_result: Callable[[LevelResult], None] | None = None) -> list[LevelResult]:
    """Run every (endpoint, load level) of ``config`` against the server; ``on_result`` is called
    with each level's report as soon as it is done. Raises ValueError on a bad config and
    ConnectionError when the server cannot be reached within ``timeout_s``."""
    config.validate()
    # Each channel its own connection: channels with equal arguments would otherwise share one
    # (gRPC's global subchannel pool), and `serve --workers` spreads connections, not calls.
    channels = [grpc.aio.insecure_channel(config.address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(config.channels)]
    results: list[LevelResult] = []
    try:
        connect_s = min(config.timeout_s, CONNECT_TIMEOUT_S)
        try:
            await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), connect_s)
        except asyncio.TimeoutError:
            raise ConnectionError(
                f"no gRPC server answers at {config.address} within {connect_s:g} s: is `seqserve serve` running? "
                f"Point --address (or {ADDRESS_ENV}) at it") from None
        for endpoint in config.endpoints:
            send, audio_source = await _sender(endpoint, channels, config)
            for index, load in enumerate(config.loads()):
                rng = np.random.default_rng([config.seed, ALL_ENDPOINTS.index(endpoint), index])
                outcomes, elapsed, dropped, expositions, until = await run_level(send, load, config, rng)
                model = next((o.model for o in outcomes if o.code == OK and o.model), config.model)
                server = server_stats(*expositions, model=model) if expositions else None
                result = summarize(endpoint, load, outcomes, elapsed, dropped, server, audio_source, until)
                results.append(result)
                if on_result is not None:
                    on_result(result)
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    return results
