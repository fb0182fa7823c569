"""int8 weights: what the rewritten graph computes, that onnxruntime folds it back, and the figure check."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.inference.sessions import RuntimeOptions, session_options
from training import quantize


def _model(rng: np.random.Generator) -> onnx.ModelProto:
    """y = Gather(embed, ids) @ w + b, with a rank-3 weight reshaped in the graph."""
    embed = rng.standard_normal((300, 32)).astype(np.float32)
    w3 = rng.standard_normal((2, 32, 64)).astype(np.float32) * np.array([1.0, 0.01], np.float32)[:, None, None]
    bias = rng.standard_normal(64).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["embed", "ids"], ["x"]),
        helper.make_node("ReduceSum", ["w3", "axis0"], ["w"], keepdims=0),
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        initializer=[numpy_helper.from_array(embed, "embed"), numpy_helper.from_array(w3, "w3"),
                     numpy_helper.from_array(bias, "bias"), numpy_helper.from_array(np.array([0], np.int64), "axis0")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, ids: np.ndarray, int8: bool, dump=None) -> np.ndarray:
    so = session_options(RuntimeOptions(int8_weights=int8))
    if dump:
        so.optimized_model_filepath = str(dump)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"ids": ids})[0]


def test_int8_weights_shrink_the_graph_and_stay_close(tmp_path):
    rng = np.random.default_rng(0)
    model = _model(rng)
    ids = rng.integers(0, 300, 50)
    want = _run(model, ids, int8=False)
    size = len(model.SerializeToString())

    q, converted = quantize.int8_weights(_model(np.random.default_rng(0)))
    onnx.checker.check_model(q)
    assert converted == 2  # embed and w3; the bias is too small to bother
    types = {i.name: i.data_type for i in q.graph.initializer}
    assert types["embed__int8"] == types["w3__int8"] == TensorProto.INT8 and types["bias"] == TensorProto.FLOAT
    assert len(q.SerializeToString()) < 0.3 * size
    got = _run(q, ids, int8=True, dump=tmp_path / "folded.onnx")
    # one scale per row: the small second block of w3 keeps its own precision
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
    assert not np.array_equal(got, want)
    # the service's session folds every DequantizeLinear into a float32 constant
    folded = onnx.load(str(tmp_path / "folded.onnx"))
    assert not [n for n in folded.graph.node if n.op_type == "DequantizeLinear"]
    kept = ort.SessionOptions()
    kept.optimized_model_filepath = str(tmp_path / "kept.onnx")
    ort.InferenceSession(q.SerializeToString(), kept, providers=["CPUExecutionProvider"])
    assert [n for n in onnx.load(str(tmp_path / "kept.onnx")).graph.node if n.op_type == "DequantizeLinear"]


def test_zero_rows_and_name_clashes():
    rng = np.random.default_rng(1)
    model = _model(rng)
    embed = next(i for i in model.graph.initializer if i.name == "embed")
    zeroed = numpy_helper.to_array(embed).copy()
    zeroed[5] = 0.0
    embed.CopyFrom(numpy_helper.from_array(zeroed, "embed"))
    q, _ = quantize.int8_weights(model)
    out = _run(q, np.array([5, 6]), int8=True)
    assert np.isfinite(out).all()

    clash = _model(rng)
    clash.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.int8), "embed__int8"))
    with pytest.raises(quantize.QuantizeError, match="embed__int8"):
        quantize.int8_weights(clash)


def test_compare_figures_by_direction_and_tolerance():
    before = {"test": {"bleu": 30.0, "chrf": 50.0, "sentences": 100, "source": "onnxruntime"},
              "fc": {"mse": 0.10, "mse@24": 0.05, "mae@24": 0.2, "coverage_10_90": 0.8}}
    same = {"test": {"bleu": 29.8, "chrf": 50.5, "sentences": 100}, "fc": {"mse": 0.1009, "mse@24": 0.04, "mae@24": 0.2}}
    assert quantize.compare_figures(before, same, 0.01) == []
    worse = {"test": {"bleu": 29.6, "chrf": 50.0}, "fc": {"mse": 0.10, "mse@24": 0.0506, "mae@24": 0.2}}
    failures = quantize.compare_figures(before, worse, 0.01)
    assert len(failures) == 2
    assert failures[0].startswith("evaluation.test.bleu: 30.0000 -> 29.6000")
    assert failures[1].startswith("evaluation.fc.mse@24")
    assert quantize.compare_figures(before, {"test": before["test"]}, 0.01)[0].endswith("missing after quantisation")
