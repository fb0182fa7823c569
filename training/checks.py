"""Checks every model config shares: positive sizes, a dropout in [0, 1)."""

from __future__ import annotations

from typing import Any


def check_positive(cfg: Any, *keys: str) -> None:
    for key in keys:
        v = getattr(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{type(cfg).__name__}.{key} must be a positive integer, got {v!r}")


def check_dropout(cfg: Any) -> None:
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"{type(cfg).__name__}.dropout {cfg.dropout!r} must be in [0, 1)")
