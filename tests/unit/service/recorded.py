"""Reading what an engine recorded into its sink (the Prometheus metrics the server exposes)."""

from __future__ import annotations

from service.core.engine import Engine


def step_calls(engine: Engine, graph: str) -> tuple[int, int]:
    """(onnxruntime calls, rows over them) the engine's batchers and step loops made on graphs
    named ``graph`` (e.g. "lm", "decoder_step", "lm_prefill"), over every model."""
    calls = rows = 0.0
    for family in engine.sink.registry.collect():
        if family.name != "seqserve_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("graph") != graph:
                continue
            if sample.name.endswith("_count"):
                calls += sample.value
            elif sample.name.endswith("_sum"):
                rows += sample.value
    return int(calls), int(rows)
