"""Reports of benchmark results: the text table, the CSV file and the latency/throughput plot."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from service.loadgen.config import SPEECH_ENDPOINTS
from service.loadgen.results import CSV_COLUMNS, LevelResult
from service.loadgen.speech import SYNTHETIC

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

# The recognize endpoints' own table: audio seconds, x real time, chunk-to-interim and final latency.
SPEECH_TABLE = (
    ("ENDPOINT", "endpoint", 16, "s"), ("LOAD", "label", 9, "s"), ("OK", "ok", 6, "d"),
    ("ERR", "errors", 5, "d"), ("REQ/S", "throughput_rps", 8, ".1f"), ("AUDIO_S", "audio_s", 9, ".1f"),
    ("xRT", "audio_x_realtime", 8, ".1f"),
    ("MEAN", "latency_mean_ms", 8, ".1f"), ("P50", "latency_p50_ms", 8, ".1f"), ("P99", "latency_p99_ms", 8, ".1f"),
    ("CHUNKS", "chunks", 7, "d"), ("CHK50", "chunk_p50_ms", 7, ".1f"), ("CHK99", "chunk_p99_ms", 7, ".1f"),
    ("FIN50", "final_p50_ms", 7, ".1f"), ("FIN99", "final_p99_ms", 7, ".1f"), ("LAG99", "send_lag_p99_ms", 6, ".1f"),
    ("S.QUEUE", "server_queue_ms", 8, ".3f"), ("S.COMP", "server_compute_ms", 8, ".3f"),
    ("S.INTERIM", "server_interim_ms", 9, ".1f"), ("S.FINAL", "server_final_ms", 8, ".1f"),
)


def _columns(endpoint: str) -> tuple[tuple[str, str, int, str], ...]:
    return SPEECH_TABLE if endpoint in SPEECH_ENDPOINTS else TABLE


def table_header(endpoint: str = "") -> str:
    """The title line of the text table (latencies in ms); the recognize endpoints have their own."""
    return "  ".join(title.rjust(width) if i > 1 else title.ljust(width)
                     for i, (title, _, width, _) in enumerate(_columns(endpoint)))


def table_row(result: LevelResult) -> str:
    """One text-table line (of the table ``table_header(result.endpoint)`` heads); '-' where a figure
    does not apply, plus the error codes when any."""
    row = {**result.row(), "label": result.load.label}
    cells = []
    for i, (_, key, width, fmt) in enumerate(_columns(result.endpoint)):
        value = row[key]
        text = "-" if value is None else format(value, fmt)
        cells.append(text.ljust(width) if i < 2 else text.rjust(width))
    line = "  ".join(cells)
    if result.errors:
        line += f"  [{row['error_codes']}]"
    if result.dropped:
        line += f"  [dropped {result.dropped}]"
    if result.audio_source == SYNTHETIC:
        line += "  [synthetic audio: no FSDD recordings]"
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
        return "--plot needs matplotlib, which the serving install does not include: pip install matplotlib"
    return None


def write_plot(path: Path, results: Sequence[LevelResult]) -> None:
    """Latency (p50 solid, p99 dashed) against throughput, one panel per endpoint, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    endpoints = list(dict.fromkeys(r.endpoint for r in results))
    fig, axes = plt.subplots(1, len(endpoints), figsize=(4.5 * len(endpoints), 4), squeeze=False)
    for ax, endpoint in zip(axes[0], endpoints, strict=True):
        # The recognize endpoints against audio seconds per second; a stream's latency is its chunks'.
        speech, chunked = endpoint in SPEECH_ENDPOINTS, endpoint == "recognize_stream"

        def x_of(r: LevelResult) -> float:
            return (r.audio_x_realtime or 0.0) if speech else r.throughput_rps

        def y_of(r: LevelResult) -> dict[str, float | None]:
            return r.chunk_ms if chunked else r.latency_ms

        for mode, marker in (("concurrency", "o"), ("rate", "s")):
            points = sorted((r for r in results if r.endpoint == endpoint and r.load.mode == mode
                             and y_of(r)["p50"] is not None), key=x_of)
            if not points:
                continue
            x = [x_of(r) for r in points]
            for key, style in (("p50", "-"), ("p99", "--")):
                ax.plot(x, [y_of(r)[key] for r in points], style, marker=marker, label=f"{key} ({mode})")
            for r in points:
                ax.annotate(r.load.label, (x_of(r), y_of(r)["p99"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_title(endpoint)
        ax.set_xlabel("audio seconds per second (x real time)" if speech else "throughput (req/s)")
        ax.set_ylabel("chunk-to-interim latency (ms)" if chunked else "latency (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
