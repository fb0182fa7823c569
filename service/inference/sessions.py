"""onnxruntime sessions, built one way for every caller: the server, export's parity check, evaluation, benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class RuntimeOptions:
    intra_op_threads: int = 1  # threads inside one operator
    inter_op_threads: int = 1  # threads across operators; > 1 enables parallel execution
    graph_optimization: str = "all"  # disable | basic | extended | all
    # A call whose previous run took less than this runs on the event loop itself: handing it to a
    # worker thread and back costs more (a decoding step of a small model takes ~0.1 ms). 0 = never.
    inline_ms: float = 0.2
    # A call whose graph took less than this for the same input shapes also runs on the event loop
    # when requests come one at a time (executor: a WorkerPool; see WorkerPool.alone): with nothing
    # to overlap, the hand-off to a worker and back is pure latency (~0.2-0.5 ms on a small VM).
    # Bounds how long the loop may block then. 0 = never.
    inline_idle_ms: float = 2.0
    # The graphs store int8 weights behind DequantizeLinear (manifest "weights": "int8"): fold them
    # into float32 constants when the session loads, so every call runs the float32 kernels at their
    # usual speed and only the file is smaller.
    int8_weights: bool = False


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    """SessionOptions for our graphs: fixed thread counts, no spinning (the CPU is shared), and no
    memory pattern, since every call may have a different batch and length."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = _OPT_LEVELS[options.graph_optimization]
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if options.inter_op_threads > 1 else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    so.enable_mem_pattern = False
    so.log_severity_level = 3  # errors only; shape warnings on every call would flood the log
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if options.int8_weights:
        # Without this, onnxruntime keeps DequantizeLinear of a constant as a node (to find
        # quantised-kernel patterns) and dequantises every weight on every call (a translation
        # decoder step: 2.7x slower, its encoder 1.7x).
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    return so


def load_session(model: bytes | str | Path, options: RuntimeOptions | None = None) -> ort.InferenceSession:
    """An InferenceSession on the CPU provider for a graph file (path) or its bytes, with
    ``session_options(options)`` (default RuntimeOptions: what ``seqserve serve`` uses)."""
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=session_options(options or RuntimeOptions()),
                                providers=["CPUExecutionProvider"])
