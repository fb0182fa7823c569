"""Leave-one-speaker-out: the same recipe trained once per held-out speaker, each scored on that speaker alone.

FSDD's standard split shares its six speakers between train and test, so its accuracy says little
about a voice the model never heard. Here fold k trains on the other five speakers (their takes
10-49; 5-9 for early stopping) and is scored on every take of speaker k: single recordings and
connected-digit strings built from them. A fold whose figures exist is not trained again, so an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FIGURES = ("accuracy", "der", "string_accuracy", "stream_accuracy", "stream_der")


def cross_speaker(config: dict[str, Any], out: str | Path, speakers: list[str] | None = None, *, data_dir=None,
                  max_items: int = 0) -> list[dict[str, Any]]:
    """Train and score one fold per speaker of ``config`` (a recognize run config on FSDD); writes
    OUT/SPEAKER/ (the run), OUT/SPEAKER/figures.json, OUT/speakers.csv and OUT/speakers.md. Returns
    the rows (one per fold, then "mean" and "worst")."""
    from training.data.speech import FSDD_SPEAKERS
    from training.evaluate import evaluate_checkpoint
    from training.train import RunConfig, run_task

    if config.get("task") != "recognize" or (config.get("data") or {}).get("dataset") not in ("fsdd", "synthetic"):
        raise ValueError("leave-one-speaker-out needs a recognize config on data.dataset fsdd (or synthetic)")
    out = Path(out)
    speakers = list(speakers or FSDD_SPEAKERS)
    unknown = [s for s in speakers if s not in FSDD_SPEAKERS]
    if unknown:
        raise ValueError(f"speakers {unknown} are not FSDD speakers ({', '.join(FSDD_SPEAKERS)})")
    rows = []
    for speaker in speakers:
        fold = out / speaker
        done = fold / "figures.json"
        if not done.is_file():
            cfg = copy.deepcopy(config)
            cfg["data"]["holdout"] = speaker
            cfg.setdefault("train", {})["out_dir"] = str(fold)
            log.info("fold %s: training on the other speakers", speaker)
            _, result = run_task(RunConfig.from_dict(cfg), data_dir=data_dir, resume=(fold / "last.pt").is_file())
            figures = evaluate_checkpoint(result.best_path, "test", data_dir, max_items)
            figures["train_seconds"] = round(result.seconds, 1)
            done.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        figures = json.loads(done.read_text(encoding="utf-8"))
        rows.append({"speaker": speaker, **{k: figures[k] for k in FIGURES if k in figures},
                     "train_seconds": figures.get("train_seconds", 0.0)})
    keys = [k for k in FIGURES if all(k in r for r in rows)]
    rows.append({"speaker": "mean", **{k: sum(r[k] for r in rows) / len(rows) for k in keys}})
    worst = {k: (max if "der" in k else min)(r[k] for r in rows[:-1]) for k in keys}
    rows.append({"speaker": "worst", **worst})
    _write_tables(out, rows, keys)
    return rows


def _write_tables(out: Path, rows: list[dict[str, Any]], keys: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "speakers.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["speaker", *keys, "train_seconds"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| held-out speaker | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
    for r in rows:
        lines.append(f"| {r['speaker']} | " + " | ".join(f"{r[k]:.4f}" for k in keys) + " |")
    (out / "speakers.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
