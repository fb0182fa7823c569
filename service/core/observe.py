"""The one sink the serving core records into, without importing grpc or prometheus_client.

The core (repository, batchers, step schedulers, tasks) records every event through a ``Sink``: model
loads, each graph's queue depth, batches and streams (``GraphMeter``), generated tokens
(``TokenTimer``). The base classes record nothing (an engine without metrics); the front end's
``service.front.metrics.Metrics`` implements them on Prometheus, and tests read what they need from
that. What a request ended with (its code, model and the reason it was refused) is recorded once, by
the front end's interceptor, from the labels the core sets with ``label_request``.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


class GraphMeter:
    """What a batcher or step scheduler of one graph of one model version records; records nothing."""

    def queue_depth(self, n: int) -> None:
        """``n`` work items are waiting now."""

    def batch(self, rows: int, seconds: float) -> None:
        """One onnxruntime run of ``rows`` rows took ``seconds``."""

    def item(self, queue_seconds: float, compute_seconds: float) -> None:
        """One work item waited ``queue_seconds`` and its batch took ``compute_seconds``."""

    def streams(self, n: int) -> None:
        """``n`` sequences are being decoded by this graph's step loop now."""

    def clear(self) -> None:
        """Drop this graph's gauges (its model version was unloaded)."""


NULL_METER = GraphMeter()


class LaneMeter:
    """One graph's meter shared by ``lanes`` step loops (``serve --decoder-lanes``): each lane's
    ``lane(k)`` records its calls as they come and its stream count into a gauge of all lanes' sum."""

    def __init__(self, meter: GraphMeter, lanes: int) -> None:
        self._meter = meter
        self._streams = [0] * lanes
        self._open = lanes

    def lane(self, k: int) -> GraphMeter:
        return _Lane(self, k)

    def _set(self, k: int, n: int) -> None:
        self._streams[k] = n
        self._meter.streams(sum(self._streams))

    def _clear(self) -> None:
        self._open -= 1
        if self._open == 0:  # the last lane of the version closed: its gauges go
            self._meter.clear()


class _Lane(GraphMeter):
    def __init__(self, shared: LaneMeter, k: int) -> None:
        self._shared, self._k = shared, k

    def queue_depth(self, n: int) -> None:
        self._shared._meter.queue_depth(n)

    def batch(self, rows: int, seconds: float) -> None:
        self._shared._meter.batch(rows, seconds)

    def item(self, queue_seconds: float, compute_seconds: float) -> None:
        self._shared._meter.item(queue_seconds, compute_seconds)

    def streams(self, n: int) -> None:
        self._shared._set(self._k, n)

    def clear(self) -> None:
        self._shared._clear()


class TokenTimer:
    """Time to first token, time between tokens and token count of one generated sequence; records nothing."""

    def emitted(self, n: int = 1, now: float | None = None) -> None:
        """``n`` tokens were produced at ``now`` (a ``perf_counter()`` value, default: now)."""


class Sink:
    """Where the core records what happens. This base records nothing."""

    def graph_meter(self, model: str, version: str, graph: str) -> GraphMeter:
        """What a batcher or step scheduler of ``graph`` (of ``model``/``version``) records into."""
        return NULL_METER

    def token_timer(self, model: str, version: str, start: float | None = None) -> TokenTimer:
        """A timer for one sequence; ``start`` is the request's ``perf_counter()`` (default: now)."""
        return TokenTimer()

    def count_tokens(self, model: str, version: str, n: int) -> None:
        """``n`` tokens were produced by a non-streaming decoder (translation)."""

    def count_source_tokens(self, model: str, version: str, n: int, unknown: int) -> None:
        """A translation read ``n`` source tokens, ``unknown`` of them outside the model's vocabulary."""

    def speech_audio(self, model: str, version: str, mode: str, audio_seconds: float, compute_seconds: float) -> None:
        """``audio_seconds`` of audio were recognised (mode "offline" | "stream") using ``compute_seconds``
        of graph time (a stream reports per step; its rows share the step's time)."""

    def speech_latency(self, model: str, version: str, kind: str, seconds: float) -> None:
        """kind "interim": from a chunk's arrival to the interim result that covers it; "final": from
        the end of a stream's audio (half-close) to its final result; "endpoint" (single_utterance): from
        the arrival of the chunk that completed the end-of-utterance silence to the final result."""

    def model_loaded(self, model: str, version: str, task: str, cell: str, seconds: float) -> None:
        """``model``/``version`` (a ``task`` model with ``cell`` cells) is serving; loading took ``seconds``."""

    def model_load_failed(self, model: str, version: str, reason: str, seconds: float | None = None) -> None:
        """A load failed; ``reason`` is a short fixed word ("manifest", "onnx", "warmup")."""

    def model_unloaded(self, model: str, version: str) -> None:
        """``model``/``version`` stopped serving."""


NULL_SINK = Sink()


# -- per-RPC labels set from inside a handler -------------------------------------------------
@dataclass
class RequestLabels:
    """What a handler learned about its RPC; the interceptor records it when the RPC ends."""

    model: str = ""
    version: str = ""
    reason: str = ""  # why it was rejected/expired/cancelled, a short fixed word
    for_model: bool = False  # the RPC asks a model (Forecast, GetModel...), not the server (ListModels)


_current: contextvars.ContextVar[RequestLabels | None] = contextvars.ContextVar(
    "seqserve_request_labels", default=None)


def begin_request() -> RequestLabels:
    """Labels for the RPC starting in this context (the interceptor calls this; tasks inherit it)."""
    labels = RequestLabels()
    _current.set(labels)
    return labels


def label_request(model: str | None = None, version: str | None = None,
                  reason: str | None = None, for_model: bool | None = None) -> None:
    """Set model/version/reason of the RPC being handled (a no-op outside an intercepted RPC): the
    front end sets what the request named, the engine the version that answers it."""
    labels = _current.get()
    if labels is None:
        return
    if for_model is not None:
        labels.for_model = for_model
    if model is not None:
        labels.model = model
    if version is not None:
        labels.version = version
    if reason is not None:
        labels.reason = reason
