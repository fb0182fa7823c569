"""Synthetic hourly series for load generation; numpy only, so that load generators in other
environments (bench/triton, whose venv cannot import the gRPC stubs) share the same inputs."""

from __future__ import annotations

import numpy as np


def synthetic_series(rng: np.random.Generator, length: int, channels: int) -> np.ndarray:
    """(length, channels) hourly-looking series: level + trend + daily and weekly cycles + AR(1) noise."""
    t = np.arange(length, dtype=np.float64)[:, None]
    level = rng.uniform(10.0, 100.0, channels)
    trend = rng.normal(0.0, 0.02, channels) * level
    daily = rng.uniform(0.05, 0.3, channels) * level * np.sin(2 * np.pi * t / 24 + rng.uniform(0, 2 * np.pi, channels))
    weekly = rng.uniform(0.0, 0.1, channels) * level * np.sin(2 * np.pi * t / 168 + rng.uniform(0, 2 * np.pi, channels))
    shocks = rng.normal(0.0, 0.05, (length, channels)) * level
    noise = np.zeros_like(shocks)
    for i in range(length):  # AR(1), phi = 0.7
        noise[i] = shocks[i] + (0.7 * noise[i - 1] if i else 0.0)
    return level + trend * t + daily + weekly + noise
