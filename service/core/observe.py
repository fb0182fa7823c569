"""What the engine records while it works, without importing grpc or prometheus_client.

The engine (repository, batchers, step schedulers, tasks) must import without grpc, so the pieces
it calls live here; ``service.front.metrics`` builds the Prometheus side on top of them.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.front.metrics import Metrics


class GraphMeter:
    """The metrics of one graph of one model version, as a batcher or step scheduler records them.

    ``Metrics.graph_meter`` makes one; ``NULL_METER`` records nothing (engines without metrics)."""

    def __init__(self, metrics: Metrics | None, model: str, version: str, graph: str):
        self._m = metrics
        self._labels = (model, version, graph)
        # Series looked up on first use (a labels() lookup costs a few µs; a batcher records
        # several per request, a step loop several per token).
        self._record_batch = None  # Metrics.batch_recorder
        self._queue_series = None
        self._record_item = None  # Metrics.item_recorder
        self._streams_series = None
        self._streams = -1

    def queue_depth(self, n: int) -> None:
        """``n`` work items are waiting now."""
        if self._m is None:
            return
        if self._queue_series is None:
            self._queue_series = self._m.queue_depth.labels(*self._labels)
        self._queue_series.set(n)

    def batch(self, rows: int, seconds: float) -> None:
        """One onnxruntime run of ``rows`` rows took ``seconds``."""
        if self._m is None:
            return
        if self._record_batch is None:
            self._record_batch = self._m.batch_recorder(*self._labels)
        self._record_batch(rows, seconds)

    def item(self, queue_seconds: float, compute_seconds: float) -> None:
        """One work item waited ``queue_seconds`` and its batch took ``compute_seconds``."""
        if self._m is None:
            return
        if self._record_item is None:
            self._record_item = self._m.item_recorder(*self._labels)
        self._record_item(queue_seconds, compute_seconds)

    def streams(self, n: int) -> None:
        """``n`` sequences are being decoded by this graph's step loop now."""
        if self._m is None or n == self._streams:
            return
        if self._streams_series is None:
            self._streams_series = self._m.active_streams.labels(*self._labels[:2])
        self._streams_series.set(n)
        self._streams = n

    def clear(self) -> None:
        """Drop this graph's gauges (its model version was unloaded)."""
        if self._m is None:
            return
        self._streams_series, self._streams, self._queue_series = None, -1, None
        for gauge, labels in ((self._m.queue_depth, self._labels),
                              (self._m.active_streams, self._labels[:2])):
            try:
                gauge.remove(*labels)
            except KeyError:
                pass


NULL_METER = GraphMeter(None, "", "", "")


# -- per-RPC labels set from inside a handler -------------------------------------------------
@dataclass
class RequestLabels:
    """What a handler learned about its RPC; the interceptor records it when the RPC ends."""

    model: str = ""
    version: str = ""
    reason: str = ""  # why it was rejected/expired/cancelled, a short fixed word


_current: contextvars.ContextVar[RequestLabels | None] = contextvars.ContextVar(
    "seqserve_request_labels", default=None)


def label_request(model: str | None = None, version: str | None = None,
                  reason: str | None = None) -> None:
    """Set model/version/reason of the RPC being handled (a no-op outside an intercepted RPC)."""
    labels = _current.get()
    if labels is None:
        return
    if model is not None:
        labels.model = model
    if version is not None:
        labels.version = version
    if reason is not None:
        labels.reason = reason
