"""What every exported graph must pass: the contract's inputs and outputs, fused recurrent ops, parity with PyTorch."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from service.contract import ONNX_DTYPES, BundleError, Found, check_graph, graph_spec
from service.inference.sessions import load_session

OPSET = 17
PARITY_TOLERANCE = 1e-4  # max abs difference onnxruntime vs PyTorch, per output
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
UNROLLED_OPS = ("Loop", "Scan", "If")
class ExportError(RuntimeError):
    """An exported graph breaks the bundle contract or disagrees with PyTorch; says which and by how much."""


def graph_io(role: str, cell: str) -> tuple[list[str], list[str]]:
    """Input and output names of graph ``role`` for ``cell``, in the order the bundle contract gives them."""
    spec = graph_spec(role, cell)
    return spec.input_names, spec.output_names



def split_state(has_c: bool, states: tuple[Tensor, ...]):
    return (states[0], states[1]) if has_c else states[0]


def flat_state(state) -> tuple[Tensor, ...]:
    return tuple(state) if isinstance(state, tuple) else (state,)


def random_state(rng: torch.Generator, layers: int, batch: int, hidden: int, n: int) -> list[Tensor]:
    return [0.5 * torch.randn(layers, batch, hidden, generator=rng) for _ in range(n)]


def check_op_types(path: str | Path, expect: str | None = None) -> Counter:
    """Op-type counts of the graph at ``path``; raises ExportError unless its recurrence is fused
    LSTM/GRU/RNN ops (all of type ``expect`` when given) with no Loop/Scan/If."""
    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    name = Path(path).name
    bad = sorted(op for op in UNROLLED_OPS if ops[op])
    if bad:
        raise ExportError(f"{name}: contains {', '.join(bad)} (recurrence must be fused LSTM/GRU/RNN ops)")
    found = {op: ops[op] for op in RECURRENT_OPS if ops[op]}
    if not found:
        raise ExportError(f"{name}: has no fused recurrent op ({', '.join(RECURRENT_OPS)}); ops are {dict(ops)}")
    if expect is not None and set(found) != {expect}:
        raise ExportError(f"{name}: recurrent ops {found}, expected only {expect}")
    return ops


def check_graph_file(path: str | Path, role: str, cell: str, seasonal: bool = False) -> None:
    """Raise ExportError unless the graph at ``path`` has exactly the contract's inputs and outputs
    for ``role`` and ``cell`` (and ``seasonal``, a forecast graph's), in order, with their dtypes, ranks and symbolic batch/length axes."""
    model = onnx.load(str(path), load_external_data=False)

    def found(values) -> list[Found]:
        return [Found(v.name, ONNX_DTYPES.get(v.type.tensor_type.elem_type, f"onnx type {v.type.tensor_type.elem_type}"),
                      tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                            for d in v.type.tensor_type.shape.dim))
                for v in values]

    try:
        check_graph(Path(path).name, graph_spec(role, cell, seasonal), found(model.graph.input), found(model.graph.output),
                    ordered=True)
    except BundleError as err:
        raise ExportError(str(err)) from None


def compare(path: Path, module: nn.Module, inputs: dict[str, Tensor], tolerance: float = PARITY_TOLERANCE,
            feed: dict[str, np.ndarray] | None = None) -> float:
    """Run ``module`` (PyTorch) on ``inputs`` and the graph at ``path`` (onnxruntime) on ``feed`` (default:
    the same inputs); returns the max abs difference over all outputs, raising ExportError naming the
    graph and output when > tolerance."""
    with torch.no_grad():
        want = module(*inputs.values())
    want = want if isinstance(want, tuple) else (want,)
    sess = load_session(path)  # built as the server builds it
    got = sess.run(None, feed if feed is not None else {k: v.numpy() for k, v in inputs.items()})
    shapes = {k: tuple(v.shape) for k, v in inputs.items()}
    worst = 0.0
    for out, g, w in zip(sess.get_outputs(), got, want):
        w = w.numpy()
        if g.shape != w.shape:
            raise ExportError(f"{path.name}: output {out.name} has shape {g.shape}, PyTorch {w.shape} (inputs {shapes})")
        diff = float(np.abs(g - w).max()) if g.size else 0.0
        if not diff <= tolerance:
            raise ExportError(
                f"{path.name}: output {out.name} differs from PyTorch by max abs {diff:.3g} "
                f"(tolerance {tolerance:g}) on inputs {shapes}"
            )
        worst = max(worst, diff)
    return worst
