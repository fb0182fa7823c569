"""The zero-shot forecasting benchmark: series no model was trained on, scored as Chronos's Benchmark II is.

For every dataset of ``training.data.public_series.BENCHMARK`` and every forecaster: the last
``windows`` non-overlapping horizons of each series are forecast from everything before them (the
context; at most ``MAX_CONTEXT`` = 1,024 points). Per dataset: MASE of the median (each series-window's mean
absolute error over the mean absolute seasonal difference of its context, averaged) and WQL (the
quantile loss summed over quantiles 0.1 .. 0.9, series, windows and steps, over the sum of |y|,
averaged over the nine levels); each divided by seasonal naive's on the same windows; the geometric
mean of those ratios across the datasets, overall and per frequency group. The seasonal period per
frequency is GluonTS's. Forecasters: seasonal naive (its point forecast for every quantile, as Chronos
scores it), statsforecast's AutoETS, AutoTheta and AutoARIMA (quantiles from their 20-80% intervals;
AutoARIMA approximates its fits when a series is longer than 150 points or its season longer than 12,
as R's forecast::auto.arima does by default),
and seqserve bundles run on onnxruntime (their quantiles interpolated to the nine levels).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data.public_series import GROUPS, Dataset, benchmark
from training.data.user import seasonality

log = logging.getLogger(__name__)

LEVELS = tuple(round(0.1 * k, 1) for k in range(1, 10))  # the quantiles WQL is scored on
MAX_CONTEXT = 1024  # every forecaster sees at most this much history (AutoARIMA on 8,760 hourly points takes minutes)
# (contexts, horizon, season) -> (N, 9, horizon) quantile forecasts at LEVELS
Forecaster = Callable[[list[np.ndarray], int, int], np.ndarray]


def seasonal_naive(contexts: list[np.ndarray], horizon: int, season: int) -> np.ndarray:
    out = np.empty((len(contexts), len(LEVELS), horizon))
    for i, y in enumerate(contexts):
        m = season if len(y) >= season else 1
        out[i] = np.resize(y[-m:], horizon)[None, :]
    return out


def statsforecast_model(kind: str) -> Forecaster:
    """AutoETS / AutoTheta / AutoARIMA (statsforecast), quantiles from the 20, 40, 60, 80% intervals."""
    def run(contexts: list[np.ndarray], horizon: int, season: int) -> np.ndarray:
        import pandas as pd
        from statsforecast import StatsForecast
        from statsforecast.models import AutoARIMA, AutoETS, AutoTheta

        if kind == "AutoARIMA":  # approximate (CSS) fits for long or long-season series, as R's auto.arima decides
            model = AutoARIMA(season_length=season,
                              approximation=max(len(c) for c in contexts) > 150 or season > 12)
        else:
            model = {"AutoETS": AutoETS, "AutoTheta": AutoTheta}[kind](season_length=season)
        frame = pd.DataFrame({
            "unique_id": np.repeat(np.arange(len(contexts)), [len(c) for c in contexts]),
            "ds": np.concatenate([np.arange(len(c)) for c in contexts]),
            "y": np.concatenate(contexts),
        })
        fc = StatsForecast(models=[model], freq=1, n_jobs=1).forecast(df=frame, h=horizon, level=[20, 40, 60, 80])
        fc = fc.sort_values(["unique_id", "ds"])
        columns = [f"{kind}-lo-80", f"{kind}-lo-60", f"{kind}-lo-40", f"{kind}-lo-20", kind,
                   f"{kind}-hi-20", f"{kind}-hi-40", f"{kind}-hi-60", f"{kind}-hi-80"]
        q = fc[columns].to_numpy(dtype=np.float64).reshape(len(contexts), horizon, len(LEVELS))
        return np.sort(q, axis=2).transpose(0, 2, 1)
    return run


def bundle_model(bundle_dir: str | Path, threads: int = 1) -> tuple[str, Forecaster]:
    """A forecast bundle's graph on onnxruntime: the last ``window`` points of each context (shorter
    ones as they are, edge-padded up to min_history), horizons beyond the model's continued by feeding
    its median back; its quantiles interpolated linearly to LEVELS (held flat beyond its outermost)."""
    from service.contract import read_manifest
    from training.evaluate import ort_graphs

    bundle_dir = Path(bundle_dir)
    m = read_manifest(bundle_dir)
    if m.task != "forecast" or m.forecast is None:
        raise ValueError(f"{bundle_dir}: a {m.task} bundle, not a forecaster")
    graph = ort_graphs(bundle_dir, m.graphs, threads, m.weights == "int8")["forecast"]
    spec = m.forecast
    levels = list(spec.quantiles)

    def run(contexts: list[np.ndarray], horizon: int, season: int) -> np.ndarray:
        out = np.empty((len(contexts), len(LEVELS), horizon))
        for i, y in enumerate(contexts):
            history = y[-spec.window :]
            if len(history) < spec.min_history:
                history = np.concatenate([np.full(spec.min_history - len(history), history[0]), history])
            steps: list[np.ndarray] = []
            while sum(len(s) for s in steps) < horizon:
                feed = {"window": history.astype(np.float32)[None, :, None]}
                if spec.season_input:
                    feed["season"] = np.array([season], np.int64)
                q = graph(feed)["quantiles"][0, :, 0, :]  # (H, Q)
                steps.append(q)
                median = q[:, levels.index(min(levels, key=lambda x: abs(x - 0.5)))]
                history = np.concatenate([history, median])[-spec.window :]
            q = np.concatenate(steps)[:horizon].astype(np.float64)
            out[i] = np.array([[np.interp(level, levels, row) for row in q] for level in LEVELS])
        return out
    return f"{m.name}/{m.version}", run


@dataclass
class Scores:
    mase: float
    wql: float
    windows: int
    seconds: float


def windows_of(dataset: Dataset, series: list[tuple[str, np.ndarray]]) -> tuple[list[np.ndarray], np.ndarray]:
    """(contexts, targets (N, horizon)) of every series' last ``windows`` horizons."""
    contexts, targets = [], []
    h = dataset.horizon
    for _, y in series:
        for w in range(dataset.windows, 0, -1):
            cut = len(y) - w * h
            if cut < 2:
                continue
            contexts.append(y[max(0, cut - MAX_CONTEXT) : cut])
            targets.append(y[cut : cut + h])
    return contexts, np.array(targets)


def score(contexts: list[np.ndarray], targets: np.ndarray, forecast: np.ndarray, season: int) -> tuple[float, float]:
    """(MASE of the median, WQL over LEVELS) of (N, 9, H) quantile forecasts."""
    median = forecast[:, LEVELS.index(0.5)]
    mases = []
    for ctx, y, f in zip(contexts, targets, median):
        m = season if len(ctx) > season else 1
        scale = np.mean(np.abs(ctx[m:] - ctx[:-m])) if len(ctx) > m else 0.0
        if scale > 0:
            mases.append(np.mean(np.abs(y - f)) / scale)
    levels = np.array(LEVELS)[None, :, None]
    y = targets[:, None, :]
    loss = 2 * np.abs((y - forecast) * ((y <= forecast).astype(np.float64) - levels))
    wql = float(loss.sum(axis=(0, 2)).mean() / np.abs(targets).sum())
    return float(np.mean(mases)) if mases else float("nan"), wql


@dataclass
class Report:
    models: list[str]
    datasets: list[Dataset]
    scores: dict[str, dict[str, Scores]] = field(default_factory=dict)  # dataset -> model -> scores

    def relative(self, model: str, metric: str, group: str = "") -> float:
        """Geometric mean over datasets (of ``group``) of model / seasonal naive."""
        ratios = [getattr(self.scores[d.name][model], metric) / getattr(self.scores[d.name]["seasonal-naive"], metric)
                  for d in self.datasets if not group or d.group == group]
        ratios = [r for r in ratios if math.isfinite(r) and r > 0]
        return float(np.exp(np.mean(np.log(ratios)))) if ratios else float("nan")


def run_benchmark(forecasters: dict[str, Forecaster], datasets: Sequence[str] = (), max_series: int = 0) -> Report:
    chosen = benchmark(list(datasets))
    all_models = {"seasonal-naive": seasonal_naive, **forecasters}
    report = Report(list(all_models), chosen)
    for d in chosen:
        series = d.load()[: max_series or None]
        contexts, targets = windows_of(d, series)
        season = seasonality(d.freq)
        report.scores[d.name] = {}
        for name, fn in all_models.items():
            t0 = time.perf_counter()
            mase, wql = score(contexts, targets, fn(contexts, d.horizon, season), season)
            report.scores[d.name][name] = Scores(mase, wql, len(contexts), time.perf_counter() - t0)
            log.info("%s %s: MASE %.3f WQL %.3f (%d windows, %.1f s)", d.name, name, mase, wql, len(contexts),
                     report.scores[d.name][name].seconds)
    return report


def figures(report: Report, model: str) -> dict:
    """``model``'s figures for its manifest (evaluation["zero_shot"]): relative MASE and WQL overall and
    per frequency group, with what they were measured on."""
    groups = [g for g in GROUPS if any(d.group == g for d in report.datasets)]
    return {
        "split": "zero_shot", "task": "forecast", "benchmark": "seqserve-train zero-shot (Chronos Benchmark II scoring)",
        "relative_mase": round(report.relative(model, "mase"), 4), "relative_wql": round(report.relative(model, "wql"), 4),
        "groups": {g: {"relative_mase": round(report.relative(model, "mase", g), 4),
                       "relative_wql": round(report.relative(model, "wql", g), 4)} for g in groups},
        "datasets": [d.name for d in report.datasets],
        "windows": sum(report.scores[d.name][model].windows for d in report.datasets),
        "source": "onnxruntime",
    }


def markdown(report: Report) -> str:
    groups = [g for g in GROUPS if any(d.group == g for d in report.datasets)]
    head = "| model | relative MASE | relative WQL | " + " | ".join(f"{g} MASE / WQL" for g in groups) + " |"
    lines = [head, "|" + " --- |" * (3 + len(groups))]
    for model in report.models:
        cells = [f"{report.relative(model, 'mase', g):.3f} / {report.relative(model, 'wql', g):.3f}" for g in groups]
        lines.append(f"| {model} | {report.relative(model, 'mase'):.3f} | {report.relative(model, 'wql'):.3f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| dataset | group | series windows | horizon | season | " + " | ".join(
        f"{m} MASE / WQL" for m in report.models) + " |", "|" + " --- |" * (5 + len(report.models))]
    for d in report.datasets:
        s = report.scores[d.name]
        lines.append(f"| {d.name} | {d.group} | {s['seasonal-naive'].windows} | {d.horizon} | {seasonality(d.freq)} | "
                     + " | ".join(f"{s[m].mase:.3f} / {s[m].wql:.3f}" for m in report.models) + " |")
    lines += ["", "Sources:"] + [f"- {d.name}: {d.source}" for d in report.datasets]
    return "\n".join(lines) + "\n"


def write(report: Report, out: str | Path) -> list[Path]:
    """zeroshot.md, zeroshot.csv and zeroshot.png (relative MASE and WQL per frequency group)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zeroshot.md").write_text(markdown(report), encoding="utf-8")
    with open(out / "zeroshot.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "group", "model", "mase", "wql", "windows", "seconds"])
        for d in report.datasets:
            for m, s in report.scores[d.name].items():
                w.writerow([d.name, d.group, m, f"{s.mase:.6f}", f"{s.wql:.6f}", s.windows, f"{s.seconds:.2f}"])
    groups = [g for g in GROUPS if any(d.group == g for d in report.datasets)] + ["overall"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=False)
    width = 0.8 / len(report.models)
    for ax, metric in zip(axes, ("mase", "wql")):
        for k, model in enumerate(report.models):
            values = [report.relative(model, metric, "" if g == "overall" else g) for g in groups]
            ax.bar(np.arange(len(groups)) + k * width, values, width, label=model)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(groups)) + width * (len(report.models) - 1) / 2, groups)
        ax.set_title(f"relative {metric.upper()} (seasonal naive = 1; lower is better)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "zeroshot.png", dpi=110)
    plt.close(fig)
    return [out / "zeroshot.md", out / "zeroshot.csv", out / "zeroshot.png"]
