"""int8 weights for exported bundles: smaller files, float32 arithmetic, figures checked.

Every large float32 weight of a graph (embeddings, projections, recurrent matrices) is stored as int8
with one float32 scale per row (symmetric, ``scale = max|row| / 127``) and a DequantizeLinear node
that turns it back into the float32 tensor the graph used before. The service folds those nodes into
constants when it loads the session (manifest ``"weights": "int8"``, see service.core.runtime), so calls
run the same float32 kernels at the same speed; only the bundle shrinks, by about 4x.

With ``int8_matmul``, MatMul and Gemm (attention projections, the output layer over the vocabulary)
first become onnxruntime's dynamic quantisation (MatMulInteger: int8 weights, activations quantised
per call), which computes in int8 and is faster where those layers dominate (the de-en decoder step:
1.2x at 4 rows, 1.45x at 64); the recurrent operators and embeddings keep the storage scheme. The
price: one activation scale per call covers the whole batch, so a row's outputs depend on the rows
batched with it (a logit moves by ~0.3 next to a large row), and a close call in decoding can go
the other way under load. The storage scheme alone is batch-invariant; the bundled models use it.

Rounding every weight to 255 levels per row changes the outputs slightly, so ``quantize_bundle``
re-evaluates the bundle on every split its manifest has figures for and keeps the int8 graphs only
if each quality figure (BLEU, chrF, MSE, MAE, nats per character) holds within ``tolerance``
(1% by default); otherwise the bundle is left as it was.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HIGHER_IS_BETTER = ("bleu", "bleu_lc", "chrf", "accuracy", "string_accuracy", "stream_accuracy", "stream_string_accuracy",
                    "sentence_accuracy", "stream_sentence_accuracy")
LOWER_IS_BETTER = ("mse", "mae", "nats_per_char", "der", "stream_der", "cer", "wer", "stream_cer", "stream_wer")
MIN_ELEMENTS = 4096  # smaller tensors (biases, scales of tiny layers) stay float32: nothing to gain
SCHEME = "int8 symmetric, one scale per row, DequantizeLinear folded to float32 at load"
MATMUL_SCHEME = "onnxruntime dynamic quantisation of MatMul and Gemm (MatMulInteger, int8 weights per tensor)"


class QuantizeError(RuntimeError):
    """The bundle cannot be quantised, or its figures do not hold; the bundle is unchanged."""


def int8_weights(model: Any, min_elements: int = MIN_ELEMENTS) -> tuple[Any, int]:
    """Rewrite an onnx.ModelProto in place: each float32 initializer of rank >= 2 with at least
    ``min_elements`` values becomes int8 (rows = every axis but the last) plus per-row scales and a
    DequantizeLinear (and a Reshape back for rank > 2) producing the original name. Returns the
    model and how many tensors were converted."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    names = {i.name for i in graph.initializer}
    kept, nodes, converted = [], [], 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or len(init.dims) < 2 or int(np.prod(init.dims)) < min_elements:
            kept.append(init)
            continue
        w = numpy_helper.to_array(init)
        rows = w.reshape(-1, w.shape[-1])
        scale = (np.abs(rows).max(axis=1) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
        base = init.name
        q_name, s_name, flat_name, shape_name = (f"{base}__int8", f"{base}__scale", f"{base}__rows", f"{base}__shape")
        clash = names & {q_name, s_name, flat_name, shape_name}
        if clash:
            raise QuantizeError(f"initializer names {sorted(clash)} are taken; cannot quantise {base!r}")
        kept += [numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale, s_name)]
        if w.ndim == 2:
            nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name], [base], axis=0, name=f"{base}__dq"))
        else:
            kept.append(numpy_helper.from_array(np.array(w.shape, np.int64), shape_name))
            nodes += [helper.make_node("DequantizeLinear", [q_name, s_name], [flat_name], axis=0, name=f"{base}__dq"),
                      helper.make_node("Reshape", [flat_name, shape_name], [base], name=f"{base}__reshape")]
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)  # producers first: the graph stays topologically sorted
    return model, converted


def _direction(name: str) -> int:
    """+1 if a higher figure is better, -1 if lower is, 0 if not a quality figure ("mse@24" counts as mse)."""
    base = name.split("@", 1)[0]
    return 1 if base in HIGHER_IS_BETTER else -1 if base in LOWER_IS_BETTER else 0


def compare_figures(before: dict[str, Any], after: dict[str, Any], tolerance: float) -> list[str]:
    """Quality figures of ``after`` that fall more than ``tolerance`` (relative) short of ``before``,
    as readable lines; empty when every figure holds. Both map evaluation keys ("test",
    "test_beam4") to figures; per-horizon figures ("mse@24") are checked like their base figure."""
    failures = []
    for key, figures in before.items():
        for name, old in figures.items():
            sign = _direction(name)
            if not sign or not isinstance(old, (int, float)):
                continue
            new = after.get(key, {}).get(name)
            if not isinstance(new, (int, float)):
                failures.append(f"evaluation.{key}.{name}: missing after quantisation")
            elif sign * (new - old) < -tolerance * abs(old):
                failures.append(f"evaluation.{key}.{name}: {old:.4f} -> {new:.4f} (more than {tolerance:.1%} worse)")
    return failures


@dataclass
class QuantizeReport:
    converted: int  # weight tensors stored as int8
    bytes_before: int  # graph files, float32
    bytes_after: int
    before: dict[str, Any]  # the manifest's figures before
    after: dict[str, Any]  # the figures of the int8 graphs


def _graph_bytes(bundle_dir: Path, graphs: dict[str, str]) -> int:
    return sum((bundle_dir / f).stat().st_size for f in graphs.values())


def _int8_matmul(path: Path) -> None:
    """Rewrite the graph at ``path`` with onnxruntime's dynamic quantisation of MatMul and Gemm."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(path), str(path), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def quantize_bundle(bundle_dir: str | Path, data_dir=None, tolerance: float = 0.01, threads: int = 1,
                    int8_matmul: bool = False) -> QuantizeReport:
    """Store the bundle's graphs with int8 weights (and with ``int8_matmul``, MatMul/Gemm computed
    in int8) if every figure in its manifest holds within ``tolerance``; the manifest then records
    the int8 figures, the float32 ones and the scheme. Raises QuantizeError (bundle unchanged) when
    a figure does not hold or there is nothing to check."""
    import onnx

    from service.contract import read_manifest, write_manifest
    from training.evaluate import evaluate_bundle, stored_figures

    if not 0.0 <= tolerance < 1.0:
        raise QuantizeError(f"tolerance must be within [0, 1), got {tolerance!r}")
    bundle_dir = Path(bundle_dir)
    m = read_manifest(bundle_dir)
    if m.weights == "int8":
        raise QuantizeError(f"{bundle_dir}: weights are int8 already")
    if not m.evaluation:
        raise QuantizeError(f"{bundle_dir}: the manifest has no evaluation figures to hold; run "
                            f"`seqserve-train evaluate --bundle {bundle_dir} --write-manifest` first")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / m.name / m.version
        shutil.copytree(bundle_dir, work)
        converted = 0
        for file in m.graphs.values():
            if int8_matmul:
                _int8_matmul(work / file)
            model, _ = int8_weights(onnx.load(str(work / file)))
            onnx.checker.check_model(model)
            onnx.save(model, str(work / file))
            converted += sum(1 for i in model.graph.initializer  # both schemes store int8 tensors
                             if i.data_type == onnx.TensorProto.INT8 and int(np.prod(i.dims)) >= MIN_ELEMENTS)
        if not converted:
            raise QuantizeError(f"{bundle_dir}: no weight has {MIN_ELEMENTS} or more values; nothing to quantise")
        m.weights = "int8"
        write_manifest(work, m)
        after = {}
        for key, figures in m.evaluation.items():
            fig = evaluate_bundle(work, figures["split"], data_dir, threads=threads, beam=int(figures.get("beam", 0)))
            after[key] = stored_figures(fig)
        failures = compare_figures(m.evaluation, after, tolerance)
        if failures:
            raise QuantizeError(f"{bundle_dir}: int8 weights do not hold the figures within {tolerance:.1%}, "
                                f"bundle left float32: " + "; ".join(failures))
        report = QuantizeReport(converted, _graph_bytes(bundle_dir, m.graphs), _graph_bytes(work, m.graphs),
                                before=m.evaluation, after=after)
        m.extra["quantization"] = {
            "scheme": SCHEME, "matmul": MATMUL_SCHEME if int8_matmul else "float32",
            "tolerance": tolerance, "tensors": converted,
            "graph_bytes_float32": report.bytes_before, "graph_bytes_int8": report.bytes_after,
            "evaluation_float32": m.evaluation,
        }
        m.evaluation = after
        for file in m.graphs.values():  # replace each graph atomically, then the manifest that names the format
            tmp_file = bundle_dir / f".{file}.int8"
            shutil.copyfile(work / file, tmp_file)
            tmp_file.replace(bundle_dir / file)
        write_manifest(bundle_dir, m)
    return report
