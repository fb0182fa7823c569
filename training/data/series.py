"""Forecasting data: ETT with the Informer split, synthetic series, scaling, windows and window batches."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from training.data.files import DataError, check_split, data_file

ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
ETT_ROWS_PER_DAY = {"ETTh1": 24, "ETTm1": 96}  # hourly / 15-minute rows


@dataclass
class Scaler:
    """StandardScaler (population std) fitted on the training rows only."""

    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, x: np.ndarray) -> "Scaler":  # x (N, C)
        std = x.std(axis=0)
        return cls(mean=x.mean(axis=0).tolist(), std=np.where(std > 0, std, 1.0).tolist())

    def transform(self, x: np.ndarray) -> np.ndarray:  # (..., C) -> (..., C) float32
        return ((x - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return (x * np.asarray(self.std) + np.asarray(self.mean)).astype(np.float32)


@dataclass
class SeriesSplits:
    """Standardised series per split; val/test start ``lead`` rows early so windows cover the split."""

    train: list[np.ndarray]  # each (N, C) float32
    val: list[np.ndarray]
    test: list[np.ndarray]
    scaler: Scaler
    columns: list[str]
    lead: int = 0  # rows of history prepended to val/test
    files: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # one per series (a user's files)
    freq: str = ""  # pandas alias, when known
    filled: int = 0  # missing values interpolated
    seasons: list[int] = field(default_factory=list)  # steps per season of each series, when known
    val_seasons: list[int] = field(default_factory=list)  # of each val series, where val has other series than train

    def split(self, name: str) -> list[np.ndarray]:
        return getattr(self, check_split(name))


def ett_borders(name: str) -> tuple[int, int, int]:
    """Row counts of the 12/4/4 months of 30 days: (train, val, test), e.g. ETTh1 (8640, 2880, 2880)."""
    if name not in ETT_ROWS_PER_DAY:
        raise ValueError(f"ETT dataset {name!r} is not one of {', '.join(ETT_ROWS_PER_DAY)}")
    month = 30 * ETT_ROWS_PER_DAY[name]
    return 12 * month, 4 * month, 4 * month


def load_ett(name: str = "ETTh1", features: str = "S", seq_len: int = 96, data_dir: str | os.PathLike | None = None) -> SeriesSplits:
    """ETTh1/ETTm1 with the Informer split and a train-only StandardScaler.

    features "S": the OT column only (C=1); "M": all 7 channels. Val/test series start ``seq_len`` rows
    before the split, so the first target of the first window is the split's first row.
    """
    if features not in ("S", "M"):
        raise ValueError(f"features {features!r} is not one of S (OT only), M (all channels)")
    n_train, n_val, n_test = ett_borders(name)
    if not 1 <= seq_len <= n_train:
        raise ValueError(f"seq_len {seq_len} must be in [1, {n_train}]")
    rel = f"ETDataset/{name}.csv"
    with open(data_file(rel, data_dir), encoding="utf-8") as f:
        header = next(csv.reader(f))
        rows = np.loadtxt(f, delimiter=",", usecols=range(1, len(header)), dtype=np.float64)  # (N, 7)
    if tuple(header[1:]) != ETT_COLUMNS:
        raise DataError(f"{rel}: columns {header[1:]} are not {list(ETT_COLUMNS)}")
    columns = list(ETT_COLUMNS) if features == "M" else ["OT"]
    values = rows if features == "M" else rows[:, -1:]
    scaler = Scaler.fit(values[:n_train])
    z = scaler.transform(values)
    a, b, c = n_train, n_train + n_val, n_train + n_val + n_test
    return SeriesSplits(
        train=[z[:a]], val=[z[a - seq_len : b]], test=[z[b - seq_len : c]],
        scaler=scaler, columns=columns, lead=seq_len, files=[rel],
    )


def synthetic_series(
    num_series: int = 32, length: int = 400, channels: int = 1, seed: int = 0, noise: float = 0.1
) -> list[np.ndarray]:
    """Noisy sines with random period, phase, scale and offset: num_series arrays of (length, C) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)[:, None]  # (L, 1)
    out = []
    for _ in range(num_series):
        period = rng.uniform(12, 48, size=channels)
        phase = rng.uniform(0, 2 * np.pi, size=channels)
        scale = rng.uniform(0.5, 5.0, size=channels)
        offset = rng.uniform(-10, 10, size=channels)
        clean = np.sin(2 * np.pi * t / period + phase)  # (L, C)
        out.append((offset + scale * (clean + noise * rng.standard_normal((length, channels)))).astype(np.float32))
    return out


def synthetic_forecast(
    num_series: int = 48, length: int = 400, channels: int = 1, seed: int = 0, noise: float = 0.1
) -> SeriesSplits:
    """Synthetic series split 80/10/10 by series (whole series per split), standardised per series.

    The forecaster normalises each window itself; per-series standardisation here just keeps the
    figures on one scale. The scaler recorded is the identity.
    """
    series = synthetic_series(num_series, length, channels, seed, noise)
    z = [((s - s.mean(0)) / s.std(0)).astype(np.float32) for s in series]
    n_val = max(1, num_series // 10)
    n_train = num_series - 2 * n_val
    if n_train < 1:
        raise ValueError(f"num_series {num_series} is too small for a train/val/test split (need >= 3)")
    return SeriesSplits(
        train=z[:n_train], val=z[n_train : n_train + n_val], test=z[n_train + n_val :],
        scaler=Scaler([0.0] * channels, [1.0] * channels), columns=[f"x{i}" for i in range(channels)],
    )


def user_forecast(cfg, window: int, horizon: int, min_history: int) -> SeriesSplits:
    """A user's series (training.data.user.load_series_files), each split by time and standardised
    with its own training part (the forecaster normalises every window itself, so a served model takes
    raw values; this keeps the figures of series of any scale on one). The scaler recorded is the identity."""
    from training.data import user

    found = user.load_series_files(cfg.paths, cfg.layout, cfg.id_column, cfg.time_column, cfg.value_column, cfg.freq,
                                   cfg.missing)
    user.check_lengths(found, window, min_history, horizon, cfg.val_share, cfg.test_share)
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for v in found.values:
        n_val, n_test = user.split_rows(len(v), horizon, cfg.val_share, cfg.test_share)
        a, b = len(v) - n_val - n_test, len(v) - n_test
        std = v[:a].std()
        z = ((v - v[:a].mean()) / (std if std > 0 else 1.0)).astype(np.float32)[:, None]
        splits["train"].append(z[:a])
        splits["val"].append(z[max(0, a - window) : b])
        splits["test"].append(z[max(0, b - window) :])
    return SeriesSplits(**splits, scaler=Scaler([0.0], [1.0]), columns=["y"], lead=window, files=found.files,
                        names=found.names, freq=found.freq, filled=found.filled)


class WindowDataset(Dataset):
    """Sliding windows over one or more series: item i -> window (T, C) and the next H rows (H, C)."""

    def __init__(self, series: Sequence[np.ndarray], seq_len: int, horizon: int, stride: int = 1) -> None:
        if seq_len < 1 or horizon < 1 or stride < 1:
            raise ValueError(f"seq_len {seq_len}, horizon {horizon}, stride {stride} must all be >= 1")
        self.series = [torch.as_tensor(np.ascontiguousarray(s), dtype=torch.float32) for s in series]
        self.seq_len, self.horizon, self.stride = seq_len, horizon, stride
        self.index: list[tuple[int, int]] = []  # (series, start)
        for k, s in enumerate(self.series):
            n = (len(s) - seq_len - horizon) // stride + 1  # Informer: len - seq_len - pred_len + 1
            self.index.extend((k, i * stride) for i in range(max(0, n)))
        if not self.index:
            raise ValueError(f"no window of seq_len {seq_len} + horizon {horizon} fits the series")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        k, s = self.index[i]
        x = self.series[k]
        return {"window": x[s : s + self.seq_len], "target": x[s + self.seq_len : s + self.seq_len + self.horizon]}


def collate_windows(items: list[dict[str, Tensor]], season: int = 0) -> dict[str, Tensor]:
    """Stack windows: window (B, T, C) float32, target (B, H, C) float32; with ``season`` > 0 also
    season (B,) int64 (a seasonal model's input: every window of one dataset shares its season)."""
    batch = {k: torch.stack([it[k] for it in items]) for k in ("window", "target")}
    if season:
        batch["season"] = torch.full((len(items),), season, dtype=torch.int64)
    return batch


class CropWindows:
    """collate_windows, then with probability ``prob`` keep only the most recent L steps of every
    window of the batch, L uniform in [min_len, T]: the model learns to forecast from any history
    the service accepts (min_history .. window), not only from full windows. Seeded per epoch."""

    def __init__(self, min_len: int, prob: float, seed: int = 0, season: int = 0) -> None:
        self.min_len, self.prob, self.seed, self.season = min_len, prob, seed, season
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self._gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def __call__(self, items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        batch = collate_windows(items, self.season)
        steps = batch["window"].shape[1]
        if self.prob > 0 and steps > self.min_len and torch.rand((), generator=self._gen) < self.prob:
            keep = int(torch.randint(self.min_len, steps + 1, (), generator=self._gen))
            batch["window"] = batch["window"][:, steps - keep :].contiguous()
        return batch
