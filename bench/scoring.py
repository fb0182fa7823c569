"""The performance targets of bench.targets: what one run measured (Run), the median round of each
figure, and each target's figures, ratio, bound and verdict."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.loadgen.results import LevelResult

FORECAST_LEVELS = (1, 4, 16, 64)
MAX_TOKENS = 64  # tokens per generation request
TOKEN_SPAN = 50  # target 4 compares the time of tokens 10..60 with that of tokens 500..550


@dataclass
class Run:
    """Everything one run measured."""

    duration_s: float
    rounds: int = 1
    results: list[dict[str, Any]] = field(default_factory=list)  # CSV rows, with "system" and "round"
    figures: dict[str, Any] = field(default_factory=dict)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB) of seqserve

    def add(self, system: str, results: list[LevelResult], round_no: int = 1) -> list[LevelResult]:
        self.results.extend({"system": system, "round": round_no, **r.row()} for r in results)
        return results


def per_token_ms(arrivals: np.ndarray, start: int, span: int) -> float:
    """Median over streams of the time per token from token ``start`` to ``start + span``."""
    return float(np.median((arrivals[:, start + span] - arrivals[:, start]) / span))


def middle(results: list[Any], level: int, key: Callable[[Any], float]) -> Any:
    """Of the rounds measured at ``level`` (LevelResults, or Triton's rows), the one whose ``key`` is
    the median (the lower middle for an even count)."""
    at = sorted((r for r in results if _level(r) == level), key=key)
    if not at:
        raise KeyError(f"no result at level {level}")
    return at[(len(at) - 1) // 2]


def _level(result: Any) -> int:
    return int(result["level"]) if isinstance(result, dict) else result.load.level


def rps(r: Any) -> float:
    return float(r["throughput_rps"] if isinstance(r, dict) else r.throughput_rps)


def p50(r: Any) -> float:
    return float(r["latency_p50_ms"] if isinstance(r, dict) else r.latency_ms["p50"])


def p99(r: Any) -> float:
    return float(r["latency_p99_ms"] if isinstance(r, dict) else r.latency_ms["p99"])


def tokens(r: LevelResult) -> float:
    return r.tokens_per_s or 0.0


def per_token(r: LevelResult) -> float:
    """A stream's time after its first token over the tokens after the first (chunks can arrive in
    bursts, so the inter-chunk p50 would understate it)."""
    return (r.latency_ms["p50"] - r.ttft_ms["p50"]) / (MAX_TOKENS - 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def targets(run: Run, forecast: dict[str, list[Any]], generation: dict[str, list[LevelResult]],
            translation: dict[str, list[LevelResult]]) -> dict[str, Any]:
    """Each target: figures (each the median of its rounds), ratio, bound and whether it is met."""
    f = run.figures
    out: dict[str, Any] = {}
    s1, echo1 = p50(middle(forecast["seqserve"], 1, p50)), p50(middle(forecast["echo"], 1, p50))
    floor = f["ort_forecast_p50_ms"] + echo1
    out["1"] = {"what": "forecast c=1 p50 / (in-process ORT p50 + echo p50)", "value": _ratio(s1, floor), "bound": "<= 1.3",
                    "met": s1 <= 1.3 * floor, "detail": f"{s1:.2f} ms vs {f['ort_forecast_p50_ms']:.2f} + {echo1:.2f} ms"}
    s64, off64 = rps(middle(forecast["seqserve"], 64, rps)), rps(middle(forecast["seqserve-nobatch"], 64, rps))
    ratio_off = _ratio(s64, off64)
    # Issue 19 replaced the bounds of 2a and 5 (what the graphs themselves gain from batching, which no
    # server changes): their ratios stay in the table, as reported figures.
    out["2a"] = {"what": "forecast c=64 throughput / batching off", "value": ratio_off, "bound": "reported", "met": None,
                     "detail": f"{s64:.0f} vs {off64:.0f} req/s",
                     "ceiling": _ratio(64 * f["ort_forecast_p50_ms"], f["ort_forecast64_p50_ms"])}
    if forecast.get("triton"):
        t64, t99 = rps(middle(forecast["triton"], 64, rps)), p99(middle(forecast["triton"], 64, p99))
        s99 = p99(middle(forecast["seqserve"], 64, p99))
        out["2b"] = {"what": "forecast c=64 throughput / Triton's", "value": _ratio(s64, t64), "bound": ">= 1.3",
                     "met": s64 >= 1.3 * t64, "detail": f"{s64:.0f} vs {t64:.0f} req/s"}
        out["2c"] = {"what": "forecast c=64 p99 / Triton's", "value": _ratio(s99, t99), "bound": "<= 1", "met": s99 <= t99,
                     "detail": f"{s99:.1f} vs {t99:.1f} ms"}
    cpu = f.get("cpu_ms_per_forecast", {})
    if "seqserve" in cpu:
        peer = f" (Triton {cpu['triton']:.2f} ms)" if "triton" in cpu else ""
        out["2d"] = {"what": "server CPU per forecast at c=64 (ms, all of the server's threads and processes)",
                     "value": cpu["seqserve"], "bound": "<= 1.0", "met": cpu["seqserve"] <= 1.0,
                     "detail": f"{cpu['seqserve']:.2f} ms{peer}"}
    g1, g32 = tokens(middle(generation["seqserve"], 1, tokens)), tokens(middle(generation["seqserve"], 32, tokens))
    ceiling32 = 32 / f["ort_step32_p50_ms"] * 1e3  # tokens/s were the 32-row step all it cost
    out["3a"] = {"what": "generation, 32 streams: tokens/s / graph-only ceiling (32 rows per in-process 32-row step)",
                 "value": _ratio(g32, ceiling32), "bound": ">= 0.4", "met": g32 >= 0.4 * ceiling32,
                 "detail": f"{g32:.0f} vs {ceiling32:.0f} tokens/s ({g32 / g1:.2f}x one stream's {g1:.0f})"}
    one = per_token(middle(generation["seqserve"], 1, per_token))
    out["3b"] = {"what": "one stream's time per token, c=1 (stream time after the first token / 63) / raw ORT step p50",
                 "value": _ratio(one, f["ort_step_p50_ms"]), "bound": "<= 2",
                 "met": one <= 2 * f["ort_step_p50_ms"], "detail": f"{one:.3f} ms vs {f['ort_step_p50_ms']:.3f} ms"}
    early, late = f["token_ms_early"], f["token_ms_late"]
    out["4"] = {"what": f"time per token at 500..{500 + TOKEN_SPAN} / at 10..{10 + TOKEN_SPAN} (single greedy stream)",
                    "value": late / early, "bound": "<= 1.2",
                    "met": late <= 1.2 * early, "detail": f"{late:.3f} vs {early:.3f} ms"}
    t_on, t_off = rps(middle(translation["seqserve"], 16, rps)), rps(middle(translation["seqserve-nobatch"], 16, rps))
    out["5"] = {"what": "translation beam 4, c=16: sentences/s / batching off",
                    "value": _ratio(t_on, t_off), "bound": "reported", "met": None,
                    "detail": f"{t_on:.1f} vs {t_off:.1f} sentences/s",
                    "ceiling": _ratio(16 * f.get("ort_translate_step4_p50_ms", 0), f.get("ort_translate_step64_p50_ms"))}
    ceiling = f.get("ort_translate_sentences_per_s")
    if ceiling:
        out["5b"] = {"what": "translation beam 4, c=16: sentences/s / graph-only ceiling (16 sentences sharing every "
                             "call, only the graph calls timed)",
                     "value": _ratio(t_on, ceiling), "bound": ">= 0.9", "met": t_on >= 0.9 * ceiling,
                     "detail": f"{t_on:.1f} vs {ceiling:.1f} sentences/s"}
    torch64, torch32 = rps(middle(forecast["torch"], 64, rps)), tokens(middle(generation["torch"], 32, tokens))
    out["6a"] = {"what": "forecast c=64 throughput / PyTorch eager server's", "value": _ratio(s64, torch64), "bound": ">= 3",
                     "met": s64 >= 3 * torch64, "detail": f"{s64:.0f} vs {torch64:.0f} req/s"}
    out["6b"] = {"what": "generation c=32 tokens/s / PyTorch eager server's", "value": _ratio(g32, torch32), "bound": ">= 3",
                     "met": g32 >= 3 * torch32, "detail": f"{g32:.0f} vs {torch32:.0f} tokens/s"}
    out["7a"] = {"what": "start-up to SERVING, bundled models (s)", "value": f["startup_s"], "bound": "<= 3",
                     "met": f["startup_s"] <= 3, "detail": "process launch to health SERVING"}
    rss = [m for _, m in run.rss]
    start, end = f["rss_random_lengths_mib"]
    out["7b"] = {"what": "resident memory under c=64 (MiB); growth over the random-length phase", "value": f["rss_c64_mib"],
                     "bound": "reported; flat", "met": abs(end - start) <= 8,
                     "detail": f"{f['rss_c64_mib']:.0f} MiB at c=64; {start:.1f} -> {end:.1f} MiB over the random-length "
                     f"phase; {min(rss):.0f}-{max(rss):.0f} MiB over the run"}
    return {"targets": out}
