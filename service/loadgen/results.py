"""What one load level measured: each request's outcome, the level's statistics and its flat CSV row."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.loadgen.config import GENERATION_ENDPOINTS, Load

OK = "OK"

CSV_COLUMNS = (
    "endpoint", "mode", "level", "model", "version", "requests", "ok", "errors", "error_codes", "dropped",
    "elapsed_s", "throughput_rps", "tokens_per_s",
    "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms",
    "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
    "server_queue_ms", "server_compute_ms", "server_ttft_ms",
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
