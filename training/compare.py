"""The cell comparison: one task, one budget, every cell -- figures side by side with gradient flow.

``compare_cells`` trains the same run configuration once per cell (same data, seed, sizes and step
budget), evaluates each best checkpoint, measures the gradient flow of each cell type, and writes
into ``out_dir``:

- ``cells.csv`` / ``cells.md``: one row per cell -- parameters, steps, training seconds, best
  validation loss, the task's evaluation figures, and the gradient decay ratio at T - t = 50;
- ``val_loss.png``: the validation loss curves of all cells on one plot;
- ``gradient_flow.csv`` / ``gradient_flow.png``: ‖∂L_T/∂h_t‖ against T - t per cell (see
  training/diagnostics.py), for freshly initialised cells with the same forget-gate bias the task
  models use.
"""

from __future__ import annotations

import copy
import csv
import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

# The figure of merit of each task (what the table reports besides the validation loss).
TASK_FIGURES = {
    "forecast": ("mse", "mae", "coverage_10_90", "naive_mse"),
    "generate": ("nats_per_char", "bits_per_char"),
    "translate": ("bleu", "chrf", "bleu_lc"),
}
FLOW_DISTANCE = 50


def compare_cells(
    config: dict[str, Any],
    cells: Sequence[str],
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    split: str = "test",
    max_eval_items: int = 0,
    flow_length: int = 100,
) -> list[dict[str, Any]]:
    """Train ``config`` (a run config dict: task, data, model, train) once per cell; returns the rows."""
    from service.contract import CELLS
    from training.diagnostics import decay_ratio, gradient_flow_report
    from training.evaluate import evaluate_checkpoint
    from training.train import RunConfig, run_task

    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        raise ValueError(f"unknown cell(s) {', '.join(unknown)}; valid: {', '.join(CELLS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = config["task"]
    rows: list[dict[str, Any]] = []
    histories: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        cfg = copy.deepcopy(config)
        cfg.setdefault("model", {})["cell"] = cell
        cfg.setdefault("train", {})["out_dir"] = str(out / cell)
        run = RunConfig.from_dict(cfg, task)
        log.info("cell comparison: training %s", cell)
        model, result = run_task(run, data_dir=data_dir)
        figures = evaluate_checkpoint(result.best_path, split, data_dir, max_eval_items)
        row: dict[str, Any] = {
            "cell": cell,
            "parameters": sum(p.numel() for p in model.parameters()),
            "steps": result.steps,
            "seconds": round(result.seconds, 1),
            "best_val_loss": round(result.best_val, 4),
        }
        row.update({f"{split}_{k}": _round(figures[k]) for k in TASK_FIGURES[task] if k in figures})
        rows.append(row)
        histories[cell] = [h for h in result.history if h.get("split") == "val"]

    forget_bias = float(config.get("model", {}).get("forget_bias", 1.0))
    curves = gradient_flow_report(cells=list(cells), T=flow_length, out_dir=out, forget_bias=forget_bias)
    for row in rows:
        row[f"grad_ratio@{FLOW_DISTANCE}"] = float(f"{decay_ratio(curves[row['cell']], FLOW_DISTANCE):.3g}")

    _write_table(rows, out, task, split, forget_bias)
    _plot_val_loss(histories, out / "val_loss.png", task)
    return rows


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _write_table(rows: list[dict[str, Any]], out: Path, task: str, split: str, forget_bias: float) -> None:
    columns = list(rows[0])
    with (out / "cells.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"Cell comparison, task {task}: same data, seed, sizes and step budget; figures on the {split} split.",
        f"grad_ratio@{FLOW_DISTANCE}: ‖∂L_T/∂h_t‖ at T − t = {FLOW_DISTANCE} over its value at t = T, freshly "
        f"initialised cells, forget-gate bias {forget_bias:g} (see gradient_flow.png).",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    (out / "cells.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _plot_val_loss(histories: dict[str, list[dict[str, Any]]], path: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cell, points in histories.items():
        if points:
            ax.plot([p["step"] for p in points], [p["loss"] for p in points], marker="o", ms=3, label=cell)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation loss")
    ax.set_title(f"{task}: validation loss per cell, same budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
