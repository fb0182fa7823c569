"""``seqserve bench``: load-test a running seqserve server and report what Triton's perf_analyzer reports.

The harness drives an already running server over gRPC (``grpc.aio``, one or ``--channels`` channels,
one asyncio task per outstanding request) and measures every request with ``time.perf_counter``.
For each endpoint it runs a series of load levels:

* closed loop (``--concurrency 1,4,16,64``): N workers, each sends its next request as soon as the
  previous one finished;
* open loop (``--rate R1,R2``): Poisson arrivals (exponential inter-arrival times, seeded) at R
  requests/s, with at most ``--max-outstanding`` requests in flight (arrivals beyond it are dropped
  and counted).

Each level first runs ``--warmup`` seconds whose requests are not counted, lets them finish, then
measures until ``--duration`` seconds have passed and/or ``--requests`` requests were sent, and
waits for the requests in flight (each bounded by ``--timeout``). With ``--metrics-address`` the
server's Prometheus histograms are scraped before and after the measured part of each level.

Entry points: ``add_parser`` / ``run`` for the command line, ``benchmark`` (async) for callers and tests.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import math
import os
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np
from google.protobuf.message import Message

from service.client.options import ADDRESS_ENV, DEFAULT_ADDRESS, EXIT_RPC_ERROR, EXIT_USAGE
from service.loadgen.series import synthetic_series
from service.v1 import (
    forecast_pb2,
    forecast_pb2_grpc,
    generate_pb2,
    generate_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    translate_pb2,
    translate_pb2_grpc,
)

log = logging.getLogger(__name__)

ENDPOINTS = ("forecast", "translate", "generate", "generate_stream")
GENERATION_ENDPOINTS = ("generate", "generate_stream")
DEFAULT_CONCURRENCY = (1, 4, 16, 64)
POOL_SIZE = 256  # distinct prepared requests per endpoint, sent round-robin
OK = "OK"

# Server-side histograms read from /metrics: report key -> family name.
SERVER_HISTOGRAMS = {
    "queue": "seqserve_queue_duration_seconds",
    "compute": "seqserve_compute_duration_seconds",
    "ttft": "seqserve_time_to_first_token_seconds",
}

# Built-in German source sentences (the project's translation direction is de -> en), short to long.
SENTENCES = (
    "Ein Mädchen lacht.",
    "Der Hund läuft schnell.",
    "Ein Mann trinkt Kaffee.",
    "Ein Kind liest ein Buch.",
    "Zwei Hunde spielen im Park.",
    "Die Katze schläft auf dem Sofa.",
    "Eine Frau singt ein Lied auf der Bühne.",
    "Zwei Männer arbeiten zusammen an einem Haus.",
    "Ein Junge spielt Fußball mit seinen Freunden im Park.",
    "Die Frau läuft am Strand, während die Sonne untergeht.",
    "Eine Gruppe von Menschen steht auf der Straße und wartet auf den Bus.",
    "Ein älterer Mann sitzt auf einer Bank und liest die Zeitung, während Kinder um ihn herum spielen.",
)

# Built-in prompts for the language models.
PROMPTS = (
    "First Citizen:\n",
    "Before we proceed any further, hear me speak.\n",
    "All:\nSpeak, speak.\n",
    "You are all resolved rather to die than to famish?",
    "First, you know Caius Marcius is chief enemy to the people.\n",
    "Resolved. resolved.\n\nFirst Citizen:\n",
    "We know't, we know't.",
    "Let us kill him, and we'll have corn at our own price.",
)

CSV_COLUMNS = (
    "endpoint", "mode", "level", "model", "version", "requests", "ok", "errors", "error_codes", "dropped",
    "elapsed_s", "throughput_rps", "tokens_per_s",
    "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms",
    "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
    "server_queue_ms", "server_compute_ms", "server_ttft_ms",
)


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """One load level: ``mode`` "concurrency" (closed loop, ``level`` workers) or "rate" (open
    loop, ``level`` requests/s)."""

    mode: str
    level: float

    @property
    def label(self) -> str:
        return f"c={self.level:g}" if self.mode == "concurrency" else f"r={self.level:g}/s"


@dataclass
class BenchConfig:
    """Everything one benchmark run needs; ``run`` builds it from the command line."""

    address: str = DEFAULT_ADDRESS
    metrics_address: str = ""  # host:port of the server's /metrics; "" = no server-side figures
    endpoints: Sequence[str] = ENDPOINTS
    model: str = ""  # "" = the server's default model of each task
    version: str = ""
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY
    rates: Sequence[float] = ()
    duration_s: float = 10.0  # per level; 0 = bounded by max_requests only
    max_requests: int = 0  # per level; 0 = bounded by duration only
    warmup_s: float = 1.0
    max_outstanding: int = 512  # open loop: requests in flight at most
    seed: int = 0
    texts: Sequence[str] = SENTENCES
    beam: int = 1
    max_tokens: int = 32
    history_len: Sequence[int] = ()  # forecast: (n,) or (low, high) steps; () = random in [min_history, window]
    timeout_s: float = 30.0
    channels: int = 1

    def loads(self) -> list[Load]:
        """The levels to run for each endpoint: closed-loop ones first, then open-loop ones."""
        return [Load("concurrency", c) for c in self.concurrency] + [Load("rate", r) for r in self.rates]

    def validate(self) -> None:
        """Raise ValueError when the run would be unbounded or a value is out of range."""
        unknown = [e for e in self.endpoints if e not in ENDPOINTS]
        if unknown or not self.endpoints:
            raise ValueError(f"endpoints must be among {', '.join(ENDPOINTS)}; got {', '.join(unknown) or 'none'}")
        if self.duration_s <= 0 and self.max_requests <= 0:
            raise ValueError("every level needs an end: give --duration > 0 and/or --requests > 0")
        if not self.loads():
            raise ValueError("no load level: give --concurrency and/or --rate")
        if any(c < 1 for c in self.concurrency) or any(not r > 0 for r in self.rates):
            raise ValueError("concurrency levels must be >= 1 and rates > 0")
        checks = {"--warmup": self.warmup_s >= 0, "--timeout": self.timeout_s > 0, "--channels": self.channels >= 1,
                  "--max-outstanding": self.max_outstanding >= 1, "--beam": self.beam >= 1,
                  "--max-tokens": self.max_tokens >= 1, "--texts": bool(self.texts),
                  "--history-len": len(self.history_len) <= 2 and all(n >= 1 for n in self.history_len)
                  and list(self.history_len) == sorted(self.history_len)}
        bad = [name for name, good in checks.items() if not good]
        if bad:
            raise ValueError(f"out of range: {', '.join(bad)}")


# -- results -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request as the client saw it. Times in seconds (``perf_counter``)."""

    latency: float  # send to reply (unary) or to the end of the stream
    code: str = OK  # gRPC status code name
    model: str = ""  # the model that answered (resolved default), OK replies only
    version: str = ""
    tokens: int = 0  # generated tokens (generation endpoints)
    ttft: float | None = None  # streams: send to the first chunk that carries a token
    itl: list[float] = field(default_factory=list)  # streams: one inter-token gap per later token


@dataclass
class ServerStats:
    """Server-side means over one level (from histogram sum/count deltas), in ms; None = no samples."""

    queue_ms: float | None = None
    compute_ms: float | None = None
    ttft_ms: float | None = None


@dataclass
class LevelResult:
    """The report of one (endpoint, load level)."""

    endpoint: str
    load: Load
    model: str
    version: str
    requests: int  # sent and finished (ok + errors)
    ok: int
    errors: dict[str, int]  # gRPC code name -> count
    dropped: int  # open loop: arrivals not sent because max_outstanding requests were in flight
    elapsed_s: float
    throughput_rps: float
    tokens_per_s: float | None
    latency_ms: dict[str, float | None]  # mean, p50, p90, p95, p99 of OK requests
    ttft_ms: dict[str, float | None]  # p50, p99 (generate_stream)
    itl_ms: dict[str, float | None]  # p50, p99 (generate_stream)
    server: ServerStats | None

    def row(self) -> dict[str, Any]:
        """A flat dict with the CSV_COLUMNS keys (None where a figure does not apply)."""
        server = self.server or ServerStats()
        return {
            "endpoint": self.endpoint, "mode": self.load.mode, "level": self.load.level,
            "model": self.model, "version": self.version, "requests": self.requests, "ok": self.ok,
            "errors": sum(self.errors.values()),
            "error_codes": ";".join(f"{code}:{n}" for code, n in sorted(self.errors.items())),
            "dropped": self.dropped, "elapsed_s": round(self.elapsed_s, 4),
            "throughput_rps": _round(self.throughput_rps), "tokens_per_s": _round(self.tokens_per_s),
            **{f"latency_{k}_ms": _round(v) for k, v in self.latency_ms.items()},
            **{f"ttft_{k}_ms": _round(v) for k, v in self.ttft_ms.items()},
            **{f"itl_{k}_ms": _round(v) for k, v in self.itl_ms.items()},
            "server_queue_ms": _round(server.queue_ms), "server_compute_ms": _round(server.compute_ms),
            "server_ttft_ms": _round(server.ttft_ms),
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def percentiles_ms(seconds: Sequence[float] | np.ndarray, levels: Iterable[int]) -> dict[str, float | None]:
    """{"p50": ms, ...} of ``seconds`` (numpy linear percentiles); None for each level when empty."""
    levels = list(levels)
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    if values.size == 0:
        return {f"p{q}": None for q in levels}
    return {f"p{q}": float(v) for q, v in zip(levels, np.percentile(values, levels), strict=True)}


def summarize(endpoint: str, load: Load, outcomes: Sequence[Outcome], elapsed_s: float, dropped: int,
              server: ServerStats | None) -> LevelResult:
    """Turn one level's outcomes into its report."""
    ok = [o for o in outcomes if o.code == OK]
    latencies = np.array([o.latency for o in ok], dtype=np.float64)
    latency: dict[str, float | None] = {"mean": float(latencies.mean()) * 1000.0 if ok else None}
    latency.update(percentiles_ms(latencies, (50, 90, 95, 99)))
    generating = endpoint in GENERATION_ENDPOINTS
    tokens = sum(o.tokens for o in ok)
    streaming = endpoint == "generate_stream"
    ttfts = [o.ttft for o in ok if o.ttft is not None]
    itls = [gap for o in ok for gap in o.itl]
    none2 = {"p50": None, "p99": None}
    return LevelResult(
        endpoint=endpoint, load=load,
        model=next((o.model for o in ok), ""), version=next((o.version for o in ok), ""),
        requests=len(outcomes), ok=len(ok), errors=dict(Counter(o.code for o in outcomes if o.code != OK)),
        dropped=dropped, elapsed_s=elapsed_s,
        throughput_rps=len(ok) / elapsed_s if elapsed_s > 0 else 0.0,
        tokens_per_s=(tokens / elapsed_s if elapsed_s > 0 else 0.0) if generating else None,
        latency_ms=latency,
        ttft_ms=percentiles_ms(ttfts, (50, 99)) if streaming else none2,
        itl_ms=percentiles_ms(itls, (50, 99)) if streaming else none2,
        server=server,
    )


# -- server-side metrics -----------------------------------------------------------------------


def histogram_totals(exposition: str, model: str = "") -> dict[str, tuple[float, float]]:
    """(sum, count) of each SERVER_HISTOGRAMS family in a Prometheus text exposition, over all its
    series (only those labelled ``model`` when given)."""
    from prometheus_client.parser import text_string_to_metric_families

    keys = {name: key for key, name in SERVER_HISTOGRAMS.items()}
    totals = {key: [0.0, 0.0] for key in SERVER_HISTOGRAMS}
    for family in text_string_to_metric_families(exposition):
        key = keys.get(family.name)
        if key is None:
            continue
        for sample in family.samples:
            if model and sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_sum"):
                totals[key][0] += sample.value
            elif sample.name.endswith("_count"):
                totals[key][1] += sample.value
    return {key: (s, c) for key, (s, c) in totals.items()}


def server_stats(before: str, after: str, model: str = "") -> ServerStats:
    """Mean queue, compute and time-to-first-token (ms) between two scrapes: delta sum / delta count."""
    first, last = histogram_totals(before, model), histogram_totals(after, model)

    def mean_ms(key: str) -> float | None:
        count = last[key][1] - first[key][1]
        return (last[key][0] - first[key][0]) / count * 1000.0 if count > 0 else None

    return ServerStats(queue_ms=mean_ms("queue"), compute_ms=mean_ms("compute"), ttft_ms=mean_ms("ttft"))


async def scrape(metrics_address: str, timeout_s: float = 10.0) -> str:
    """The Prometheus text exposition at http://``metrics_address``/metrics (fetched off the loop)."""

    def fetch() -> str:
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=timeout_s) as reply:
            return reply.read().decode("utf-8")

    return await asyncio.to_thread(fetch)


# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForecastShape:
    """What a forecast request needs from the model's ForecastSpec."""

    window: int = 48
    min_history: int = 8
    channels: int = 1


def forecast_requests(config: BenchConfig, shape: ForecastShape, rng: np.random.Generator) -> list[Message]:
    """POOL_SIZE forecast requests, histories of random length in [min_history, window] or in
    ``config.history_len`` (one length, or a low-high range)."""
    if config.history_len:
        low, high = config.history_len[0], config.history_len[-1]
    else:
        low = max(1, shape.min_history)
        high = max(low, shape.window)
    out = []
    for _ in range(POOL_SIZE):
        values = synthetic_series(rng, int(rng.integers(low, high + 1)), shape.channels)
        request = forecast_pb2.ForecastRequest(model=config.model, version=config.version)
        if shape.channels == 1:
            request.history.extend(values[:, 0].tolist())
        else:
            request.channels.extend(forecast_pb2.Series(values=col.tolist()) for col in values.T)
        out.append(request)
    return out


def translate_requests(config: BenchConfig, rng: np.random.Generator) -> list[Message]:
    """POOL_SIZE one-sentence translate requests, sentences drawn from ``config.texts``."""
    picks = rng.integers(0, len(config.texts), POOL_SIZE)
    return [translate_pb2.TranslateRequest(model=config.model, version=config.version, texts=[config.texts[i]],
                                           beam_size=config.beam) for i in picks]


def generate_requests(config: BenchConfig, rng: np.random.Generator) -> list[Message]:
    """POOL_SIZE generate requests: built-in prompts, ``max_tokens`` each, seeds seed*POOL_SIZE + i."""
    picks = rng.integers(0, len(PROMPTS), POOL_SIZE)
    return [generate_pb2.GenerateRequest(model=config.model, version=config.version, prompt=PROMPTS[p],
                                         max_tokens=config.max_tokens, seed=config.seed * POOL_SIZE + i)
            for i, p in enumerate(picks)]


async def forecast_shape(channel: grpc.aio.Channel, config: BenchConfig) -> ForecastShape:
    """The ForecastSpec of the model to load-test (the default forecast model when none is named).

    When it cannot be read (unknown model, ...) a warning is logged and a generic shape is used, so
    the requests themselves fail and are counted by code."""
    stub = models_pb2_grpc.ModelsStub(channel)
    try:
        if config.model:
            reply = await stub.GetModel(models_pb2.GetModelRequest(name=config.model, version=config.version),
                                        timeout=config.timeout_s)
            info = reply.model
        else:
            listed = await stub.ListModels(models_pb2.ListModelsRequest(task="forecast"), timeout=config.timeout_s)
            info = next((m for m in listed.models if m.is_default), None)
            if info is None:
                log.warning("the server has no default forecast model; using a generic history shape")
                return ForecastShape()
    except grpc.aio.AioRpcError as err:
        log.warning("cannot read the forecast spec (%s: %s); using a generic history shape",
                    err.code().name, err.details())
        return ForecastShape()
    spec = info.forecast
    return ForecastShape(window=spec.window or 48, min_history=spec.min_history or 1, channels=spec.channels or 1)


# -- sending -----------------------------------------------------------------------------------


Sender = Callable[[int], Awaitable[Outcome]]


def _failed(start: float, err: grpc.aio.AioRpcError) -> Outcome:
    return Outcome(latency=time.perf_counter() - start, code=err.code().name)


def unary_sender(endpoint: str, channels: Sequence[grpc.aio.Channel], requests: Sequence[Message],
                 timeout_s: float) -> Sender:
    """A coroutine function that sends prepared request ``i`` (round-robin over pool and channels)."""
    stubs = {
        "forecast": lambda ch: forecast_pb2_grpc.ForecasterStub(ch).Forecast,
        "translate": lambda ch: translate_pb2_grpc.TranslatorStub(ch).Translate,
        "generate": lambda ch: generate_pb2_grpc.GeneratorStub(ch).Generate,
    }
    methods = [stubs[endpoint](ch) for ch in channels]

    async def send(i: int) -> Outcome:
        method = methods[i % len(methods)]
        start = time.perf_counter()
        try:
            reply = await method(requests[i % len(requests)], timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return _failed(start, err)
        latency = time.perf_counter() - start
        return Outcome(latency=latency, model=reply.model, version=reply.version,
                       tokens=getattr(reply, "completion_tokens", 0))

    return send


def stream_sender(channels: Sequence[grpc.aio.Channel], requests: Sequence[Message], timeout_s: float) -> Sender:
    """Like unary_sender for GenerateStream, also timing the first token and each later token."""
    methods = [generate_pb2_grpc.GeneratorStub(ch).GenerateStream for ch in channels]

    async def send(i: int) -> Outcome:
        method = methods[i % len(methods)]
        start = time.perf_counter()
        arrivals: list[tuple[float, int]] = []  # (arrival time, cumulative completion tokens)
        try:
            async for chunk in method(requests[i % len(requests)], timeout=timeout_s):
                arrivals.append((time.perf_counter(), chunk.completion_tokens))
        except grpc.aio.AioRpcError as err:
            return _failed(start, err)
        latency = time.perf_counter() - start
        ttft, itl = token_timings(start, arrivals)
        model = requests[i % len(requests)].model  # chunks do not name the model
        return Outcome(latency=latency, model=model, tokens=arrivals[-1][1] if arrivals else 0, ttft=ttft, itl=itl)

    return send


def token_timings(start: float, arrivals: Sequence[tuple[float, int]]) -> tuple[float | None, list[float]]:
    """Time to first token and inter-token latencies from chunk (arrival time, cumulative tokens).

    The first chunk that carries tokens gives the time to first token; every later chunk that
    carries n new tokens contributes n gaps of (time since the previous token-carrying chunk) / n,
    as the server's ``seqserve_time_between_tokens_seconds`` counts them."""
    ttft: float | None = None
    itl: list[float] = []
    last_time, last_tokens = start, 0
    for arrived, tokens in arrivals:
        new = tokens - last_tokens
        if new <= 0:
            continue
        if ttft is None:
            ttft = arrived - start
        else:
            itl.extend([(arrived - last_time) / new] * new)
        last_time, last_tokens = arrived, tokens
    return ttft, itl


# -- load generation ---------------------------------------------------------------------------


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
                    rng: np.random.Generator) -> tuple[list[Outcome], float, int, tuple[str, str] | None]:
    """Warm up (not counted, drained), scrape, measure, scrape. Returns outcomes, elapsed seconds,
    dropped arrivals and the (before, after) expositions (None without a metrics address)."""

    async def phase(duration_s: float, max_requests: int, first: int) -> tuple[list[Outcome], float, int]:
        if load.mode == "concurrency":
            return (*await closed_loop(send, int(load.level), duration_s, max_requests, first), 0)
        return await open_loop(send, load.level, duration_s, max_requests, config.max_outstanding, rng, first)

    if config.warmup_s > 0:
        await phase(config.warmup_s, 0, POOL_SIZE // 2)
    before = await _try_scrape(config.metrics_address)
    outcomes, elapsed, dropped = await phase(config.duration_s, config.max_requests, 0)
    after = await _try_scrape(config.metrics_address)
    expositions = (before, after) if before is not None and after is not None else None
    return outcomes, elapsed, dropped, expositions


async def _try_scrape(metrics_address: str) -> str | None:
    if not metrics_address:
        return None
    try:
        return await scrape(metrics_address)
    except (OSError, urllib.error.URLError) as err:
        log.warning("cannot scrape http://%s/metrics: %s", metrics_address, err)
        return None


async def _sender(endpoint: str, channels: Sequence[grpc.aio.Channel], config: BenchConfig) -> Sender:
    rng = np.random.default_rng([config.seed, ENDPOINTS.index(endpoint)])
    if endpoint == "forecast":
        requests = forecast_requests(config, await forecast_shape(channels[0], config), rng)
    elif endpoint == "translate":
        requests = translate_requests(config, rng)
    else:
        requests = generate_requests(config, rng)
    if endpoint == "generate_stream":
        return stream_sender(channels, requests, config.timeout_s)
    return unary_sender(endpoint, channels, requests, config.timeout_s)


async def benchmark(config: BenchConfig,
                    on_result: Callable[[LevelResult], None] | None = None) -> list[LevelResult]:
    """Run every (endpoint, load level) of ``config`` against the server; ``on_result`` is called
    with each level's report as soon as it is done. Raises ValueError on a bad config and
    ConnectionError when the server cannot be reached within ``timeout_s``."""
    config.validate()
    channels = [grpc.aio.insecure_channel(config.address) for _ in range(config.channels)]
    results: list[LevelResult] = []
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), config.timeout_s)
        except asyncio.TimeoutError:
            raise ConnectionError(f"no gRPC server answers at {config.address}") from None
        for endpoint in config.endpoints:
            send = await _sender(endpoint, channels, config)
            for index, load in enumerate(config.loads()):
                rng = np.random.default_rng([config.seed, ENDPOINTS.index(endpoint), index])
                outcomes, elapsed, dropped, expositions = await run_level(send, load, config, rng)
                model = next((o.model for o in outcomes if o.code == OK and o.model), config.model)
                server = server_stats(*expositions, model=model) if expositions else None
                result = summarize(endpoint, load, outcomes, elapsed, dropped, server)
                results.append(result)
                if on_result is not None:
                    on_result(result)
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    return results


# -- output ------------------------------------------------------------------------------------

TABLE = (  # (title, row key, width, format)
    ("ENDPOINT", "endpoint", 15, "s"), ("LOAD", "label", 9, "s"), ("OK", "ok", 7, "d"),
    ("ERR", "errors", 5, "d"), ("REQ/S", "throughput_rps", 9, ".1f"), ("TOK/S", "tokens_per_s", 9, ".0f"),
    ("MEAN", "latency_mean_ms", 8, ".2f"), ("P50", "latency_p50_ms", 8, ".2f"), ("P90", "latency_p90_ms", 8, ".2f"),
    ("P95", "latency_p95_ms", 8, ".2f"), ("P99", "latency_p99_ms", 8, ".2f"),
    ("TTFT50", "ttft_p50_ms", 8, ".2f"), ("TTFT99", "ttft_p99_ms", 8, ".2f"),
    ("ITL50", "itl_p50_ms", 7, ".2f"), ("ITL99", "itl_p99_ms", 7, ".2f"),
    ("S.QUEUE", "server_queue_ms", 8, ".3f"), ("S.COMP", "server_compute_ms", 8, ".3f"),
    ("S.TTFT", "server_ttft_ms", 8, ".2f"),
)


def table_header() -> str:
    """The title line of the text table (latencies in ms)."""
    return "  ".join(title.rjust(width) if i > 1 else title.ljust(width)
                     for i, (title, _, width, _) in enumerate(TABLE))


def table_row(result: LevelResult) -> str:
    """One text-table line; '-' where a figure does not apply, plus the error codes when any."""
    row = {**result.row(), "label": result.load.label}
    cells = []
    for i, (_, key, width, fmt) in enumerate(TABLE):
        value = row[key]
        text = "-" if value is None else format(value, fmt)
        cells.append(text.ljust(width) if i < 2 else text.rjust(width))
    line = "  ".join(cells)
    if result.errors:
        line += f"  [{row['error_codes']}]"
    if result.dropped:
        line += f"  [dropped {result.dropped}]"
    return line


def write_csv(path: Path, results: Sequence[LevelResult]) -> None:
    """One row per (endpoint, mode, level), columns CSV_COLUMNS; empty cells where a figure does not apply."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for result in results:
            writer.writerow({k: ("" if v is None else v) for k, v in result.row().items()})


def matplotlib_missing() -> str | None:
    """Why --plot cannot work here (None when matplotlib imports)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib, which the serving install does not include: pip install 'seqserve[train]'"
    return None


def write_plot(path: Path, results: Sequence[LevelResult]) -> None:
    """Latency (p50 solid, p99 dashed) against throughput, one panel per endpoint, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    endpoints = list(dict.fromkeys(r.endpoint for r in results))
    fig, axes = plt.subplots(1, len(endpoints), figsize=(4.5 * len(endpoints), 4), squeeze=False)
    for ax, endpoint in zip(axes[0], endpoints, strict=True):
        for mode, marker in (("concurrency", "o"), ("rate", "s")):
            points = sorted((r for r in results if r.endpoint == endpoint and r.load.mode == mode
                             and r.latency_ms["p50"] is not None), key=lambda r: r.throughput_rps)
            if not points:
                continue
            x = [r.throughput_rps for r in points]
            for key, style in (("p50", "-"), ("p99", "--")):
                ax.plot(x, [r.latency_ms[key] for r in points], style, marker=marker, label=f"{key} ({mode})")
            for r in points:
                ax.annotate(r.load.label, (r.throughput_rps, r.latency_ms["p99"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_title(endpoint)
        ax.set_xlabel("throughput (req/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- command line ------------------------------------------------------------------------------


def _list_of(kind: type, what: str) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} {text!r} must be comma-separated numbers") from None
    return parse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an argparse ``subparsers`` object; its ``func`` is ``run``."""
    p = subparsers.add_parser(
        "bench",
        help="load-test a running server",
        description="Drive a running seqserve server over gRPC at fixed concurrency levels (closed loop) "
        "and/or Poisson arrival rates (open loop); report throughput, latency percentiles, errors by "
        "code, streaming token timings and (with --metrics-address) the server's queue and compute "
        "time per request. Every level ends after --duration seconds and/or --requests requests.",
    )
    group = p.add_argument_group("server")
    group.add_argument("--address", default=os.environ.get(ADDRESS_ENV, DEFAULT_ADDRESS),
                       help=f"server host:port (default {DEFAULT_ADDRESS}; env {ADDRESS_ENV})")
    group.add_argument("--metrics-address", default="", metavar="HOST:PORT",
                       help="the server's Prometheus endpoint, e.g. 127.0.0.1:9464: adds server-side "
                            "queue/compute/time-to-first-token means (default: off)")
    group.add_argument("--channels", type=int, default=1, help="gRPC channels (connections) to spread over (default 1)")
    group.add_argument("--timeout", type=float, default=30.0, help="deadline per request in seconds (default 30)")

    group = p.add_argument_group("workload")
    group.add_argument("--endpoint", action="append", default=[], metavar="NAME",
                       help=f"{'|'.join(ENDPOINTS)}; repeatable or comma-separated (default: all four)")
    group.add_argument("--model", default="", help="model name (default: the server's default model for each task)")
    group.add_argument("--version", default="", help="model version, digits (default: the model's default version)")
    group.add_argument("--texts", metavar="FILE", help="translate: sentences, one per line (default: built-in German)")
    group.add_argument("--history-len", type=_list_of(int, "--history-len"), default=[], metavar="N[,MAX]",
                       help="forecast: history steps, or a range drawn from per request (default: random between "
                       "the model's min_history and window; equal lengths share batches)")
    group.add_argument("--beam", type=int, default=1, help="translate: beam width (default 1 = greedy)")
    group.add_argument("--max-tokens", type=int, default=32, help="generate: tokens per request (default 32)")
    group.add_argument("--seed", type=int, default=0, help="seed of inputs, generation and arrivals (default 0)")

    group = p.add_argument_group("load")
    group.add_argument("--concurrency", type=_list_of(int, "--concurrency"), default=None, metavar="N1,N2",
                       help="closed-loop levels: requests kept in flight (default 1,4,16,64 unless --rate is given)")
    group.add_argument("--rate", type=_list_of(float, "--rate"), default=[], metavar="R1,R2",
                       help="open-loop levels: Poisson arrivals per second (default: none)")
    group.add_argument("--max-outstanding", type=int, default=512,
                       help="open loop: most requests in flight; later arrivals are dropped (default 512)")
    group.add_argument("--duration", type=float, default=10.0, help="seconds measured per level; 0 = --requests only (default 10)")
    group.add_argument("--requests", type=int, default=0, help="most requests per level; 0 = no cap (default 0)")
    group.add_argument("--warmup", type=float, default=1.0, help="seconds per level sent before measuring (default 1)")

    group = p.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="print one JSON object per level instead of a table")
    group.add_argument("--csv", metavar="FILE", help="also write one row per (endpoint, mode, level) to FILE")
    group.add_argument("--plot", metavar="FILE.png", help="also plot latency against throughput (needs matplotlib)")
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A BenchConfig from parsed ``bench`` arguments; raises ValueError/OSError on bad values or files."""
    endpoints = [e.strip() for item in args.endpoint for e in item.split(",") if e.strip()] or list(ENDPOINTS)
    texts: Sequence[str] = SENTENCES
    if args.texts:
        texts = [line.strip() for line in Path(args.texts).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise ValueError(f"{args.texts}: no sentence in it")
    concurrency = args.concurrency if args.concurrency is not None else ([] if args.rate else DEFAULT_CONCURRENCY)
    config = BenchConfig(
        address=args.address, metrics_address=args.metrics_address, endpoints=list(dict.fromkeys(endpoints)),
        model=args.model, version=args.version, concurrency=list(concurrency), rates=list(args.rate),
        duration_s=args.duration, max_requests=args.requests, warmup_s=args.warmup,
        max_outstanding=args.max_outstanding, seed=args.seed, texts=texts, beam=args.beam,
        max_tokens=args.max_tokens, history_len=args.history_len, timeout_s=args.timeout, channels=args.channels,
    )
    config.validate()
    return config


def _printer(as_json: bool, out: TextIO) -> Callable[[LevelResult], None]:
    printed_header = False

    def show(result: LevelResult) -> None:
        nonlocal printed_header
        if as_json:
            out.write(json.dumps({**result.row(), "error_codes": result.errors}, sort_keys=True) + "\n")
        else:
            if not printed_header:
                out.write(table_header() + "\n")
                printed_header = True
            out.write(table_row(result) + "\n")
        out.flush()

    return show


def run(args: argparse.Namespace) -> int:
    """Run ``seqserve bench`` from parsed arguments; returns the exit status (0 even when requests
    failed: they are part of the report; 1 when the server cannot be reached; 2 on bad usage)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.plot and (why := matplotlib_missing()):
        print(f"error: {why}", file=sys.stderr)
        return EXIT_USAGE
    started = time.perf_counter()
    try:
        results = asyncio.run(benchmark(config, _printer(args.json, sys.stdout)))
    except ConnectionError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RPC_ERROR
    if args.csv:
        write_csv(Path(args.csv), results)
    if args.plot:
        write_plot(Path(args.plot), results)
    # The total goes to stderr with --json so that stdout stays one JSON object per line.
    print(f"total {time.perf_counter() - started:.1f} s, {len(results)} levels",
          file=sys.stderr if args.json else sys.stdout)
    return 0
