"""Training loop: AdamW, warmup + cosine LR, clipping, TBPTT, early stopping, checkpoints, resume, DDP."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from training.averaging import WeightAverage
from training.rundir import (
    BEST,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    LAST,
    LOSS_PNG,
    METRICS_JSONL,
    load_checkpoint,
    plot_losses,
    save_checkpoint,
    write_metrics,
)

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "constant")
_RESUME_FREE = ("out_dir", "progress", "num_threads")  # may differ on resume without changing the run


@dataclass
class TrainConfig:
    """How to train; every field has a default that trains a small model sensibly on 2 CPU cores."""

    seed: int = 0  # seeds torch, numpy, random and the data order: same seed -> same weights
    max_epochs: int = 10  # passes over the training data (per process)
    max_steps: int = 0  # optimizer steps; 0 = no limit besides max_epochs
    batch_size: int = 32  # per process; the effective batch is batch_size * world size
    lr: float = 3e-3  # peak learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    beta1: float = 0.9
    beta2: float = 0.999
    clip_norm: float = 1.0  # max global L2 norm of the gradients; 0 = no clipping
    schedule: str = "cosine"  # cosine: linear warmup, cosine decay to lr * min_lr_ratio; constant: warmup only
    warmup_steps: int = 50  # linear warmup from lr / warmup_steps to lr
    min_lr_ratio: float = 0.1  # floor of the cosine decay, as a fraction of lr
    patience: int = 5  # validations without improvement before stopping; 0 = never stop early
    min_delta: float = 0.0  # improvement in val loss that counts
    bptt_len: int = 64  # language model: tokens per truncated-BPTT chunk
    teacher_forcing: float = 1.0  # translation: probability of feeding the true previous token
    eval_every: int = 0  # steps between validations (and checkpoints); 0 = once per epoch
    max_eval_batches: int = 0  # validate on at most this many batches per process; 0 = all
    log_every: int = 10  # steps between train records in metrics.jsonl
    out_dir: str = "runs/run"  # checkpoints, metrics and the loss plot go here (rank 0 writes)
    num_threads: int = 0  # torch.set_num_threads per process; 0 = leave torch's default
    progress: bool = True  # tqdm bar on rank 0 when stderr is a terminal
    ema: float = 0.0  # decay of an exponential moving average of the weights, validated and saved in their
    # place (0 = off; 0.999 averages over ~1,000 steps, with a shorter warm-up average early in the run)

    def validate(self) -> "TrainConfig":
        positive = ("max_epochs", "batch_size", "bptt_len", "log_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)!r}")
        for key in ("max_steps", "warmup_steps", "patience", "eval_every", "max_eval_batches", "num_threads"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key} must be >= 0, got {getattr(self, key)!r}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr!r}")
        if self.clip_norm < 0 or self.weight_decay < 0:
            raise ValueError(f"train.clip_norm {self.clip_norm!r} and weight_decay {self.weight_decay!r} must be >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"train.ema must be in [0, 1), got {self.ema!r}")
        if not 0.0 <= self.teacher_forcing <= 1.0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(
                f"train.teacher_forcing {self.teacher_forcing!r} and min_lr_ratio {self.min_lr_ratio!r} must be in [0, 1]"
            )
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a plain dict; unknown keys raise ValueError naming them and the valid ones."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown train setting(s) {', '.join(unknown)}; valid: {', '.join(known)}")
        kwargs = {}
        for k, v in d.items():
            default = getattr(cls(), k)
            kwargs[k] = type(default)(v) if isinstance(default, (int, float)) and not isinstance(default, bool) else v
        return cls(**kwargs).validate()


class Batches(Protocol):
    """What fit() iterates: batches per epoch in a fixed order for (seed, epoch)."""

    stateful: bool  # True: consecutive batches continue the same streams (TBPTT), state is carried

    def __len__(self) -> int: ...

    def batches(self, epoch: int = 0) -> Iterator[dict[str, Tensor]]: ...


@dataclass
class FitResult:
    best_val: float
    best_step: int
    steps: int
    epochs: int
    stopped_early: bool
    seconds: float
    out_dir: str
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_path(self) -> Path:
        return Path(self.out_dir) / LAST

    @property
    def best_path(self) -> Path:
        return Path(self.out_dir) / BEST


class LossModule(nn.Module):
    """forward(batch, state) -> (loss, new state) for any task model; what DDP wraps."""

    def __init__(self, model: nn.Module, stateful: bool, loss_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.stateful = stateful
        self.loss_kwargs = loss_kwargs or {}

    def forward(self, batch: dict[str, Tensor], state: Any = None) -> tuple[Tensor, Any]:
        if self.stateful:
            return self.model.loss(batch, state, **self.loss_kwargs)
        return self.model.loss(batch, **self.loss_kwargs), None


# ---------------------------------------------------------------- small pieces


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (env WORLD_SIZE > 1; gloo on CPU); returns (rank, world)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return world()


def lr_at(step: int, config: TrainConfig, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (1-based) of ``total_steps``."""
    if config.warmup_steps and step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    span = max(1, total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def grad_norm(parameters) -> float:
    """Global L2 norm of the gradients of ``parameters``."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def batch_weight(batch: dict[str, Tensor]) -> int:
    """How many predicted elements a batch holds: the weight of its mean loss in a validation average."""
    if "targets" in batch:  # LM: (B, T)
        return batch["targets"].numel()
    if "tgt" in batch:  # translation: real target tokens after BOS
        return int((batch["tgt"][:, 1:] != 0).sum())
    if "target" in batch:  # forecast (B, H, C)
        return batch["target"].numel()
    return len(next(iter(batch.values())))


def _detach(state: Any) -> Any:
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return tuple(s.detach() for s in state)


def _rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))


# ---------------------------------------------------------------- the loop


@torch.no_grad()
def evaluate_loss(module: LossModule, data: Batches, max_batches: int = 0) -> tuple[float, int]:
    """Weighted mean validation loss over ``data`` on this process and its weight; state carried when stateful."""
    was_training = module.training
    module.eval()
    total, weight, state = 0.0, 0, None
    for i, batch in enumerate(data.batches(0)):
        if max_batches and i >= max_batches:
            break
        loss, state = module(batch, state)
        w = batch_weight(batch)
        total += float(loss) * w
        weight += w
    module.train(was_training)
    return total, weight


def _reduced_val(module: LossModule, data: Batches, max_batches: int) -> float:
    total, weight = evaluate_loss(module, data, max_batches)
    if world()[1] > 1:
        t = torch.tensor([total, float(weight)], dtype=torch.float64)
        dist.all_reduce(t)
        total, weight = float(t[0]), int(t[1])
    return total / weight if weight else float("nan")


def fit(
    model: nn.Module,
    train_data: Batches,
    val_data: Batches,
    config: TrainConfig,
    *,
    meta: dict[str, Any] | None = None,
    resume: bool = False,
    loss_kwargs: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Train ``model`` (anything with ``loss(batch[, state])``) and return what happened.

    meta: plain-typed description stored in every checkpoint (task, model config, tokenizers ...).
    resume: continue from out_dir/last.pt (same config: the run continues exactly as if never stopped).
    on_step(step, loss): called after every optimizer step (progress hooks; an exception aborts the run).
    In a torchrun process group the model is wrapped in DistributedDataParallel; rank 0 writes files.
    Raises FloatingPointError when the training loss becomes NaN or infinite.
    """
    config.validate()
    rank, world_size = world()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    out_dir = Path(config.out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    stateful = bool(getattr(train_data, "stateful", False))
    module = LossModule(model, stateful, loss_kwargs)
    seed_everything(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay
    )
    steps_per_epoch = len(train_data)
    if steps_per_epoch < 1:
        raise ValueError("training data yields no batch (fewer items than one batch per process?)")
    total_steps = config.max_epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    step, epoch, batch_in_epoch = 0, 0, 0
    best_val, best_step, bad_evals = math.inf, 0, 0
    history: list[dict[str, Any]] = []
    carry: Any = None
    seconds_before = 0.0
    averaged: dict[str, Tensor] | None = None  # a resumed run's weight average
    if resume and (out_dir / LAST).is_file():
        ckpt = load_checkpoint(out_dir / LAST)
        changed = sorted(
            k for k, v in asdict(config).items()
            if k not in _RESUME_FREE and ckpt["train_config"].get(k) != v
        )
        if changed:
            log.warning("resuming with changed train settings %s: the run will not match an uninterrupted one",
                        ", ".join(f"{k} {ckpt['train_config'].get(k)!r} -> {getattr(config, k)!r}" for k in changed))
        # with train.ema, model_state is the average and raw_model_state the weights being trained
        model.load_state_dict(ckpt.get("raw_model_state", ckpt["model_state"]))
        averaged = ckpt["model_state"] if "raw_model_state" in ckpt else None
        optimizer.load_state_dict(ckpt["optimizer_state"])
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        best_val, best_step, bad_evals = ckpt["best_val"], ckpt["best_step"], ckpt["bad_evals"]
        history = list(ckpt["history"])
        carry = ckpt.get("carry_state")
        seconds_before = float(ckpt.get("seconds", 0.0))
        _set_rng_state(ckpt["rng"])
        if rank == 0:
            write_metrics(out_dir, history)  # drop records written after the checkpoint
        log.info("resumed from %s at step %d (epoch %d, batch %d)", out_dir / LAST, step, epoch, batch_in_epoch)
    else:
        if resume:
            log.warning("resume: %s does not exist, starting from scratch", out_dir / LAST)
        if rank == 0:
            write_metrics(out_dir, [])  # a fresh run does not append to an old run's log

    average = WeightAverage(model, config.ema, averaged) if config.ema else None

    runner: nn.Module = module
    if world_size > 1:
        runner = nn.parallel.DistributedDataParallel(module)

    def checkpoint(is_best: bool, raw: dict[str, Tensor] | None = None) -> None:
        """Save last.pt (and best.pt); with an average, model_state is the average and raw its own weights."""
        if rank != 0:
            return
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            **(meta or {}),
            "train_config": asdict(config),
            "model_state": model.state_dict(),
            **({"raw_model_state": raw} if raw is not None else {}),
            "optimizer_state": optimizer.state_dict(),
            "rng": _rng_state(),
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "best_val": best_val,
            "best_step": best_step,
            "bad_evals": bad_evals,
            "history": history,
            "carry_state": _detach(carry),
            "world_size": world_size,
            "seconds": seconds_before + time.perf_counter() - t0,
        }
        save_checkpoint(ckpt, out_dir / LAST)
        if is_best:
            save_checkpoint(ckpt, out_dir / BEST)

    def validate() -> bool:
        """Validate (the weight average, with train.ema), checkpoint; True when early stopping says stop."""
        if average is not None:
            with average.swapped() as raw:
                return _validate(raw)
        return _validate(None)

    def _validate(raw: dict[str, Tensor] | None) -> bool:
        nonlocal best_val, best_step, bad_evals
        val = _reduced_val(module, val_data, config.max_eval_batches)
        improved = val < best_val - config.min_delta
        if improved:
            best_val, best_step, bad_evals = val, step, 0
        else:
            bad_evals += 1
        rec = {"split": "val", "step": step, "epoch": epoch, "loss": val, "best": improved}
        history.append(rec)
        if rank == 0:
            with open(out_dir / METRICS_JSONL, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        checkpoint(improved, raw)
        return bool(config.patience) and bad_evals >= config.patience

    from tqdm import tqdm

    bar = tqdm(
        total=total_steps, initial=step, unit="step", dynamic_ncols=True,
        disable=not (config.progress and rank == 0 and sys.stderr.isatty()),
    )
    t0 = time.perf_counter()
    stopped_early = False
    done = step >= total_steps
    window_loss, window_n, window_gmax, window_clipped, window_post = 0.0, 0, 0.0, 0, 0.0
    module.train()
    while not done and epoch < config.max_epochs:
        if batch_in_epoch >= steps_per_epoch:
            epoch, batch_in_epoch, carry = epoch + 1, 0, None
            continue
        for i, batch in enumerate(train_data.batches(epoch)):
            if i < batch_in_epoch:
                continue  # resumed mid-epoch: these were trained on before the checkpoint
            lr = lr_at(step + 1, config, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss, carry = runner(batch, carry)
            carry = _detach(carry)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss is {loss_value} at step {step + 1} (epoch {epoch}); lower train.lr?")
            loss.backward()
            if config.clip_norm:
                pre = float(nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm))
                post = grad_norm(model.parameters()) if pre > config.clip_norm else pre
            else:
                pre = post = grad_norm(model.parameters())
            optimizer.step()
            step += 1
            if average is not None:
                average.update(step)
            batch_in_epoch = i + 1
            window_loss += loss_value
            window_n += 1
            window_gmax = max(window_gmax, pre)
            window_post = max(window_post, post)
            window_clipped += int(bool(config.clip_norm) and pre > config.clip_norm)
            bar.update(1)
            if step % config.log_every == 0 or step == total_steps:
                rec = {
                    "split": "train", "step": step, "epoch": epoch, "loss": window_loss / window_n, "lr": lr,
                    "grad_norm": window_gmax, "grad_norm_clipped": window_post,
                    "clipped_fraction": window_clipped / window_n,
                    "seconds": round(seconds_before + time.perf_counter() - t0, 3),
                }
                history.append(rec)
                if rank == 0:
                    with open(out_dir / METRICS_JSONL, "a", encoding="utf-8") as f:
                        f.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}")
                window_loss, window_n, window_gmax, window_clipped, window_post = 0.0, 0, 0.0, 0, 0.0
            if on_step is not None:
                on_step(step, loss_value)
            if config.eval_every and step % config.eval_every == 0:
                stopped_early = validate()
            if stopped_early or step >= total_steps:
                break
        last_eval = max((r["step"] for r in history if r["split"] == "val"), default=-1)
        if stopped_early or step >= total_steps:
            done = True
            if last_eval != step:
                validate()  # the final weights get a val figure and a checkpoint
        elif not config.eval_every:
            stopped_early = validate()
            done = stopped_early
    bar.close()
    seconds = seconds_before + time.perf_counter() - t0
    if rank == 0:
        write_metrics(out_dir, history)
        plot_losses(history, out_dir / LOSS_PNG, title=str((meta or {}).get("task", "")))
    if world_size > 1:
        dist.barrier()
    if stopped_early:
        log.info("early stop at step %d: val loss has not improved for %d validations", step, bad_evals)
    return FitResult(
        best_val=best_val, best_step=best_step, steps=step, epochs=epoch + (batch_in_epoch > 0),
        stopped_early=stopped_early, seconds=seconds, out_dir=str(out_dir), history=history,
    )
