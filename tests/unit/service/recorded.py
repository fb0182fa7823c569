"""Reading what an engine recorded into its sink (the Prometheus metrics the server exposes)."""

from __future__ import annotations

from service.core.engine import Engine
from tests.integration.harness import metric_value


def step_calls(engine: Engine, graph: str) -> tuple[int, int]:
    """(onnxruntime calls, rows over them) the engine's batchers and step loops made on graphs
    named ``graph`` (e.g. "lm", "decoder_step", "lm_prefill"), over every model."""
    return (int(metric_value(engine.sink, "seqserve_batch_size_count", graph=graph)),
            int(metric_value(engine.sink, "seqserve_batch_size_sum", graph=graph)))
