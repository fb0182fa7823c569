"""seqserve-train build: a user's files to a served bundle, in one command.

read and check the data (every problem named before training starts) -> train (progress bar) ->
export (parity-checked) -> evaluate the held-out test part with the task's baselines into the manifest
-> int8 weights where every figure holds -> move the bundle into place as the next version of NAME.
The bundle is assembled in a hidden folder beside the versions (``MODELS/NAME/.build-*``, which the
server's repository scan ignores) and renamed into place in one step, so a running server hot-loads a
whole bundle or nothing; a failed or interrupted build removes its folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.contract import check_name

log = logging.getLogger(__name__)

BUILD_TASKS = ("forecast", "translate", "generate", "recognize")
# The M4 competition's forecast horizons per frequency (minutes: a day's steps, at most 96).
HORIZONS = {"H": 48, "B": 10, "D": 14, "W": 13, "M": 18, "MS": 18, "ME": 18, "Q": 8, "QS": 8, "QE": 8,
            "Y": 6, "YS": 6, "YE": 6, "A": 6, "AS": 6}


@dataclass
class BuildResult:
    bundle: Path
    version: str
    manifest: Any  # service.contract.Manifest
    data: dict[str, Any]  # what was read: files, sizes
    figures: dict[str, Any]  # test figures (int8 if stored so)
    training: dict[str, Any]
    int8: bool
    seconds: dict[str, float] = field(default_factory=dict)


def default_horizon(freq: str) -> int:
    from pandas.tseries.frequencies import to_offset

    from training.data.user import seasonality

    base = to_offset(freq).rule_code.split("-")[0].upper()
    if base in ("MIN", "T", "S"):
        return max(1, min(seasonality(freq), 96))
    horizon = HORIZONS.get(base, 12)
    n = max(1, int(to_offset(freq).n))
    return max(1, horizon // n) if base == "H" else horizon


def forecast_shape(config: dict[str, Any]) -> dict[str, Any]:
    """model.horizon / window / min_history for the series in ``config``'s data, where not set: the
    frequency's horizon, a window of three horizons or seasons (within what the series hold)."""
    from training.data import DataConfig, DataError, user

    cfg = DataConfig.from_dict(config.get("data") or {}, "forecast")
    found = user.load_series_files(cfg.paths, cfg.layout, cfg.id_column, cfg.time_column, cfg.value_column, cfg.freq,
                                   cfg.missing)
    model = config.setdefault("model", {})
    season = cfg.season_length or user.seasonality(found.freq)
    horizon = int(model.get("horizon") or default_horizon(found.freq))
    longest = max(len(v) - sum(user.split_rows(len(v), horizon, cfg.val_share, cfg.test_share)) for v in found.values)
    if longest < horizon + min(horizon, 24) and "window" not in model:
        n = max(len(v) for v in found.values)
        raise DataError(f"the longest series has {n} rows: too few to train and test a model of horizon {horizon} "
                        f"({found.freq} data; val and test parts of at least a horizon each, and a training window of "
                        "history + horizon before them); set model.horizon lower, or bring longer series")
    window = int(model.get("window") or max(1, min(max(3 * horizon, 3 * season, 24), longest - horizon)))
    model.setdefault("horizon", horizon)
    model.setdefault("window", window)
    model.setdefault("min_history", min(window, max(1, min(horizon, season if season > 1 else horizon))))
    parts = [user.split_rows(len(v), horizon, cfg.val_share, cfg.test_share) for v in found.values]
    rows = {"train": sum(len(v) - a - b for v, (a, b) in zip(found.values, parts)),
            "val": sum(a for a, _ in parts), "test": sum(b for _, b in parts)}
    return {"series": len(found.names), "points": int(sum(len(v) for v in found.values)),
            **({"interpolated": found.filled} if found.filled else {}), "rows": rows,
            "freq": found.freq, "season_length": season, "files": found.files}


def check_data(run) -> dict[str, Any]:
    """Read every split of the run's data (raises DataError on the first problem); what was read."""
    from training import data as D

    cfg = run.data
    if run.task == "translate":
        import re

        for key in ("src_lang", "tgt_lang"):
            if not re.fullmatch(r"[a-z]{2,3}", getattr(cfg, key)):
                raise ValueError(f"data.{key} {getattr(cfg, key)!r}: give the language's ISO 639 code, e.g. "
                                 f"--set data.{key}={'de' if key == 'src_lang' else 'en'} (sentence splitting, "
                                 "tokenising and scoring follow it)")
        sizes = {s: len(D.translation_pairs(cfg, s)) for s in ("train", "val", "test")}
        return {"pairs": sizes}
    if run.task == "generate":
        sizes = {s: len(D.lm_text(cfg, s)) for s in ("train", "val", "test")}
        return {"characters": sizes}
    if run.task == "recognize":
        from training.data import user_speech as U
        from training.features import FeatureSpec

        rate = FeatureSpec(**run.model.get("features", {})).sample_rate
        every = U.read_utterances(cfg.paths, rate, cfg.file_column, cfg.text_column, cfg.lowercase)
        parts = {s: U.split_utterances(every, s, cfg.seed, cfg.val_share, cfg.test_share) for s in ("train", "val", "test")}
        labels = U.char_labels(parts["train"])
        for split in ("val", "test"):
            U.check_labels(parts[split], labels, split)
        seconds = {s: round(sum(len(u.audio) for u in p) / rate, 1) for s, p in parts.items()}
        return {"recordings": {s: len(p) for s, p in parts.items()}, "seconds of audio": seconds,
                "labels": f"{len(labels) - 1} characters {''.join(labels[1:])!r}"}
    m = run.model
    D.forecast_series(cfg, int(m["window"]), None, int(m["horizon"]), int(m["min_history"]))  # lengths checked
    return {}


def next_version(family: Path) -> str:
    versions = [int(p.name) for p in family.iterdir() if p.name.isdigit()] if family.is_dir() else []
    return str(max(versions, default=0) + 1)


def build(task: str, paths: Sequence[str], name: str, models_dir: str | os.PathLike = "models", *,
          config: dict[str, Any], out_dir: str | os.PathLike | None = None, int8: bool = True, threads: int = 2,
          description: str = "") -> BuildResult:
    """Train ``config`` (a preset with the user's overrides) on ``paths`` and store the bundle as the next
    version of ``name`` under ``models_dir``. Raises DataError (bad data, before training) or ValueError."""
    from training import evaluate as E
    from training.export import export_checkpoint, portable
    from training.quantize import QuantizeError, quantize_bundle
    from training.train import RunConfig, run_task

    if task not in BUILD_TASKS:
        raise ValueError(f"task {task!r} cannot be built from files yet; one of {', '.join(BUILD_TASKS)}")
    check_name("name", name)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    data = config.setdefault("data", {})
    data["dataset"] = "files"
    data["paths"] = [portable(p) for p in paths]
    config["task"] = task
    shape = forecast_shape(config) if task == "forecast" else {}
    run = RunConfig.from_dict(config, task)
    read = {**shape, **check_data(run)}
    seconds["read"] = time.perf_counter() - t0

    family = Path(models_dir) / name
    version = next_version(family)
    run.train.out_dir = str(out_dir or Path("runs") / f"build-{name}-{version}")
    t0 = time.perf_counter()
    _, fit = run_task(run)
    seconds["train"] = time.perf_counter() - t0

    family.mkdir(parents=True, exist_ok=True)  # removed again below if the build fails
    staging = family / f".build-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        export_checkpoint(fit.best_path, family, name, version,
                          description or f"{task} {run.model.get('cell', '')} trained on {', '.join(data['paths'])}",
                          bundle_dir=staging)
        E.write_evaluation(staging, E.evaluate_bundle(staging, "test", threads=threads))
        if task == "translate":
            E.write_evaluation(staging, E.evaluate_bundle(staging, "test", threads=threads, beam=4))
        seconds["evaluate"] = time.perf_counter() - t0
        stored_int8 = False
        if int8:
            t0 = time.perf_counter()
            try:
                quantize_bundle(staging, None, 0.01, threads)
                stored_int8 = True
            except QuantizeError as err:
                log.warning("weights stay float32: %s", err)
            seconds["quantize"] = time.perf_counter() - t0
        while (family / version).exists():  # another build took it meanwhile: the next one
            version = str(int(version) + 1)
            _set_version(staging, version)
        staging.rename(family / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not any(family.iterdir()):
            family.rmdir()  # the build made it: leave the repository as it was
        raise
    from service.contract import read_manifest

    manifest = read_manifest(family / version)
    figures = {**manifest.evaluation["test"], **({"beam4": manifest.evaluation["test_beam4"]}
                                                 if "test_beam4" in manifest.evaluation else {})}
    training = {"steps": fit.steps, "seconds": round(fit.seconds, 1), "best_step": fit.best_step,
                "best_val_loss": fit.best_val, "stopped_early": fit.stopped_early, "run_dir": run.train.out_dir}
    return BuildResult(family / version, version, manifest, read, figures, training, stored_int8, seconds)


def _set_version(bundle: Path, version: str) -> None:
    import json

    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["version"] = version
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def summary(result: BuildResult) -> str:
    """The table printed at the end of a build."""
    m, f = result.manifest, result.figures
    rows: list[tuple[str, str]] = [("bundle", f"{result.bundle} ({m.task}, {m.cell}, {m.num_layers}x{m.hidden_size})")]
    for key, value in result.data.items():
        if key != "files":
            rows.append((key, ", ".join(f"{k} {v:,}" for k, v in value.items()) if isinstance(value, dict) else str(value)))
    t = result.training
    rows.append(("training", (f"{t['steps']} steps in {t['seconds']:.0f} s, best val loss {t['best_val_loss']:.4f} "
                              f"at step {t['best_step']}{' (early stop)' if t['stopped_early'] else ''}")))
    rows.extend(_figure_rows(m.task, f))
    rows.append(("weights", "int8 (every figure within 1%)" if result.int8 else "float32"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _figure_rows(task: str, f: dict[str, Any]) -> list[tuple[str, str]]:
    if task == "forecast":
        out = [("test MAE", f"{f['mae']:.4f} (repeat-last {f['naive_mae']:.4f}"
                + (f", seasonal naive {f['snaive_mae']:.4f}, season {f['season']})" if "snaive_mae" in f else ")")),
               ("test MSE", f"{f['mse']:.4f} (repeat-last {f['naive_mse']:.4f}"
                + (f", seasonal naive {f['snaive_mse']:.4f})" if "snaive_mse" in f else ")"))]
        if "relative_mae" in f:
            out.append(("relative MAE", f"{f['relative_mae']:.3f} (1.0 = seasonal naive; below is better)"))
        return out + [("windows", f"{f['windows']:,} test windows of horizon {f['horizon']}")]
    if task == "translate":
        out = [("test BLEU", f"{f['bleu']:.2f} greedy (chrF {f['chrf']:.2f}; copying the source: {f['copy_bleu']:.2f})")]
        if "beam4" in f:
            out.append(("test BLEU beam 4", f"{f['beam4']['bleu']:.2f} (chrF {f['beam4']['chrf']:.2f})"))
        return out
    if task == "recognize":
        out = [("test CER", f"{f['cer']:.4f} (character error rate; WER {f['wer']:.4f}, "
                            f"{f['sentence_accuracy']:.1%} of recordings exactly right)")]
        if "stream_cer" in f:
            out.append(("test CER streaming", f"{f['stream_cer']:.4f} (WER {f['stream_wer']:.4f}, 100 ms chunks)"))
        return out
    return [("test bits/char", f"{f['bits_per_char']:.3f} (character frequencies alone: {f['unigram_bits_per_char']:.3f})")]
