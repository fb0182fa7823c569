"""What bench.targets writes: results.csv, targets.json, targets.md (targets and per-system tables)
and the forecast and generation plots."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bench.scoring import FORECAST_LEVELS, Run, middle, rps
from service.loadgen.results import CSV_COLUMNS

log = logging.getLogger(__name__)


SYSTEM_TITLES = {"seqserve": "seqserve", "seqserve-nobatch": "seqserve, batching off", "triton": "Triton (pytriton), same graph",
                 "torch": "PyTorch eager gRPC server", "echo": "no-op echo (floor)",
                 "seqserve (random lengths)": "seqserve, random history lengths"}


def systems_tables(rows: list[dict[str, Any]]) -> str:
    """Markdown tables of every system at every level (the median round by throughput), from
    results.csv rows (strings) or Run.results (numbers)."""
    def num(row: dict[str, Any], column: str) -> float:
        return float(row[column]) if row.get(column) not in (None, "") else float("nan")

    def cells(system: str, endpoint: str) -> dict[int, dict[str, Any]]:
        measured = [r for r in rows if r["system"] == system and r["endpoint"] == endpoint and num(r, "ok") > 0]
        return {level: middle(measured, level, lambda r: num(r, "throughput_rps"))
                for level in sorted({int(r["level"]) for r in measured})}

    lines = ["| system | forecast c=1: req/s, p50 / p99 ms | c=4 | c=16 | c=64 |", "| --- | --- | --- | --- | --- |"]
    for system, title in SYSTEM_TITLES.items():
        got = cells(system, "forecast")
        if got:
            lines.append(f"| {title} | " + " | ".join(
                f"{num(got[c], 'throughput_rps'):,.0f}, {num(got[c], 'latency_p50_ms'):.1f} / {num(got[c], 'latency_p99_ms'):.1f}"
                if c in got else "" for c in FORECAST_LEVELS) + " |")
    lines += ["", "| system | generate_stream, 64 tokens: tokens/s (TTFT p50 ms) |", "| --- | --- |"]
    for system, title in SYSTEM_TITLES.items():
        got = cells(system, "generate_stream")
        if got:
            lines.append(f"| {title} | " + "; ".join(
                f"c={c}: {num(r, 'tokens_per_s'):,.0f} ({num(r, 'ttft_p50_ms'):.1f})" for c, r in got.items()) + " |")
    lines += ["", "| system | translate, beam 4: sentences/s, p50 / p99 ms |", "| --- | --- |"]
    for system, title in SYSTEM_TITLES.items():
        got = cells(system, "translate")
        if got:
            lines.append(f"| {title} | " + "; ".join(
                f"c={c}: {num(r, 'throughput_rps'):,.1f}, {num(r, 'latency_p50_ms'):.1f} / {num(r, 'latency_p99_ms'):.1f}"
                for c, r in got.items()) + " |")
    return "\n".join(lines) + "\n"


def write(run: Run, out: Path, models: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["system", "round", *CSV_COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(run.results)
    (out / "targets.json").write_text(json.dumps(run.figures, indent=2, default=float) + "\n")
    lines = ["| # | target | figures | ratio | bound | met | graph-only ceiling |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, t in run.figures["targets"].items():
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        ceiling = "" if t.get("ceiling") is None else f"{t['ceiling']:.2f}"
        lines.append(f"| {key} | {t['what']} | {t['detail']} | {value} | {t['bound']} | {'reported' if t['met'] is None else 'yes' if t['met'] else '**no**'} "
                     f"| {ceiling} |")
    (out / "targets.md").write_text("\n".join(lines) + "\n\n" + systems_tables(run.results))
    plot(run, out)
    log.info("wrote %s/results.csv, targets.json, targets.md, forecast.png, generation.png (models %s)", out, models)


def plot(run: Run, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in dict.fromkeys(r["system"] for r in run.results):
        measured = [r for r in run.results if r["system"] == system and r["endpoint"] == "forecast"
                    and r["mode"] == "concurrency" and r["latency_p50_ms"]]
        rows = [middle(measured, level, rps) for level in sorted({int(r["level"]) for r in measured})]  # median rounds
        if rows:
            line, = ax.plot([r["throughput_rps"] for r in rows], [r["latency_p99_ms"] for r in rows], "o-", label=f"{system} p99")
            ax.plot([r["throughput_rps"] for r in rows], [r["latency_p50_ms"] for r in rows], "o--", color=line.get_color(),
                    alpha=0.6, label=f"{system} p50")
    ax.set_xlabel("forecasts/s (concurrency 1, 4, 16, 64)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("forecast-etth1: latency against throughput")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "forecast.png", dpi=100)
    plt.close(fig)

    gaps = np.array(run.figures["token_gap_ms"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(np.arange(len(gaps)), gaps, lw=0.8, label="time per token over tokens i..i+10 (median of 5 streams)")
    ax.axhline(run.figures["ort_step_p50_ms"], color="k", ls="--", lw=0.8, label="in-process ORT step p50")
    ax.set_xlabel("token position")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.set_title("generate-shakespeare: time per token along one stream")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "generation.png", dpi=100)
    plt.close(fig)
