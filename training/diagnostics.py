"""Vanishing gradients, measured: ‖∂L_T/∂h_t‖ against the distance T − t for each cell (THEORY.md, BPTT)."""

from __future__ import annotations

import argparse
import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.contract import CELLS
from training.cells import StackedRNN, set_forget_bias

log = logging.getLogger(__name__)

CSV_FILE = "gradient_flow.csv"
PNG_FILE = "gradient_flow.png"
CSV_COLUMNS = ("cell", "distance", "grad_norm", "grad_norm_relative")


# --------------------------------------------------------------------------- synthetic task
def first_bit_task(batch: int, length: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The "recall the first bit" long-dependency task.

    x (B, T, 1): random ±1 bits; y (B,) int64: the class of the FIRST bit (1 for +1, 0 for −1).
    Read at the last step, the answer depends only on the input T − 1 steps back; every later bit is
    noise, so a model can solve it only by carrying information across the whole sequence.
    """
    if batch < 1 or length < 1:
        raise ValueError(f"batch {batch} and length {length} must both be >= 1")
    bits = torch.randint(0, 2, (batch, length, 1), generator=generator)  # (B, T, 1) in {0, 1}
    return bits.float() * 2.0 - 1.0, bits[:, 0, 0].long()


TASK_INPUT_SIZE = 1  # channels of first_bit_task's x
TASK_CLASSES = 2  # classes of first_bit_task's y


# --------------------------------------------------------------------------- measurement
def _unroll_top_layer(model: StackedRNN, x: Tensor) -> list[Tensor]:
    """Run ``model`` over x (B, T, I) from zero state; return the top layer's h_t (B, H) for every t.

    The h_t are the very tensors that feed h_{t+1}, so autograd's gradient w.r.t. each is the total
    derivative ∂L/∂h_t through the recurrence. Dropout is not applied (a measurement, not training).
    """
    B, T, _ = x.shape
    layer_input = x  # (B, T, I), then (B, T, H)
    hs: list[Tensor] = []
    for cell in model.cells:
        zeros = x.new_zeros(B, model.hidden_size)
        state = (zeros, zeros) if model.has_cell_state else zeros
        ux = cell.project_input(layer_input)  # (B, T, G*H)
        hs = []
        for t in range(T):
            state = cell.step(ux[:, t], state)
            hs.append(state[0] if model.has_cell_state else state)  # h_t (B, H)
        layer_input = torch.stack(hs, dim=1)  # (B, T, H)
    return hs


def gradient_flow(
    model: StackedRNN, x: Tensor, loss_fn: Callable[[Tensor], Tensor] | None = None, seed: int = 0
) -> np.ndarray:
    """‖∂L_T/∂h_t‖ for t = 0..T-1 (top layer's h_t), averaged over the batch: a (T,) array.

    L_T is a loss on the last step's output h_T (B, H): ``loss_fn(h_T)`` -> scalar when given (make it
    a SUM over the batch so that each sample's gradient is its own), else Σ_b p · h_T[b] for a fixed
    random unit vector p drawn from ``seed``. Index t of the result is distance T − 1 − t from the
    loss. Raises ValueError for a bidirectional model (its reverse direction's h_t is not on the
    path from h_t to L_T).
    """
    if model.bidirectional:
        raise ValueError("gradient_flow needs a unidirectional model (bidirectional=False)")
    if x.dim() != 3 or x.shape[2] != model.input_size:
        raise ValueError(f"x must have shape (B, T, {model.input_size}), got {tuple(x.shape)}")
    param = next(model.parameters())
    x = x.to(dtype=param.dtype, device=param.device)
    with torch.enable_grad():
        hs = _unroll_top_layer(model, x)
        h_T = hs[-1]  # (B, H)
        if loss_fn is None:
            g = torch.Generator().manual_seed(seed)
            p = torch.randn(model.hidden_size, generator=g, dtype=torch.float64)
            p = (p / p.norm()).to(dtype=h_T.dtype, device=h_T.device)  # (H,)
            loss = (h_T @ p).sum()
        else:
            loss = loss_fn(h_T)
        grads = torch.autograd.grad(loss, hs, allow_unused=True)
    norms = [
        torch.zeros(x.shape[0]) if gr is None else gr.detach().double().norm(dim=1).cpu()
        for gr in grads
    ]  # each (B,)
    return torch.stack(norms, dim=1).mean(dim=0).numpy()  # (T,)


def decay_ratio(curve: np.ndarray, distance: int = 50) -> float:
    """Gradient norm at distance T − t = ``distance`` divided by the norm at distance 0 (t = T − 1)."""
    curve = np.asarray(curve, dtype=np.float64)
    if not 0 <= distance < len(curve):
        raise ValueError(f"distance {distance} must be in [0, {len(curve) - 1}] for a curve of length {len(curve)}")
    return float(curve[-1 - distance] / curve[-1])


# --------------------------------------------------------------------------- training (optional)
class FirstBitClassifier(nn.Module):
    """StackedRNN plus a linear read-out of the last step's h: the first-bit task's model.

    forget_bias None keeps torch's initialisation; a number is applied with set_forget_bias to the
    gated cells (the vanilla RNN has no gate and is left as it is).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, forget_bias: float | None = None) -> None:
        super().__init__()
        self.rnn = StackedRNN(cell, input_size, hidden_size)
        self.head = nn.Linear(hidden_size, TASK_CLASSES)
        if forget_bias is not None and cell != "rnn":
            for c in self.rnn.cells:
                set_forget_bias(c, forget_bias)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.rnn(x)  # (B, T, H)
        return self.head(y[:, -1])  # (B, classes)


def train_first_bit(
    model: FirstBitClassifier, steps: int, length: int, batch: int = 32, lr: float = 3e-3, clip: float = 1.0,
    generator: torch.Generator | None = None,
) -> float:
    """Train ``model`` on first_bit_task for ``steps`` Adam steps (clipped); returns the last loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    model.train()
    for _ in range(steps):
        x, y = first_bit_task(batch, length, generator)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)  # gradient clipping handles explosion
        opt.step()
    model.eval()
    return float(loss.detach())


# --------------------------------------------------------------------------- report
@dataclass
class FlowConfig:
    """Settings of ``gradient_flow_report`` (and the ``gradient-flow`` command)."""

    cells: tuple[str, ...] = CELLS  # which cells to measure
    length: int = 100  # T, the sequence length
    hidden_size: int = 64  # H
    input_size: int = TASK_INPUT_SIZE  # channels of the first-bit task
    batch: int = 32  # sequences averaged per curve
    seed: int = 0  # seeds the weights, the inputs and the loss projection
    train_steps: int = 0  # 0 = fresh initialisation; > 0 = briefly trained on the first-bit task
    forget_bias: float | None = None  # None = torch's init (f ≈ 0.5); e.g. 1.0 biases gates to remember


def gradient_flow_report(
    cells: Sequence[str] = CELLS,
    T: int = 100,
    hidden_size: int = 64,
    input_size: int = TASK_INPUT_SIZE,
    seed: int = 0,
    train_steps: int = 0,
    out_dir: Path | str = Path("."),
    batch: int = 32,
    forget_bias: float | None = None,
) -> dict[str, np.ndarray]:
    """Measure each cell's gradient-flow curve and write CSV and PNG.

    Each model is freshly initialised from ``seed`` (torch's init, or with the gated cells' forget /
    update gate bias set to ``forget_bias``), or then trained ``train_steps`` steps on the first-bit
    task and measured with the task's loss. Writes ``out_dir/gradient_flow.csv`` (columns
    cell, distance, grad_norm, grad_norm_relative) and ``out_dir/gradient_flow.png``; returns
    {cell: (T,) array indexed by t like ``gradient_flow``}. Distance is counted from the loss's
    step: distance = T − 1 − t (0 at the last step). Raises ValueError for an unknown cell.
    """
    for cell in cells:
        if cell not in CELLS:
            raise ValueError(f"cell {cell!r} is not one of {', '.join(CELLS)}")
    if input_size != TASK_INPUT_SIZE and train_steps > 0:
        raise ValueError(f"input_size {input_size} must be {TASK_INPUT_SIZE} (the first-bit task) when training")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves: dict[str, np.ndarray] = {}
    for cell in cells:
        torch.manual_seed(seed)  # the same draw order for every cell
        model = FirstBitClassifier(cell, input_size, hidden_size, forget_bias)
        data_gen = torch.Generator().manual_seed(seed)
        loss_fn = None
        if train_steps > 0:
            last = train_first_bit(model, train_steps, T, generator=data_gen)
            log.info("%s: trained %d steps, last loss %.4f", cell, train_steps, last)
        x, y = first_bit_task(batch, T, data_gen) if input_size == TASK_INPUT_SIZE else (
            torch.randn(batch, T, input_size, generator=data_gen), None)
        if train_steps > 0:
            def loss_fn(h_T: Tensor, y: Tensor = y) -> Tensor:
                return F.cross_entropy(model.head(h_T), y, reduction="sum")
        curves[cell] = gradient_flow(model.rnn, x, loss_fn, seed=seed)  # (T,), index t
    _write_csv(out_dir / CSV_FILE, curves)
    _write_png(out_dir / PNG_FILE, curves, T, hidden_size, train_steps, forget_bias)
    return curves


def _write_csv(path: Path, curves: dict[str, np.ndarray]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for cell, curve in curves.items():
            by_distance = curve[::-1]  # entry d = ‖∂L_T/∂h_t‖ at t = T − 1 − d
            for d, norm in enumerate(by_distance):
                w.writerow([cell, d, f"{norm:.6e}", f"{norm / by_distance[0]:.6e}"])


def _write_png(
    path: Path, curves: dict[str, np.ndarray], T: int, hidden_size: int, train_steps: int, forget_bias: float | None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    tiny = np.finfo(np.float64).tiny  # log scale cannot show an exact zero
    for cell, curve in curves.items():
        by_distance = curve[::-1]
        ax.plot(np.arange(len(curve)), np.maximum(by_distance / by_distance[0], tiny), label=cell)
    ax.set_yscale("log")
    ax.set_xlabel("distance T − t (steps)")
    ax.set_ylabel("‖∂L_T/∂h_t‖ / ‖∂L_T/∂h_T‖")
    state = f"trained {train_steps} steps" if train_steps else "fresh init"
    state += "" if forget_bias is None else f", forget bias {forget_bias:g}"
    ax.set_title(f"Gradient flow, T={T}, hidden {hidden_size}, {state}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d = FlowConfig()
    p = argparse.ArgumentParser(
        prog="seqserve-train gradient-flow",
        description="Measure vanishing gradients: ‖∂L_T/∂h_t‖ against the distance T − t for each cell, "
        "on the recall-the-first-bit task. Writes gradient_flow.csv and gradient_flow.png to --out and "
        "prints each cell's decay ratio (norm at distance 50, or T−1 if shorter, over the norm at 0).",
    )
    p.add_argument("--cells", default=",".join(d.cells), help=f"comma-separated cells (default {','.join(d.cells)})")
    p.add_argument("--length", type=int, default=d.length, help=f"sequence length T (default {d.length})")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size, help=f"hidden size H (default {d.hidden_size})")
    p.add_argument("--train-steps", type=int, default=d.train_steps,
                   help="Adam steps on the first-bit task before measuring (default 0: fresh initialisation)")
    p.add_argument("--forget-bias", type=float, default=None,
                   help="set the gated cells' forget (GRU: update) gate bias to this value before measuring/"
                   "training, e.g. 1.0; default: torch's initialisation, which leaves those gates at about 0.5")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed for weights, data and loss (default {d.seed})")
    p.add_argument("--out", type=Path, default=Path("gradient_flow"), help="output folder (default ./gradient_flow)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``seqserve-train gradient-flow``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cells = tuple(c.strip() for c in args.cells.split(",") if c.strip())
    if args.length < 2:
        raise SystemExit(f"--length {args.length} must be at least 2")
    curves = gradient_flow_report(
        cells, T=args.length, hidden_size=args.hidden_size, seed=args.seed,
        train_steps=args.train_steps, out_dir=args.out, forget_bias=args.forget_bias,
    )
    distance = min(50, args.length - 1)
    for cell, curve in curves.items():
        print(f"{cell:9s} decay ratio at T-t={distance}: {decay_ratio(curve, distance):.3e}")
    print(f"wrote {args.out / CSV_FILE} and {args.out / PNG_FILE}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
