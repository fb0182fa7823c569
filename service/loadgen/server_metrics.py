"""The server's own figures over a level: its Prometheus histograms scraped before and after, as means."""

from __future__ import annotations

import asyncio
import urllib.request

from service.loadgen.results import ServerStats

# Server-side histograms read from /metrics: report key -> family name.
SERVER_HISTOGRAMS = {
    "queue": "seqserve_queue_duration_seconds",
    "compute": "seqserve_compute_duration_seconds",
    "ttft": "seqserve_time_to_first_token_seconds",
}
# Speech streams: report key -> (family name, the series' "kind" label). The interim latency runs from a
# chunk that completes frames reaching the server to the interim result that covers them being written.
SPEECH_HISTOGRAMS = {
    "interim": ("seqserve_speech_result_latency_seconds", "interim"),
    "final": ("seqserve_speech_result_latency_seconds", "final"),
}


def histogram_totals(exposition: str, model: str = "") -> dict[str, tuple[float, float]]:
    """(sum, count) of each SERVER_HISTOGRAMS and SPEECH_HISTOGRAMS series set in a Prometheus text
    exposition, over all its series (only those labelled ``model`` when given)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted: dict[str, list[tuple[str, str | None]]] = {}  # family -> (key, kind label or None = any)
    for key, name in SERVER_HISTOGRAMS.items():
        wanted.setdefault(name, []).append((key, None))
    for key, (name, kind) in SPEECH_HISTOGRAMS.items():
        wanted.setdefault(name, []).append((key, kind))
    totals = {key: [0.0, 0.0] for key in (*SERVER_HISTOGRAMS, *SPEECH_HISTOGRAMS)}
    for family in text_string_to_metric_families(exposition):
        for key, kind in wanted.get(family.name, ()):
            for sample in family.samples:
                if model and sample.labels.get("model") != model:
                    continue
                if kind is not None and sample.labels.get("kind") != kind:
                    continue
                if sample.name.endswith("_sum"):
                    totals[key][0] += sample.value
                elif sample.name.endswith("_count"):
                    totals[key][1] += sample.value
    return {key: (s, c) for key, (s, c) in totals.items()}


def server_stats(before: str, after: str, model: str = "") -> ServerStats:
    """Mean queue, compute, time-to-first-token and speech interim/final result latency (ms) between
    two scrapes: delta sum / delta count."""
    first, last = histogram_totals(before, model), histogram_totals(after, model)

    def mean_ms(key: str) -> float | None:
        count = last[key][1] - first[key][1]
        return (last[key][0] - first[key][0]) / count * 1000.0 if count > 0 else None

    return ServerStats(queue_ms=mean_ms("queue"), compute_ms=mean_ms("compute"), ttft_ms=mean_ms("ttft"),
                       interim_ms=mean_ms("interim"), final_ms=mean_ms("final"))


async def scrape(metrics_address: str, timeout_s: float = 10.0) -> str:
    """The Prometheus text exposition at http://``metrics_address``/metrics (fetched off the loop)."""

    def fetch() -> str:
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=timeout_s) as reply:
            return reply.read().decode("utf-8")

    return await asyncio.to_thread(fetch)
