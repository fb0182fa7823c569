"""The files of a run directory: checkpoints (format, atomic save, checked load), metrics and the loss plot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "seqserve-checkpoint"
CHECKPOINT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"
METRICS_JSONL, METRICS_CSV, LOSS_PNG = "metrics.jsonl", "metrics.csv", "loss.png"


def save_checkpoint(ckpt: dict[str, Any], path: Path) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True (plain types and tensors only); raises ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a seqserve checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')!r} is not {CHECKPOINT_VERSION}")
    return ckpt


def write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl (a record a line) and metrics.csv (a column per key) with ``history``."""
    with open(out_dir / METRICS_JSONL, "w", encoding="utf-8") as f:
        for rec in history:
            f.write(json.dumps(rec) + "\n")
    keys = sorted({k for rec in history for k in rec})
    with open(out_dir / METRICS_CSV, "w", encoding="utf-8") as f:
        f.write(",".join(keys) + "\n")
        for rec in history:
            f.write(",".join("" if rec.get(k) is None else str(rec[k]) for k in keys) + "\n")


def plot_losses(history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """PNG of train and val loss against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for split, style in (("train", "-"), ("val", "o-")):
        pts = [(r["step"], r["loss"]) for r in history if r.get("split") == split]
        if pts:
            ax.plot(*zip(*pts), style, label=split, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
