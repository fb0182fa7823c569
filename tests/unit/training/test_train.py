"""The training loop: reproducibility, resume, clipping, early stopping, files, and every cell on every task."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from training import data, loop, rundir, train

torch.set_num_threads(1)


class _Points(Dataset):
    """y = sum(x) regression points; sign=-1 flips the targets (a val set the model can only get worse on)."""

    def __init__(self, n: int, seed: int, sign: float = 1.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = sign * self.x.sum(1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def _collate(items):
    return {"x": torch.stack([a for a, _ in items]), "target": torch.stack([b for _, b in items])}


class _Toy(nn.Module):
    """A throwaway model with dropout, so the RNG matters to the result."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Tanh(), nn.Linear(16, 1))
        self.scale = scale

    def loss(self, batch):
        return self.scale * F.mse_loss(self.net(batch["x"]), batch["target"])


def _fit(tmp_path, name="run", *, val_sign=1.0, model=None, on_step=None, resume=False, **overrides):
    cfg = dict(seed=3, max_epochs=3, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=4, log_every=1,
               out_dir=str(tmp_path / name), progress=False)
    cfg.update(overrides)
    config = loop.TrainConfig(**cfg)
    torch.manual_seed(0)
    model = model or _Toy()
    tr = data.LoaderBatches(_Points(64, 0), config.batch_size, _collate, seed=config.seed)
    va = data.EvalBatches(_Points(32, 1, val_sign), 16, _collate)
    result = loop.fit(model, tr, va, config, meta={"task": "toy", "model_config": {"hidden": 16}},
                       resume=resume, on_step=on_step)
    return model, result


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_gives_identical_weights_other_seed_does_not(tmp_path):
    a, ra = _fit(tmp_path, "a")
    b, rb = _fit(tmp_path, "b")
    c, _ = _fit(tmp_path, "c", seed=4)
    assert ra.steps == 24 and _same_weights(a, b)
    assert not _same_weights(a, c)
    assert [r["loss"] for r in ra.history] == [r["loss"] for r in rb.history]


def test_resume_after_a_crash_continues_identically(tmp_path):
    full, full_result = _fit(tmp_path, "full")

    def crash(step, loss):
        if step == 10:
            raise KeyboardInterrupt  # as if the process were stopped between checkpoints (step 8)

    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, "resumed", on_step=crash)
    assert rundir.load_checkpoint(tmp_path / "resumed" / rundir.LAST)["step"] == 8
    resumed, result = _fit(tmp_path, "resumed", resume=True)
    assert result.steps == full_result.steps and _same_weights(full, resumed)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(result.history) == strip(full_result.history)
    lines = (tmp_path / "resumed" / rundir.METRICS_JSONL).read_text().splitlines()
    assert strip([json.loads(x) for x in lines]) == strip(full_result.history)


def test_checkpoint_loads_with_weights_only_and_describes_itself(tmp_path):
    model, result = _fit(tmp_path)
    for name in (rundir.LAST, rundir.BEST):
        ckpt = torch.load(tmp_path / "run" / name, weights_only=True)
        assert ckpt["format"] == rundir.CHECKPOINT_FORMAT
        assert ckpt["task"] == "toy" and ckpt["model_config"] == {"hidden": 16}
        assert ckpt["train_config"]["batch_size"] == 8 and ckpt["train_config"]["seed"] == 3
    last = rundir.load_checkpoint(tmp_path / "run" / rundir.LAST)
    best = rundir.load_checkpoint(tmp_path / "run" / rundir.BEST)
    assert last["step"] == result.steps and best["step"] == result.best_step
    assert math.isclose(best["best_val"], min(r["loss"] for r in result.history if r["split"] == "val"))
    fresh = _Toy()
    fresh.load_state_dict(last["model_state"])
    assert _same_weights(fresh, model)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        rundir.load_checkpoint(tmp_path / "junk.pt")


def test_gradient_clipping_bounds_the_norm(tmp_path):
    _, result = _fit(tmp_path, model=_Toy(scale=1e3), clip_norm=0.5, max_epochs=1)
    recs = [r for r in result.history if r["split"] == "train"]
    assert max(r["grad_norm"] for r in recs) > 10 * 0.5  # clipping had work to do
    assert all(r["grad_norm_clipped"] <= 0.5 * (1 + 1e-4) for r in recs)
    assert all(r["clipped_fraction"] == 1.0 for r in recs)
    _, unclipped = _fit(tmp_path, "free", model=_Toy(scale=1e3), clip_norm=0.0, max_epochs=1)
    assert max(r["grad_norm_clipped"] for r in unclipped.history if r["split"] == "train") > 5


def test_early_stopping_when_val_gets_worse(tmp_path):
    _, result = _fit(tmp_path, val_sign=-1.0, max_epochs=20, patience=2, eval_every=2)
    assert result.stopped_early
    assert result.steps < 20 * 8
    vals = [r for r in result.history if r["split"] == "val"]
    assert [r["best"] for r in vals[-2:]] == [False, False]
    assert rundir.load_checkpoint(tmp_path / "run" / rundir.BEST)["step"] == result.best_step < result.steps


def test_writes_metrics_csv_and_png(tmp_path):
    _, result = _fit(tmp_path)
    out = tmp_path / "run"
    assert (out / rundir.LOSS_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(x) for x in (out / rundir.METRICS_JSONL).read_text().splitlines()]
    assert {r["split"] for r in lines} == {"train", "val"} and len(lines) == len(result.history)
    csv_lines = (out / rundir.METRICS_CSV).read_text().splitlines()
    assert {"split", "step", "loss", "lr", "grad_norm"} <= set(csv_lines[0].split(",")) and len(csv_lines) == len(lines) + 1
    train_losses = [r["loss"] for r in lines if r["split"] == "train"]
    assert sum(train_losses[-4:]) < sum(train_losses[:4])


def test_lr_schedule_warms_up_then_decays():
    cfg = loop.TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [loop.lr_at(s, cfg, 100) for s in range(1, 101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(0.1)


def test_weight_average_is_what_is_validated_and_saved(tmp_path):
    decay = 0.9
    seen: list[dict[str, torch.Tensor]] = []  # the weights after every step
    torch.manual_seed(0)
    model = _Toy()
    model, result = _fit(tmp_path, "ema", ema=decay, model=model,
                         on_step=lambda step, loss: seen.append({k: v.clone() for k, v in model.state_dict().items()}))
    # the average, recomputed from the weights after every step with the warm-up decay
    torch.manual_seed(0)
    avg = {k: v.clone() for k, v in _Toy().state_dict().items()}  # _fit's initial weights (seed 0)
    for t, w in enumerate(seen, start=1):
        d = min(decay, (1 + t) / (10 + t))
        avg = {k: d * avg[k] + (1 - d) * w[k] for k in avg}
    last = rundir.load_checkpoint(tmp_path / "ema" / rundir.LAST)
    assert last["train_config"]["ema"] == decay and last["step"] == len(seen)
    assert all(torch.allclose(last["model_state"][k], avg[k], atol=1e-6) for k in avg)
    assert all(torch.equal(last["raw_model_state"][k], seen[-1][k]) for k in avg)
    assert all(torch.equal(model.state_dict()[k], seen[-1][k]) for k in avg)  # the model keeps its own weights
    assert not all(torch.allclose(avg[k], seen[-1][k]) for k in avg)
    # the val loss recorded is the saved average's
    va = data.EvalBatches(_Points(32, 1), 16, _collate)
    scored = _Toy()
    scored.load_state_dict(last["model_state"])
    total, weight = loop.evaluate_loss(loop.LossModule(scored, False), va)
    assert result.history[-1]["split"] == "val" and math.isclose(result.history[-1]["loss"], total / weight, rel_tol=1e-6)


def test_resume_with_weight_average_continues_identically(tmp_path):
    full, full_result = _fit(tmp_path, "full", ema=0.9)

    def crash(step, loss):
        if step == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, "resumed", on_step=crash, ema=0.9)
    resumed, result = _fit(tmp_path, "resumed", resume=True, ema=0.9)
    assert _same_weights(full, resumed)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(result.history) == strip(full_result.history)
    a = rundir.load_checkpoint(tmp_path / "full" / rundir.BEST)["model_state"]
    b = rundir.load_checkpoint(tmp_path / "resumed" / rundir.BEST)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="train.batch_size must be >= 1, got 0"):
        loop.TrainConfig(batch_size=0).validate()
    with pytest.raises(ValueError, match="unknown train setting.*lr_max"):
        loop.TrainConfig.from_dict({"lr_max": 1})
    assert loop.TrainConfig.from_dict({"lr": "3e-3"}).lr == 0.003
    with pytest.raises(ValueError, match=r"train.ema must be in \[0, 1\), got 1.0"):
        loop.TrainConfig(ema=1.0).validate()


# ---------------------------------------------------------------- every cell on every task

_TINY = {
    "translate": {
        "data": {"num_examples": 64, "min_freq": 1, "max_len": 8},
        "model": {"embed_size": 8, "hidden_size": 12, "attention_size": 8, "dropout": 0.0},
    },
    "forecast": {
        "data": {"num_series": 6, "series_length": 60},
        "model": {"window": 16, "min_history": 4, "horizon": 4, "hidden_size": 12, "num_layers": 1},
    },
    "generate": {"data": {"repeats": 20}, "model": {"embed_size": 8, "hidden_size": 16, "num_layers": 2, "dropout": 0.0}},
}
CELLS = ("rnn", "lstm", "gru", "peephole", "coupled")


class _Repeat:
    """The same batch ``n`` times per epoch: the loop must drive its loss down."""

    def __init__(self, batch, n: int, stateful: bool) -> None:
        self.batch, self.n, self.stateful = batch, n, stateful

    def __len__(self) -> int:
        return self.n

    def batches(self, epoch: int = 0):
        return iter([self.batch] * self.n)


@pytest.fixture(scope="module")
def task_batches():
    """One real training batch per task, from the real data pipeline."""
    out = {}
    for task, cfg in _TINY.items():
        run = train.RunConfig.from_dict({"task": task, **cfg, "train": {"batch_size": 8, "bptt_len": 12}})
        td = train.prepare_data(run)
        out[task] = (run, td, next(iter(td.train.batches(0))))
    return out


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("task", ["translate", "forecast", "generate"])
def test_every_cell_trains_on_every_task(task, cell, task_batches, tmp_path):
    from training.models import build_model

    run, td, batch = task_batches[task]
    torch.manual_seed(0)
    model = build_model(task, train._model_config(run, td.model_fields) | {"cell": cell})
    stateful = task == "generate"
    config = loop.TrainConfig(max_epochs=1, lr=2e-2, warmup_steps=0, schedule="constant", log_every=1,
                               out_dir=str(tmp_path), progress=False, patience=0)
    result = loop.fit(model, _Repeat(batch, 8, stateful), _Repeat(batch, 1, stateful), config, meta={"task": task})
    losses = [r["loss"] for r in result.history if r["split"] == "train"]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.9 * losses[0], losses
    assert rundir.load_checkpoint(tmp_path / rundir.LAST)["step"] == 8


def _lm_run(tmp_path, name, **train_overrides):
    cfg = {
        "task": "generate",
        "data": {"repeats": 40},
        "model": {"embed_size": 8, "hidden_size": 16, "num_layers": 1, "dropout": 0.3},
        "train": {"batch_size": 4, "bptt_len": 16, "max_steps": 9, "eval_every": 3, "log_every": 1,
                  "warmup_steps": 2, "out_dir": str(tmp_path / name), "progress": False, **train_overrides},
    }
    return train.RunConfig.from_dict(cfg)


def test_task_run_is_reproducible_and_resumes_carried_state(tmp_path):
    """A real LM run (dropout, TBPTT state carried between chunks) resumed mid-epoch ends identical."""
    a, ra = train.run_task(_lm_run(tmp_path, "a"))
    b, _ = train.run_task(_lm_run(tmp_path, "b"))
    assert _same_weights(a, b)

    def crash(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.run_task(_lm_run(tmp_path, "c"), on_step=crash)
    ckpt = rundir.load_checkpoint(tmp_path / "c" / rundir.LAST)
    assert ckpt["step"] == 3 and ckpt["carry_state"] is not None and 0 < ckpt["batch_in_epoch"]
    c, rc = train.run_task(_lm_run(tmp_path, "c"), resume=True)
    assert rc.steps == ra.steps == 9 and _same_weights(a, c)
    model, toks = train.model_from_checkpoint(tmp_path / "c" / rundir.LAST)
    assert _same_weights(model, c) and set(toks) == {"text"}
