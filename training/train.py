"""Task wiring: a run's configuration, each task's data and model, the run itself, and checkpoint models."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.contract import TASKS
from training.loop import FitResult, TrainConfig, fit, init_distributed, seed_everything
from training.rundir import load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """A whole training run: task, data, model hyper-parameters and loop settings (a preset YAML's content)."""

    task: str
    data: Any  # training.data.DataConfig
    model: dict[str, Any]  # models.config_from_dict(task, ...) keys; sizes derived from the data are filled in
    train: TrainConfig

    @classmethod
    def from_dict(cls, d: dict[str, Any], task: str | None = None) -> "RunConfig":
        """Build from a parsed YAML/JSON dict with sections task, data, model, train; raises ValueError."""
        from training.data import DataConfig

        d = dict(d)
        unknown = sorted(set(d) - {"task", "data", "model", "train"})
        if unknown:
            raise ValueError(f"unknown config section(s) {', '.join(unknown)}; valid: task, data, model, train")
        cfg_task = d.get("task", task)
        if task is not None and cfg_task != task:
            raise ValueError(f"config is for task {cfg_task!r}, not {task!r}")
        if cfg_task not in TASKS:
            raise ValueError(f"task {cfg_task!r} is not one of {', '.join(TASKS)}")
        return cls(
            task=cfg_task,
            data=DataConfig.from_dict(d.get("data") or {}, cfg_task),
            model=dict(d.get("model") or {}),
            train=TrainConfig.from_dict(d.get("train") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "data": asdict(self.data), "model": dict(self.model), "train": asdict(self.train)}


@dataclass
class TaskData:
    """What a task run needs besides the model: batches, tokenizers, and sizes derived from the data."""

    train: Any  # Batches
    val: Any  # Batches
    tokenizers: dict[str, Any]  # role -> tokenizers.Tokenizer (bundle roles: text | source, target)
    model_fields: dict[str, Any]  # model config values the data decides (vocab sizes, channels)
    info: dict[str, Any]  # dataset facts for checkpoints and manifests (files + sha256, scaler, columns)


def prepare_data(run: RunConfig, data_dir=None, rank: int = 0, world_size: int = 1) -> TaskData:
    """Load the splits of ``run.data``, build tokenizers on the training split, and batch for this rank."""
    from training import data as D

    cfg, tc = run.data, run.train
    info: dict[str, Any] = {"dataset": cfg.dataset, "files": D.data_hashes(cfg.files(), data_dir)}
    if cfg.dataset == "files":
        from training.data import user

        info["files"] = user.file_hashes(cfg.paths)
    if run.task == "translate":
        from training.vocab import SPECIAL_IDS

        train_pairs = D.translation_pairs(cfg, "train", data_dir)
        src_tok = D.build_tokenizer(cfg.src_tokenizer, [s for s, _ in train_pairs], cfg, cfg.src_lang)
        tgt_tok = D.build_tokenizer(cfg.tgt_tokenizer, [t for _, t in train_pairs], cfg, cfg.tgt_lang)

        def encoded(pairs, limit):
            out = [(D.encode(src_tok, s), D.encode(tgt_tok, t)) for s, t in pairs]
            return [p for p in out if not limit or (0 < len(p[0]) <= limit and len(p[1]) <= limit)]

        collate = D.make_collate_pairs(SPECIAL_IDS["bos"], SPECIAL_IDS["eos"], SPECIAL_IDS["pad"])
        train_enc = encoded(train_pairs, cfg.max_len)
        comma = D.CommaJoin.from_tokenizers(src_tok, tgt_tok) if cfg.concat_pairs and cfg.concat_comma else None
        joined = D.concat_pairs(train_enc, cfg.concat_pairs, cfg.max_len, seed=cfg.seed, comma=comma,
                                comma_share=cfg.concat_comma) if cfg.concat_pairs else []
        train_ds = D.PairDataset(train_enc + joined)
        val_ds = D.PairDataset(encoded(D.translation_pairs(cfg, "val", data_dir), 0))
        info["train_pairs"] = len(train_enc)
        if joined:
            info["concatenated_pairs"] = len(joined)
        return TaskData(
            train=D.LoaderBatches(train_ds, tc.batch_size, collate, seed=tc.seed, rank=rank, world_size=world_size),
            val=D.EvalBatches(val_ds, tc.batch_size, collate, rank, world_size),
            tokenizers={"source": src_tok, "target": tgt_tok},
            model_fields={
                "src_vocab_size": src_tok.get_vocab_size(), "tgt_vocab_size": tgt_tok.get_vocab_size(),
                "pad_id": SPECIAL_IDS["pad"], "bos_id": SPECIAL_IDS["bos"], "eos_id": SPECIAL_IDS["eos"],
                "teacher_forcing": tc.teacher_forcing,
            },
            info=info,
        )
    if run.task == "forecast":
        from training.models import ForecastConfig

        window = int(run.model.get("window", ForecastConfig.window))
        horizon = int(run.model.get("horizon", ForecastConfig.horizon))
        min_history = int(run.model.get("min_history", ForecastConfig.min_history))
        if cfg.dataset == "corpus":
            return _corpus_data(run, window, min_history, horizon, data_dir, info)
        series = D.forecast_series(cfg, window, data_dir, horizon, min_history)
        if cfg.dataset == "files":
            from training.data import user

            info.update(series=series.names, freq=series.freq, interpolated=series.filled,
                        season_length=cfg.season_length or user.seasonality(series.freq))
        train_ds = D.WindowDataset(series.train, window, horizon, cfg.stride)
        val_ds = D.WindowDataset(series.val, window, horizon)
        info.update(scaler=asdict(series.scaler), columns=series.columns, lead=series.lead, train_windows=len(train_ds))
        # a seasonal model (model.seasonal) is given the data's season with every window
        season = max(1, D.season_length(cfg, series.freq)) if run.model.get("seasonal") else 0
        if season:
            info["season_length"] = season
        return TaskData(
            train=D.LoaderBatches(
                train_ds, tc.batch_size, D.CropWindows(min_history, cfg.crop_prob, tc.seed, season),
                seed=tc.seed, rank=rank, world_size=world_size,
            ),
            val=D.EvalBatches(val_ds, tc.batch_size, functools.partial(D.collate_windows, season=season), rank,
                              world_size),
            tokenizers={},
            model_fields={"channels": len(series.columns)},
            info=info,
        )
    if run.task == "recognize":
        return _speech_data(run, data_dir, rank, info)
    train_text = D.lm_text(cfg, "train", data_dir)
    tok = D.build_tokenizer("char", [train_text], cfg)
    ids = torch.tensor(D.encode(tok, train_text), dtype=torch.int64)
    val_ids = torch.tensor(D.encode(tok, D.lm_text(cfg, "val", data_dir)), dtype=torch.int64)
    val_streams = max(1, min(tc.batch_size, len(val_ids) // (world_size * (tc.bptt_len + 1))))
    info["train_tokens"] = len(ids)
    return TaskData(
        train=D.StreamBatches(ids, tc.batch_size, tc.bptt_len, rank, world_size),
        val=D.StreamBatches(val_ids, val_streams, tc.bptt_len, rank, world_size),
        tokenizers={"text": tok},
        model_fields={"vocab_size": tok.get_vocab_size()},
        info=info,
    )


def _corpus_data(run: RunConfig, window: int, min_history: int, horizon: int, data_dir, info: dict[str, Any]) -> TaskData:
    """forecast-global: windows drawn afresh from real series, KernelSynth and TSMixup; val: the real series' ends."""
    from training import data as D
    from training.data import corpus as C

    cfg, tc = run.data, run.train
    splits = C.corpus_splits(cfg, window, horizon, data_dir)
    length = max(512, window + horizon)  # every context length the batches draw must fit a synthetic series
    synthetic = C.kernel_synth(cfg.synthetic_series, length, seed=cfg.seed)
    seasonal = bool(run.model.get("seasonal", False))
    seasons = splits.seasons + [s.season for s in synthetic] if seasonal else None
    train = C.CorpusBatches([s[:, 0] for s in splits.train], [s.values for s in synthetic], window, min_history, horizon,
                            tc.batch_size, cfg.steps_per_epoch, seed=tc.seed, real_share=cfg.real_share,
                            mix_share=cfg.mix_share, seasons=seasons, unknown_season=cfg.unknown_season)
    info.update(series=splits.names, val_windows=len(splits.val), synthetic={"generator": "KernelSynth", "series": cfg.synthetic_series, "length": length,
                                                "seed": cfg.seed},
                real_points=int(sum(len(s) for s in splits.train)),
                files=D.data_hashes(["ETDataset/ETTh1.csv", "ETDataset/ETTm1.csv"], data_dir))
    if seasonal:
        info["frequencies"] = sorted({C.GROUP_FREQ[n.rsplit("(", 1)[1].rstrip(")")] for n in splits.names
                                      if n.rsplit("(", 1)[1].rstrip(")") in C.GROUP_FREQ})
    val = C.fixed_windows([s[:, 0] for s in splits.val], window, horizon, tc.batch_size,
                          splits.val_seasons if seasonal else None)
    return TaskData(train=train, val=C.FixedBatches(val), tokenizers={}, model_fields={"channels": 1}, info=info)


def _speech_data(run: RunConfig, data_dir, rank: int, info: dict[str, Any]) -> TaskData:
    """Digit strings built fresh each step from the train split; val: its single recordings and fixed strings."""
    from training import data as D
    from training.data import speech as S
    from training.features import FeatureExtractor, FeatureSpec

    cfg, tc = run.data, run.train
    spec = FeatureSpec(**run.model["features"]) if "features" in run.model else FeatureSpec()
    features = FeatureExtractor(spec)
    if cfg.dataset == "files":
        return _user_speech_data(run, spec, features, rank, info)
    train, val = D.speech_recordings(cfg, "train", data_dir), D.speech_recordings(cfg, "val", data_dir)
    mean, std = S.feature_stats(train, features, seed=cfg.seed)
    tail_ms = int(run.model.get("tail_ms", 0))
    tail = np.zeros(tail_ms * spec.sample_rate // 1000, np.float32)
    val_items = [(np.concatenate([r.audio, tail]), [r.digit]) for r in val] + S.eval_strings(
        val, cfg.val_utterances, seed=cfg.seed + 1, mix=dataclasses.replace(S.EVAL_MIX, tail_ms=tail_ms))
    info.update(train_recordings=len(train), val_recordings=len(val), holdout=cfg.holdout,
                speakers=sorted({r.speaker for r in train}))
    teacher = None
    if run.model.get("distill_from"):
        teacher = _speech_teacher(run.model["distill_from"], spec, run.model, info)
    if cfg.dataset == "fsdd":  # the README's hash of the whole recordings folder, checked by load_fsdd
        info["files"] = {S.FSDD_DIR: S.FSDD_TREE_SHA256}
    extra = []
    if cfg.tts_share > 0:
        from training.data import tts

        extra = tts.tts_recordings(cfg.tts_takes, cfg.seed)
        info["tts"] = {"share": cfg.tts_share, "recordings": len(extra), "voices": len({r.speaker for r in extra}),
                       "tools": tts.tools(), "recipe": tts.RECIPE}
    return TaskData(
        train=S.SpeechBatches(train, features, tc.batch_size, cfg.steps_per_epoch,
                              mix=dataclasses.replace(S.TRAIN_MIX, tail_ms=tail_ms, single_share=cfg.single_share,
                                                      channel_db=cfg.channel_db),
                              seed=tc.seed, rank=rank,
                              teacher=teacher, extra=extra, extra_share=cfg.tts_share),
        val=S.FixedSpeechBatches(val_items, features, tc.batch_size),
        tokenizers={},
        model_fields={"features": spec.to_dict(), "num_labels": len(S.LABELS), "feature_mean": mean, "feature_std": std},
        info=info,
    )


def _user_speech_data(run: RunConfig, spec: Any, features: Any, rank: int, info: dict[str, Any]) -> TaskData:
    """A user's recordings and transcripts: a character model over the training transcripts' characters."""
    from training.data import speech as S
    from training.data import user_speech as U

    cfg, tc = run.data, run.train
    every = U.read_utterances(cfg.paths, spec.sample_rate, cfg.file_column, cfg.text_column, cfg.lowercase)
    train, val = (U.split_utterances(every, s, cfg.seed, cfg.val_share, cfg.test_share) for s in ("train", "val"))
    labels = U.char_labels(train)
    U.check_labels(val, labels, "val")
    mean, std = U.utterance_stats(train, features, seed=cfg.seed)
    tail = int(run.model.get("tail_ms", 0)) * spec.sample_rate // 1000
    pad = np.zeros(tail, np.float32)
    info.update(train_recordings=len(train), val_recordings=len(val), labels=labels,
                train_seconds=round(sum(len(u.audio) for u in train) / spec.sample_rate, 1))
    return TaskData(
        train=U.UtteranceBatches(train, labels, features, tc.batch_size, cfg.steps_per_epoch, seed=tc.seed, rank=rank,
                                 tail=tail, channel_db=cfg.channel_db),
        val=S.FixedSpeechBatches([(np.concatenate([u.audio, pad]), U.encode(u.text, labels)) for u in val], features,
                                 tc.batch_size, offset=0),
        tokenizers={},
        model_fields={"features": spec.to_dict(), "num_labels": len(labels), "labels": labels, "word_separator": "",
                      "feature_mean": mean, "feature_std": std},
        info=info,
    )


def _speech_teacher(path: str, spec: Any, model_cfg: dict[str, Any], info: dict[str, Any]):
    """The distillation teacher of a speech run: its checkpoint, checked to hear as the student does."""
    from training.data import speech as S
    from training.data.files import file_sha256

    teacher, _ = model_from_checkpoint(path)
    if teacher.task != "recognize" or dict(teacher.config.features) != spec.to_dict() or \
            teacher.config.stack != int(model_cfg.get("stack", 2)):
        raise ValueError(f"model.distill_from {path}: the teacher must be a recognize model with the student's "
                         "features and stack")
    info["teacher"] = {"checkpoint": str(path), "sha256": file_sha256(path), "step": load_checkpoint(path)["step"]}
    return S.Teacher(teacher, int(model_cfg.get("distill_delay", 6)))


def _model_config(run: RunConfig, fields_from_data: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(run.model)
    for key, value in fields_from_data.items():
        if key in cfg and cfg[key] != value:
            raise ValueError(f"model.{key} is {cfg[key]!r} but the data gives {value!r}; drop it from the config")
        cfg[key] = value
    return cfg


def run_task(run: RunConfig, *, data_dir=None, resume: bool = False, on_step=None) -> tuple[nn.Module, FitResult]:
    """Train the model ``run`` describes (under torchrun: data-parallel); returns the model and the result."""
    from training.models import build_model, config_to_dict

    rank, world_size = init_distributed()
    if run.train.num_threads:
        torch.set_num_threads(run.train.num_threads)
    seed_everything(run.train.seed)
    task_data = prepare_data(run, data_dir, rank, world_size)
    seed_everything(run.train.seed)  # same initial weights whatever the data preparation drew
    model = build_model(run.task, _model_config(run, task_data.model_fields))
    meta = {
        "task": run.task,
        "model_config": config_to_dict(model.config),
        "run_config": run.to_dict(),
        "tokenizers": {role: tok.to_str() for role, tok in task_data.tokenizers.items()},
        "data_info": task_data.info,
    }
    log.info("training %s (%s, %d parameters) on %s, world size %d", run.task, model.config.cell,
             sum(p.numel() for p in model.parameters()), run.data.dataset, world_size)
    result = fit(model, task_data.train, task_data.val, run.train, meta=meta, resume=resume, on_step=on_step)
    return model, result


def train_task(task: str, run_config: RunConfig | dict[str, Any], *, data_dir=None, resume: bool = False) -> Path:
    """Train ``task`` as configured; returns the path of the best checkpoint (out_dir/best.pt)."""
    run = run_config if isinstance(run_config, RunConfig) else RunConfig.from_dict(run_config, task)
    if run.task != task:
        raise ValueError(f"config is for task {run.task!r}, not {task!r}")
    _, result = run_task(run, data_dir=data_dir, resume=resume)
    return result.best_path


def model_from_checkpoint(ckpt: dict[str, Any] | str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (in eval mode) and its tokenizers {role: Tokenizer}."""
    from tokenizers import Tokenizer

    from training.models import build_model

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = build_model(ckpt["task"], ckpt["model_config"])
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model, {role: Tokenizer.from_str(s) for role, s in ckpt.get("tokenizers", {}).items()}
