"""What one load level measured: each request's outcome, the level's statistics and its flat CSV row."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.loadgen.config import GENERATION_ENDPOINTS, SPEECH_ENDPOINTS, STREAM_P99_BOUND_MS, Load

OK = "OK"

CSV_COLUMNS = (
    "endpoint", "mode", "level", "model", "version", "requests", "ok", "errors", "error_codes", "dropped",
    "elapsed_s", "throughput_rps", "tokens_per_s",
    "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms",
    "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
    "server_queue_ms", "server_compute_ms", "server_ttft_ms",
    # recognize / recognize_stream only (empty elsewhere)
    "audio_source", "audio_s", "audio_x_realtime",
    "chunks", "chunk_p50_ms", "chunk_p99_ms", "chunks_at_final", "final_p50_ms", "final_p99_ms", "send_lag_p99_ms",
    "server_interim_ms", "server_final_ms",
)


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
    audio_s: float = 0.0  # recognize*: seconds of audio sent
    # recognize_stream: (perf_counter when sent, seconds until the first interim result that covers it)
    # per chunk that completes at least one model frame
    chunks: list[tuple[float, float]] = field(default_factory=list)
    chunks_at_final: int = 0  # recognize_stream: chunks no interim result covered (the final one did)
    final: float | None = None  # recognize_stream: half-close to the final result
    send_lags: list[float] = field(default_factory=list)  # recognize_stream: per chunk, how late it was sent


@dataclass
class ServerStats:
    """Server-side means over one level (from histogram sum/count deltas), in ms; None = no samples."""

    queue_ms: float | None = None
    compute_ms: float | None = None
    ttft_ms: float | None = None
    interim_ms: float | None = None  # speech streams: a chunk's arrival to the interim result covering it
    final_ms: float | None = None  # speech streams: the half-close's arrival to the final result


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
    # recognize / recognize_stream (None elsewhere)
    audio_source: str | None = None  # "fsdd" or "synthetic"
    audio_s: float | None = None  # seconds of audio in OK requests
    audio_x_realtime: float | None = None  # audio_s / elapsed_s
    chunks: int | None = None  # recognize_stream: chunk-to-interim latencies measured
    chunk_ms: dict[str, float | None] = field(default_factory=lambda: {"p50": None, "p99": None})
    chunks_at_final: int | None = None  # recognize_stream: chunks first covered by the final result
    final_ms: dict[str, float | None] = field(default_factory=lambda: {"p50": None, "p99": None})
    send_lag_p99_ms: float | None = None  # recognize_stream: how late the client sent chunks (p99)

    def holds(self, bound_ms: float = STREAM_P99_BOUND_MS) -> bool:
        """recognize_stream: every stream finished OK and the p99 chunk-to-interim latency is at most ``bound_ms``."""
        p99 = self.chunk_ms["p99"]
        return self.ok > 0 and not self.errors and p99 is not None and p99 <= bound_ms

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
            "audio_source": self.audio_source, "audio_s": _round(self.audio_s, 3),
            "audio_x_realtime": _round(self.audio_x_realtime, 2), "chunks": self.chunks,
            **{f"chunk_{k}_ms": _round(v) for k, v in self.chunk_ms.items()},
            "chunks_at_final": self.chunks_at_final,
            **{f"final_{k}_ms": _round(v) for k, v in self.final_ms.items()},
            "send_lag_p99_ms": _round(self.send_lag_p99_ms),
            "server_interim_ms": _round(server.interim_ms), "server_final_ms": _round(server.final_ms),
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
              server: ServerStats | None, audio_source: str | None = None,
              chunks_until: float | None = None) -> LevelResult:
    """Turn one level's outcomes into its report. recognize_stream counts the chunks sent before
    ``chunks_until`` (perf_counter; None = all): while the level's every stream was live."""
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
    speech: dict = {}
    if endpoint in SPEECH_ENDPOINTS:
        audio_s = sum(o.audio_s for o in ok)
        speech = dict(audio_source=audio_source, audio_s=audio_s,
                      audio_x_realtime=audio_s / elapsed_s if elapsed_s > 0 else 0.0)
    if endpoint == "recognize_stream":
        until = math.inf if chunks_until is None else chunks_until
        chunks = [latency for o in ok for sent, latency in o.chunks if sent <= until]
        lags = [lag for o in ok for lag in o.send_lags]
        speech.update(chunks=len(chunks), chunk_ms=percentiles_ms(chunks, (50, 99)),
                      chunks_at_final=sum(o.chunks_at_final for o in ok),
                      final_ms=percentiles_ms([o.final for o in ok if o.final is not None], (50, 99)),
                      send_lag_p99_ms=percentiles_ms(lags, (99,))["p99"])
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
        server=server, **speech,
    )


def stream_capacity(results: Sequence[LevelResult], bound_ms: float = STREAM_P99_BOUND_MS) -> str | None:
    """The closed-loop recognize_stream levels summed up: the largest number of concurrent streams that
    held p99 chunk-to-interim latency <= ``bound_ms`` with no failed stream, and each level's p99 (None
    when no such level ran)."""
    levels = [r for r in results if r.endpoint == "recognize_stream" and r.load.mode == "concurrency"]
    if not levels:
        return None
    held = [r for r in levels if r.holds(bound_ms)]
    parts = []
    for r in levels:
        p99 = r.chunk_ms["p99"]
        verdict = "holds" if r.holds(bound_ms) else ("failed streams" if r.errors else "over")
        behind = ""
        if r.send_lag_p99_ms is not None and r.send_lag_p99_ms > 10.0:
            behind = f", client sent late: lag p99 {r.send_lag_p99_ms:.0f} ms"
        parts.append(f"{r.load.level:g}: {'-' if p99 is None else f'{p99:.1f} ms'} {verdict}{behind}")
    best = f"{max(r.load.level for r in held):g} streams" if held else "none of the levels"
    return (f"recognize_stream: p99 chunk-to-interim <= {bound_ms:g} ms held up to {best} "
            f"({'; '.join(parts)})")
