"""Every Prometheus metric of the service, created on an injected registry: the core's sink on Prometheus.

How to wire it (one ``Metrics`` per process; tests make their own with a fresh registry)::

    metrics = Metrics()                                   # own CollectorRegistry + process metrics
    server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics), ...])  # interceptors.py; FIRST,
    http, port = start_metrics_server(metrics, host, port) # so it sees the final status code
    ...
    stop_metrics_server(http)

Who records what (all durations in seconds, measured with ``time.perf_counter()``):

* ``MetricsInterceptor`` -- every registered RPC: ``grpc_server_*`` (go-grpc-prometheus names and
  labels), ``seqserve_requests_in_flight{method}`` and, when the RPC ends,
  ``Metrics.observe_request`` with the final status code. Inside a handler, call
  ``label_request(model=..., version=..., reason=...)`` once the model is resolved (and, for a
  rejection, why); the interceptor puts those on ``seqserve_request_duration_seconds`` and on the
  rejected/expired/cancelled counters. Codes are ``grpc.StatusCode`` names: "OK",
  "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", ...
* repository: ``model_loaded`` / ``model_load_failed`` / ``model_unloaded``. Only models announced
  here are used as ``model`` label values; any other name becomes "unknown" (no client-chosen
  label values).
* batcher / step scheduler: ``queue_depth`` (gauge ``.labels(model, version, graph).set(n)``),
  ``observe_item`` (per request: queue wait, compute), ``observe_batch`` (per onnxruntime run:
  rows in the batch, run duration), ``active_streams`` (``.labels(model, version).set(n)``).
* token producers (generate, translate decoding): ``TokenTimer`` from ``token_timer(...)``; call
  ``.emitted(n)`` whenever n tokens are produced: time to first token, time between tokens,
  generated tokens.
* speech recognition: ``speech_audio`` (audio seconds and graph seconds, per Recognize request and
  per stream step; offline requests also observe their real-time factor) and ``speech_latency``
  (a stream's interim results, from the chunk's arrival; its final result, from the half-close).

Label names come only from: grpc_* (gRPC layer), method, model, version, code, graph, task, reason,
mode (offline | stream), kind (interim | final).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from service.core.observe import GraphMeter, Sink, TokenTimer

logger = logging.getLogger(__name__)

# 100 µs .. 30 s: a decoder step is well under a millisecond, a long translation takes seconds.
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
# Loading + warming a bundle: tens of milliseconds for a toy model, minutes for a large one.
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RTF_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
UNKNOWN_MODEL = "unknown"  # label value for a model name the repository never announced

_GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")


class PromGraphMeter(GraphMeter):
    """The metrics of one graph of one model version, as a batcher or step scheduler records them."""

    def __init__(self, metrics: Metrics, model: str, version: str, graph: str):
        self._m = metrics
        self._labels = (model, version, graph)
        # Series looked up on first use (a labels() lookup costs a few µs; a batcher records
        # several per request, a step loop several per token).
        self._record_batch: Callable[[int, float], None] | None = None
        self._queue_series = None
        self._record_item: Callable[[float, float], None] | None = None
        self._streams_series = None
        self._streams = -1

    def queue_depth(self, n: int) -> None:
        if self._queue_series is None:
            self._queue_series = self._m.queue_depth.labels(*self._labels)
        self._queue_series.set(n)

    def batch(self, rows: int, seconds: float) -> None:
        if self._record_batch is None:
            self._record_batch = self._m.batch_recorder(*self._labels)
        self._record_batch(rows, seconds)

    def item(self, queue_seconds: float, compute_seconds: float) -> None:
        if self._record_item is None:
            self._record_item = self._m.item_recorder(*self._labels)
        self._record_item(queue_seconds, compute_seconds)

    def streams(self, n: int) -> None:
        if n == self._streams:
            return
        if self._streams_series is None:
            self._streams_series = self._m.active_streams.labels(*self._labels[:2])
        self._streams_series.set(n)
        self._streams = n

    def clear(self) -> None:
        self._streams_series, self._streams, self._queue_series = None, -1, None
        for gauge, labels in ((self._m.queue_depth, self._labels),
                              (self._m.active_streams, self._labels[:2])):
            try:
                gauge.remove(*labels)
            except KeyError:
                pass


class Metrics(Sink):
    """All metrics of one server process, registered on ``registry`` (a new one when None).

    Attributes (metric name; labels) -- see the module docstring for who records each:
      grpc_started          grpc_server_started_total; grpc_type, grpc_service, grpc_method
      grpc_handled          grpc_server_handled_total; ... + grpc_code
      grpc_handling_seconds grpc_server_handling_seconds (histogram); grpc_type/service/method
      grpc_msg_received     grpc_server_msg_received_total; grpc_type/service/method
      grpc_msg_sent         grpc_server_msg_sent_total; grpc_type/service/method
      request_seconds       seqserve_request_duration_seconds; method, model, version, code
      in_flight             seqserve_requests_in_flight (gauge); method
      rejected              seqserve_requests_rejected_total (RESOURCE_EXHAUSTED); method, model, reason
      expired               seqserve_requests_expired_total (DEADLINE_EXCEEDED); method, model, reason
      cancelled             seqserve_requests_cancelled_total (CANCELLED); method, model, reason
      queue_seconds         seqserve_queue_duration_seconds; model, version, graph
      compute_seconds       seqserve_compute_duration_seconds; model, version, graph
      onnx_run_seconds      seqserve_onnx_run_duration_seconds; model, version, graph
      batch_size            seqserve_batch_size (histogram of rows per run); model, version, graph
      queue_depth           seqserve_queue_depth (gauge); model, version, graph
      active_streams        seqserve_active_streams (gauge, sequences being decoded); model, version
      ttft_seconds          seqserve_time_to_first_token_seconds; model, version
      tbt_seconds           seqserve_time_between_tokens_seconds; model, version
      generated_tokens      seqserve_generated_tokens_total; model, version
      source_tokens         seqserve_source_tokens_total (translation input); model, version
      unknown_tokens        seqserve_unknown_source_tokens_total (outside the model's vocabulary); model, version
      audio_seconds         seqserve_audio_seconds_total (speech recognised); model, version, mode
      speech_compute        seqserve_speech_compute_seconds_total (graph time for it); model, version, mode
      real_time_factor      seqserve_real_time_factor (histogram, offline requests: compute / audio); model, version
      speech_result_latency seqserve_speech_result_latency_seconds; model, version, kind (interim | final | endpoint)
      load_seconds          seqserve_model_load_duration_seconds; model, version
      load_failures         seqserve_model_load_failures_total; model, version, reason
      model_info            seqserve_model_info (gauge, 1 per loaded version); model, version, task, cell
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True):
        self.registry = CollectorRegistry() if registry is None else registry
        self._rpc_series: dict[tuple[str, str, str], RpcSeries] = {}
        r = self.registry
        if process_metrics:
            ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
            PlatformCollector(registry=r)  # python_info
            GCCollector(registry=r)  # python_gc_*

        def hist(name: str, doc: str, labels: tuple[str, ...], buckets=DURATION_BUCKETS) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        self.grpc_started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", _GRPC_LABELS, registry=r)
        self.grpc_handled = Counter(
            "grpc_server_handled_total", "RPCs completed on the server, regardless of success.",
            (*_GRPC_LABELS, "grpc_code"), registry=r)
        self.grpc_handling_seconds = hist(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server, until the final status.", _GRPC_LABELS)
        self.grpc_msg_received = Counter(
            "grpc_server_msg_received_total", "Stream messages received by the server.",
            _GRPC_LABELS, registry=r)
        self.grpc_msg_sent = Counter(
            "grpc_server_msg_sent_total", "Stream messages sent by the server.", _GRPC_LABELS,
            registry=r)

        self.request_seconds = hist(
            "seqserve_request_duration_seconds", "Time from an RPC's start to its final status.",
            ("method", "model", "version", "code"))
        self.in_flight = Gauge(
            "seqserve_requests_in_flight", "RPCs started and not yet finished.", ("method",),
            registry=r)
        self.rejected = Counter(
            "seqserve_requests_rejected_total", "Requests refused with RESOURCE_EXHAUSTED.",
            ("method", "model", "reason"), registry=r)
        self.expired = Counter(
            "seqserve_requests_expired_total", "Requests that ended with DEADLINE_EXCEEDED.",
            ("method", "model", "reason"), registry=r)
        self.cancelled = Counter(
            "seqserve_requests_cancelled_total", "Requests that ended with CANCELLED.",
            ("method", "model", "reason"), registry=r)

        graph = ("model", "version", "graph")
        self.queue_seconds = hist(
            "seqserve_queue_duration_seconds",
            "Time a work item waited in a batcher or step-scheduler queue before its batch ran.", graph)
        self.compute_seconds = hist(
            "seqserve_compute_duration_seconds",
            "Time from a work item's batch starting to its result being ready.", graph)
        self.onnx_run_seconds = hist(
            "seqserve_onnx_run_duration_seconds", "Duration of one onnxruntime session run.", graph)
        self.batch_size = hist(
            "seqserve_batch_size", "Rows (requests or sequences) in one onnxruntime run.", graph,
            buckets=BATCH_BUCKETS)
        self.queue_depth = Gauge(
            "seqserve_queue_depth", "Work items waiting in a queue.", graph, registry=r)
        self.active_streams = Gauge(
            "seqserve_active_streams",
            "Sequences the step scheduler is decoding (joined and not yet left).",
            ("model", "version"), registry=r)

        mv = ("model", "version")
        self.ttft_seconds = hist(
            "seqserve_time_to_first_token_seconds",
            "Time from a request's start to its first generated token.", mv)
        self.tbt_seconds = hist(
            "seqserve_time_between_tokens_seconds",
            "Time between consecutive generated tokens of one sequence.", mv)
        self.generated_tokens = Counter(
            "seqserve_generated_tokens_total", "Tokens generated (text generation and translation).",
            mv, registry=r)
        self.source_tokens = Counter(
            "seqserve_source_tokens_total", "Source tokens read by translation models.", mv, registry=r)
        self.unknown_tokens = Counter(
            "seqserve_unknown_source_tokens_total",
            "Source tokens outside the translation model's vocabulary (a rising share: text in another "
            "language or domain).", mv, registry=r)

        mode = ("model", "version", "mode")
        self.audio_seconds = Counter(
            "seqserve_audio_seconds_total", "Seconds of audio recognised; mode offline (Recognize) or stream.",
            mode, registry=r)
        self.speech_compute = Counter(
            "seqserve_speech_compute_seconds_total",
            "Graph time spent recognising that audio (a stream step's rows share its time); divided by "
            "seqserve_audio_seconds_total it is the real-time factor.", mode, registry=r)
        self.real_time_factor = hist(
            "seqserve_real_time_factor",
            "Per Recognize request: graph time of its batch / seconds of its audio (below 1: faster than real time).",
            mv, buckets=RTF_BUCKETS)
        self.speech_result_latency = hist(
            "seqserve_speech_result_latency_seconds",
            "kind interim: from an audio chunk's arrival to the interim result that covers it; kind final: "
            "from a stream's half-close to its final result; kind endpoint (single_utterance): from the arrival of "
            "the chunk that completed the end-of-utterance silence to the final result.", ("model", "version", "kind"))

        self.load_seconds = hist(
            "seqserve_model_load_duration_seconds",
            "Time to validate, load and warm one model version.", mv, buckets=LOAD_BUCKETS)
        self.load_failures = Counter(
            "seqserve_model_load_failures_total", "Model versions that failed to load.",
            ("model", "version", "reason"), registry=r)
        self.model_info = Gauge(
            "seqserve_model_info", "1 for each model version that is loaded and serving.",
            ("model", "version", "task", "cell"), registry=r)

        self._known: dict[str, set[str]] = {}  # model -> versions the repository announced
        self._info: dict[tuple[str, str], tuple[str, str]] = {}  # (model, version) -> (task, cell)

    # -- model lifecycle (repository) ---------------------------------------------------------
    def model_loaded(self, model: str, version: str, task: str, cell: str, seconds: float) -> None:
        """Record that ``model``/``version`` (a ``task`` model with ``cell`` cells) is now serving."""
        self._known.setdefault(model, set()).add(version)
        self.load_seconds.labels(model, version).observe(seconds)
        self._info[(model, version)] = (task, cell)
        self.model_info.labels(model, version, task, cell).set(1)

    def model_load_failed(self, model: str, version: str, reason: str,
                          seconds: float | None = None) -> None:
        """Count a failed load; ``reason`` is a short fixed word ("manifest", "onnx", "warmup")."""
        self._known.setdefault(model, set()).add(version)
        self.load_failures.labels(model, version, reason).inc()
        if seconds is not None:
            self.load_seconds.labels(model, version).observe(seconds)

    def model_unloaded(self, model: str, version: str) -> None:
        """Drop the ``seqserve_model_info`` series of a version that stopped serving."""
        task_cell = self._info.pop((model, version), None)
        if task_cell is not None:
            self.model_info.remove(model, version, *task_cell)

    def model_label(self, model: str, version: str = "", for_model: bool = True) -> tuple[str, str]:
        """(model, version) label values, one rule: a model or version the repository announced
        stands for itself, anything else is "unknown" (an empty name or version that no version
        answered too); RPCs that ask no model (``for_model`` False and no name) get ("", "")."""
        if not model and not for_model:
            return "", ""
        versions = self._known.get(model)
        if versions is None:
            return UNKNOWN_MODEL, UNKNOWN_MODEL
        return model, (version if version in versions else UNKNOWN_MODEL)

    # -- requests (interceptor) ---------------------------------------------------------------
    def rpc_series(self, key: tuple[str, str, str]) -> "RpcSeries":
        """The go-grpc-prometheus series of one (grpc_type, grpc_service, grpc_method), looked up
        once: ``labels()`` validates and locks on every call, a few microseconds per series."""
        series = self._rpc_series.get(key)
        if series is None:
            series = self._rpc_series[key] = RpcSeries(self, key)
        return series

    def observe_request(self, method: str, model: str, version: str, code: str, seconds: float,
                        reason: str = "", for_model: bool = True) -> None:
        """Record one finished request; RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED / CANCELLED also
        count on rejected / expired / cancelled with ``reason`` ("" becomes "unspecified")."""
        model, version = self.model_label(model, version, for_model)
        self.request_seconds.labels(method, model, version, code).observe(seconds)
        counter = {"RESOURCE_EXHAUSTED": self.rejected, "DEADLINE_EXCEEDED": self.expired,
                   "CANCELLED": self.cancelled}.get(code)
        if counter is not None:
            counter.labels(method, model, reason or "unspecified").inc()

    # -- scheduling (batcher, step scheduler, runtime) ----------------------------------------
    def observe_item(self, model: str, version: str, graph: str, queue_seconds: float,
                     compute_seconds: float) -> None:
        """One work item done: how long it queued, how long its batch took until its result."""
        self.item_recorder(model, version, graph)(queue_seconds, compute_seconds)

    def item_recorder(self, model: str, version: str, graph: str) -> Callable[[float, float], None]:
        """``observe_item`` for one graph with its series looked up once (a batcher records every
        request)."""
        return _observer(self.queue_seconds, self.compute_seconds, (model, version, graph))

    def observe_batch(self, model: str, version: str, graph: str, rows: int, seconds: float) -> None:
        """One onnxruntime run of ``rows`` rows (the batch dimension B) that took ``seconds``."""
        self.batch_recorder(model, version, graph)(rows, seconds)

    def batch_recorder(self, model: str, version: str, graph: str) -> Callable[[int, float], None]:
        """``observe_batch`` for one graph with its series looked up once (a step loop records
        every step)."""
        return _observer(self.batch_size, self.onnx_run_seconds, (model, version, graph))

    def graph_meter(self, model: str, version: str, graph: str) -> GraphMeter:
        """What a batcher or step scheduler of ``graph`` (of ``model``/``version``) records into."""
        return PromGraphMeter(self, model, version, graph)

    def count_tokens(self, model: str, version: str, n: int) -> None:
        """``n`` tokens were produced by a non-streaming decoder (translation)."""
        if n > 0:
            self.generated_tokens.labels(model, version).inc(n)

    def count_source_tokens(self, model: str, version: str, n: int, unknown: int) -> None:
        """A translation read ``n`` source tokens, ``unknown`` of them outside the model's vocabulary."""
        self.source_tokens.labels(model, version).inc(n)
        self.unknown_tokens.labels(model, version).inc(unknown)

    def speech_audio(self, model: str, version: str, mode: str, audio_seconds: float, compute_seconds: float) -> None:
        """``audio_seconds`` of audio recognised in ``compute_seconds`` of graph time (mode offline | stream)."""
        self.audio_seconds.labels(model, version, mode).inc(audio_seconds)
        self.speech_compute.labels(model, version, mode).inc(compute_seconds)
        if mode == "offline" and audio_seconds > 0:
            self.real_time_factor.labels(model, version).observe(compute_seconds / audio_seconds)

    def speech_latency(self, model: str, version: str, kind: str, seconds: float) -> None:
        """A stream's interim result (from its chunk's arrival) or final result (from half-close)."""
        self.speech_result_latency.labels(model, version, kind).observe(seconds)

    def token_timer(self, model: str, version: str, start: float | None = None) -> PromTokenTimer:
        """A timer for one sequence; ``start`` is the request's ``perf_counter()`` (default: now)."""
        return PromTokenTimer(self, model, version, time.perf_counter() if start is None else start)


class RpcSeries:
    """The children of one RPC method's grpc_server_* series and its in-flight gauge."""

    def __init__(self, metrics: Metrics, key: tuple[str, str, str]) -> None:
        self._metrics = metrics
        self._key = key
        self.started = metrics.grpc_started.labels(*key)
        self.handling = metrics.grpc_handling_seconds.labels(*key)
        self.received = metrics.grpc_msg_received.labels(*key)
        self.sent = metrics.grpc_msg_sent.labels(*key)
        self.in_flight = metrics.in_flight.labels(key[2])
        self._handled: dict[str, Any] = {}

    def handled(self, code: str) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._metrics.grpc_handled.labels(*self._key, code)
        return child


class PromTokenTimer(TokenTimer):
    """Time to first token, time between tokens and token count of one generated sequence."""

    def __init__(self, metrics: Metrics, model: str, version: str, start: float):
        self._ttft = metrics.ttft_seconds.labels(model, version)
        self._tbt = metrics.tbt_seconds.labels(model, version)
        self._tokens = metrics.generated_tokens.labels(model, version)
        self._last = start
        self._first = True

    def emitted(self, n: int = 1, now: float | None = None) -> None:
        """``n`` tokens were produced at ``now`` (a ``perf_counter()`` value, default: now).

        The first call observes time to first token; each later call observes gap / n once per
        token, so a chunk of n tokens counts like n evenly spaced ones.
        """
        if n <= 0:
            return
        now = time.perf_counter() if now is None else now
        gap = now - self._last
        self._last = now
        self._tokens.inc(n)
        if self._first:
            self._first = False
            self._ttft.observe(gap)
            return
        for _ in range(n):
            self._tbt.observe(gap / n)


def _observer(first: Histogram, second: Histogram, labels: tuple[str, ...]) -> Callable[[float, float], None]:
    """record(a, b): observe ``a`` on ``first`` and ``b`` on ``second``, both series looked up now."""
    one, two = first.labels(*labels), second.labels(*labels)

    def record(a: float, b: float) -> None:
        one.observe(a)
        two.observe(b)

    return record


# -- exposition ---------------------------------------------------------------------------------
def start_metrics_server(metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> tuple[Any, int]:
    """Serve ``metrics.registry`` at http://host:port/metrics from a daemon thread.

    Returns (server, bound_port); port 0 picks a free port. Stop with ``stop_metrics_server``.
    Raises OSError when the address cannot be bound.
    """
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    bound = server.server_port
    logger.info("metrics on http://%s:%s/metrics", host, bound)
    return server, bound


def stop_metrics_server(server: Any) -> None:
    """Stop a server returned by ``start_metrics_server`` and close its socket."""
    server.shutdown()
    server.server_close()


def series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name ``registry`` exposes or will expose once labelled (e.g. ``x_bucket``)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
        "summary": ("", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    }
    names: set[str] = set()
    for family in registry.collect():
        if family.samples:  # what it exposes now
            names.update(sample.name for sample in family.samples)
        else:  # a labelled metric nobody has recorded into yet
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names
