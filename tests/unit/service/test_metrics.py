"""Tests for service.front.metrics: names, labels, helpers, the aio interceptor on a real server, /metrics."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from service.core.observe import label_request
from service.front.interceptors import MetricsInterceptor
from service.front.metrics import (
    DURATION_BUCKETS,
    Metrics,
    series_names,
    start_metrics_server,
    stop_metrics_server,
)

Req, Resp = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
SERVICE = "test.Probe"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def value(m: Metrics, name: str, **labels: str) -> float:
    """A sample's value, 0.0 when the series does not exist yet."""
    return m.registry.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------------------------------- names
def test_expected_families_and_process_metrics_are_registered(metrics):
    names = series_names(metrics.registry)
    for name in (
        "grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds_bucket",
        "grpc_server_msg_received_total", "grpc_server_msg_sent_total",
        "seqserve_request_duration_seconds_bucket", "seqserve_requests_in_flight",
        "seqserve_queue_duration_seconds_bucket", "seqserve_compute_duration_seconds_bucket",
        "seqserve_onnx_run_duration_seconds_bucket", "seqserve_batch_size_bucket",
        "seqserve_queue_depth", "seqserve_active_streams", "seqserve_time_to_first_token_seconds_bucket",
        "seqserve_time_between_tokens_seconds_bucket", "seqserve_generated_tokens_total",
        "seqserve_source_tokens_total", "seqserve_unknown_source_tokens_total",
        "seqserve_requests_rejected_total", "seqserve_requests_expired_total",
        "seqserve_requests_cancelled_total", "seqserve_model_load_duration_seconds_bucket",
        "seqserve_model_load_failures_total", "seqserve_model_info",
        "process_cpu_seconds_total", "process_resident_memory_bytes", "python_info",
    ):
        assert name in names, name


def test_labels_stay_within_the_allowed_set(metrics):
    allowed = {"method", "model", "version", "code", "graph", "task", "reason", "cell", "le", "mode", "kind",
               "grpc_type", "grpc_service", "grpc_method", "grpc_code"}
    metrics.model_loaded("m", "1", "generate", "gru", 0.1)
    metrics.model_load_failed("m", "2", "onnx")
    for code in ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED"):
        metrics.observe_request("Generate", "m", "1", code, 0.1, "queue_full")
    metrics.in_flight.labels("Generate").inc()
    metrics.observe_item("m", "1", "lm", 0.1, 0.1)
    metrics.observe_batch("m", "1", "lm", 4, 0.1)
    metrics.queue_depth.labels("m", "1", "lm").set(3)
    metrics.active_streams.labels("m", "1").set(2)
    timer = metrics.token_timer("m", "1")
    timer.emitted(1)
    timer.emitted(1)
    metrics.count_source_tokens("m", "1", 9, 2)
    metrics.speech_audio("m", "1", "offline", 2.0, 0.01)
    metrics.speech_audio("m", "1", "stream", 0.3, 0.002)
    metrics.speech_latency("m", "1", "interim", 0.02)
    metrics.speech_latency("m", "1", "final", 0.01)
    families = [f for f in metrics.registry.collect() if f.name.startswith(("seqserve_", "grpc_"))]
    for family in families:
        for sample in family.samples:
            assert set(sample.labels) <= allowed, (sample.name, sample.labels)
    unexercised = {f.name for f in families if f.name.startswith("seqserve_") and not f.samples}
    assert not unexercised


def test_two_instances_do_not_collide_and_none_makes_a_fresh_registry():
    a, b = Metrics(), Metrics()
    assert a.registry is not b.registry
    a.in_flight.labels("X").inc()
    assert value(b, "seqserve_requests_in_flight", method="X") == 0.0


def test_duration_buckets_span_sub_millisecond_to_seconds():
    assert DURATION_BUCKETS[0] == pytest.approx(1e-4)
    assert DURATION_BUCKETS[-1] >= 30
    assert list(DURATION_BUCKETS) == sorted(DURATION_BUCKETS)


# -------------------------------------------------------------------------------------- helpers
def test_observe_request_counts_outcomes_and_hides_unannounced_models(metrics):
    metrics.model_loaded("en-de", "3", "translate", "lstm", 0.2)
    metrics.observe_request("Translate", "en-de", "3", "OK", 0.01)
    metrics.observe_request("Translate", "en-de", "3", "RESOURCE_EXHAUSTED", 0.001, "queue_full")
    metrics.observe_request("Translate", "en-de", "3", "DEADLINE_EXCEEDED", 1.0)
    metrics.observe_request("Translate", "en-de", "3", "CANCELLED", 0.5, "client")
    metrics.observe_request("Translate", "../../etc", "77", "NOT_FOUND", 0.001)

    assert value(metrics, "seqserve_request_duration_seconds_count",
                 method="Translate", model="en-de", version="3", code="OK") == 1
    assert value(metrics, "seqserve_requests_rejected_total",
                 method="Translate", model="en-de", reason="queue_full") == 1
    assert value(metrics, "seqserve_requests_expired_total",
                 method="Translate", model="en-de", reason="unspecified") == 1
    assert value(metrics, "seqserve_requests_cancelled_total",
                 method="Translate", model="en-de", reason="client") == 1
    assert value(metrics, "seqserve_request_duration_seconds_count",
                 method="Translate", model="unknown", version="unknown", code="NOT_FOUND") == 1
    exposed = {s.labels.get("model") for f in metrics.registry.collect() for s in f.samples}
    assert "../../etc" not in exposed


def test_model_version_label_is_unknown_when_not_announced(metrics):
    metrics.model_loaded("lm", "1", "generate", "gru", 0.1)
    assert metrics.model_label("lm", "1") == ("lm", "1")
    assert metrics.model_label("lm", "999") == ("lm", "unknown")
    assert metrics.model_label("lm", "") == ("lm", "unknown")  # no version of it answered
    assert metrics.model_label("nope", "1") == ("unknown", "unknown")
    assert metrics.model_label("", "") == ("unknown", "unknown")  # a default-model request nothing answered
    assert metrics.model_label("", "", for_model=False) == ("", "")  # ListModels


def test_model_lifecycle_info_gauge_and_failures(metrics):
    metrics.model_loaded("lm", "1", "generate", "gru", 0.3)
    metrics.model_loaded("lm", "2", "generate", "lstm", 0.4)
    metrics.model_load_failed("lm", "3", "onnx", 0.05)
    info = dict(model="lm", version="1", task="generate", cell="gru")
    assert value(metrics, "seqserve_model_info", **info) == 1
    assert value(metrics, "seqserve_model_load_duration_seconds_count", model="lm", version="1") == 1
    assert value(metrics, "seqserve_model_load_duration_seconds_sum", model="lm", version="2") == pytest.approx(0.4)
    assert value(metrics, "seqserve_model_load_failures_total", model="lm", version="3", reason="onnx") == 1

    metrics.model_unloaded("lm", "1")
    metrics.model_unloaded("lm", "1")  # twice is harmless
    assert metrics.registry.get_sample_value("seqserve_model_info", info) is None
    assert value(metrics, "seqserve_model_info", model="lm", version="2", task="generate", cell="lstm") == 1


def test_observe_item_and_batch(metrics):
    metrics.observe_batch("fc", "1", "forecast", 8, 0.002)
    metrics.observe_item("fc", "1", "forecast", queue_seconds=0.004, compute_seconds=0.003)
    lb = dict(model="fc", version="1", graph="forecast")
    assert value(metrics, "seqserve_batch_size_sum", **lb) == 8
    assert value(metrics, "seqserve_batch_size_bucket", le="4.0", **lb) == 0
    assert value(metrics, "seqserve_batch_size_bucket", le="8.0", **lb) == 1
    assert value(metrics, "seqserve_onnx_run_duration_seconds_sum", **lb) == pytest.approx(0.002)
    assert value(metrics, "seqserve_queue_duration_seconds_sum", **lb) == pytest.approx(0.004)
    assert value(metrics, "seqserve_compute_duration_seconds_sum", **lb) == pytest.approx(0.003)


def test_token_timer_first_token_then_gaps_per_token(metrics):
    timer = metrics.token_timer("lm", "1", start=10.0)
    timer.emitted(1, now=10.5)  # TTFT 0.5
    timer.emitted(1, now=10.6)  # gap 0.1
    timer.emitted(2, now=10.8)  # two tokens over 0.2 -> 0.1 each
    timer.emitted(0, now=99.0)  # nothing produced: ignored
    lb = dict(model="lm", version="1")
    assert value(metrics, "seqserve_time_to_first_token_seconds_sum", **lb) == pytest.approx(0.5)
    assert value(metrics, "seqserve_time_to_first_token_seconds_count", **lb) == 1
    assert value(metrics, "seqserve_time_between_tokens_seconds_count", **lb) == 3
    assert value(metrics, "seqserve_time_between_tokens_seconds_sum", **lb) == pytest.approx(0.3)
    assert value(metrics, "seqserve_generated_tokens_total", **lb) == 4


def test_label_request_outside_an_rpc_is_a_no_op():
    label_request(model="x", version="1", reason="r")  # must not raise


# ---------------------------------------------------------------------------------- interceptor
class Settled(grpc.aio.ServerInterceptor):
    """Test observer placed BEFORE MetricsInterceptor (so outside it): counts RPCs whose metrics
    are recorded. ``context.abort`` sends the status before the handler unwinds, so a client can
    see the status before the interceptor records; tests await this instead."""

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[tuple[int, asyncio.Future]] = []

    def _done(self) -> None:
        self.count += 1
        for n, future in self._waiters:
            if self.count >= n and not future.done():
                future.set_result(None)

    async def wait(self, n: int) -> None:
        """Until ``n`` RPCs in total have finished on the server."""
        if self.count < n:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((n, future))
            await asyncio.wait_for(future, 10)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        codec = dict(request_deserializer=handler.request_deserializer,
                     response_serializer=handler.response_serializer)
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request, context):
                try:
                    return await inner(request, context)
                finally:
                    self._done()
            return grpc.unary_unary_rpc_method_handler(unary, **codec)
        inner_stream = handler.unary_stream

        async def stream(request, context):
            try:
                async for response in inner_stream(request, context):
                    yield response
            finally:
                self._done()
        return grpc.unary_stream_rpc_method_handler(stream, **codec)


class Probe:
    """Handlers whose outcome is chosen by the request's ``service`` field."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()  # never set: handlers waiting on it end only by cancellation

    async def unary(self, request, context):
        mode = request.service
        if mode == "ok":
            label_request(model="m", version="1")
            return Resp(status=Resp.SERVING)
        if mode == "full":
            label_request(model="m", version="1", reason="queue_full")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue of 4 is full")
        if mode == "set_code":
            context.set_code(grpc.StatusCode.NOT_FOUND)
            return Resp()
        if mode == "raise":
            raise RuntimeError("bug")
        self.started.set()
        await self.release.wait()
        return Resp()

    async def stream(self, request, context):
        label_request(model="m", version="1")
        for _ in range(3):
            yield Resp(status=Resp.SERVING)
        if request.service == "abort_after_3":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad")


@pytest.fixture
async def probe_server(metrics):
    probe = Probe()
    codec = dict(request_deserializer=Req.FromString, response_serializer=Resp.SerializeToString)
    handlers = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(probe.unary, **codec),
        "Stream": grpc.unary_stream_rpc_method_handler(probe.stream, **codec),
    })
    settled = Settled()
    server = grpc.aio.server(interceptors=[settled, MetricsInterceptor(metrics)])
    server.add_generic_rpc_handlers([handlers])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield probe, channel, settled
    finally:
        await channel.close()
        await server.stop(None)


def unary(channel):
    return channel.unary_unary(f"/{SERVICE}/Unary", request_serializer=Req.SerializeToString,
                               response_deserializer=Resp.FromString)


def handled(m: Metrics, method: str, code: str, rpc_type: str = "unary", service: str = SERVICE) -> float:
    return value(m, "grpc_server_handled_total", grpc_type=rpc_type, grpc_service=service,
                 grpc_method=method, grpc_code=code)


async def test_interceptor_records_unary_outcomes(metrics, probe_server):
    _, channel, settled = probe_server
    call = unary(channel)
    assert (await call(Req(service="ok"))).status == Resp.SERVING
    for mode, code in (("full", grpc.StatusCode.RESOURCE_EXHAUSTED),
                       ("set_code", grpc.StatusCode.NOT_FOUND), ("raise", grpc.StatusCode.UNKNOWN)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(Req(service=mode))
        assert info.value.code() == code
    await settled.wait(4)

    grpc_labels = dict(grpc_type="unary", grpc_service=SERVICE, grpc_method="Unary")
    assert value(metrics, "grpc_server_started_total", **grpc_labels) == 4
    assert value(metrics, "grpc_server_msg_received_total", **grpc_labels) == 4
    assert value(metrics, "grpc_server_msg_sent_total", **grpc_labels) == 2  # ok + set_code returned
    assert value(metrics, "grpc_server_handling_seconds_count", **grpc_labels) == 4
    for code in ("OK", "RESOURCE_EXHAUSTED", "NOT_FOUND", "UNKNOWN"):
        assert handled(metrics, "Unary", code) == 1, code
    assert value(metrics, "seqserve_requests_in_flight", method="Unary") == 0
    # model/version/reason set from inside the handler reach the request metrics; "m" was never
    # announced by a repository, so it is reported as "unknown".
    assert value(metrics, "seqserve_requests_rejected_total", method="Unary", model="unknown",
                 reason="queue_full") == 1
    assert value(metrics, "seqserve_request_duration_seconds_count", method="Unary", model="",
                 version="", code="UNKNOWN") == 1


async def test_interceptor_uses_announced_model_labels(metrics, probe_server):
    _, channel, settled = probe_server
    metrics.model_loaded("m", "1", "generate", "lstm", 0.1)
    await unary(channel)(Req(service="ok"))
    await settled.wait(1)
    assert value(metrics, "seqserve_request_duration_seconds_count", method="Unary", model="m",
                 version="1", code="OK") == 1


async def test_interceptor_records_deadline_exceeded(metrics, probe_server):
    _, channel, settled = probe_server
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await unary(channel)(Req(service="hang"), timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await settled.wait(1)
    assert handled(metrics, "Unary", "DEADLINE_EXCEEDED") == 1
    assert value(metrics, "seqserve_requests_expired_total", method="Unary", model="",
                 reason="unspecified") == 1
    assert value(metrics, "seqserve_requests_in_flight", method="Unary") == 0


async def test_interceptor_records_client_cancellation(metrics, probe_server):
    probe, channel, settled = probe_server
    call = unary(channel)(Req(service="hang"), timeout=30)
    await asyncio.wait_for(probe.started.wait(), 10)
    assert value(metrics, "seqserve_requests_in_flight", method="Unary") == 1
    call.cancel()
    await settled.wait(1)
    assert handled(metrics, "Unary", "CANCELLED") == 1
    assert value(metrics, "seqserve_requests_cancelled_total", method="Unary", model="",
                 reason="unspecified") == 1
    assert value(metrics, "seqserve_requests_in_flight", method="Unary") == 0


async def test_interceptor_records_server_streaming(metrics, probe_server):
    _, channel, settled = probe_server
    stream = channel.unary_stream(f"/{SERVICE}/Stream", request_serializer=Req.SerializeToString,
                                  response_deserializer=Resp.FromString)
    assert len([r async for r in stream(Req(service="ok"))]) == 3
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for r in stream(Req(service="abort_after_3")):
            received.append(r)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(received) == 3
    await settled.wait(2)

    lb = dict(grpc_type="server_stream", grpc_service=SERVICE, grpc_method="Stream")
    assert value(metrics, "grpc_server_started_total", **lb) == 2
    assert value(metrics, "grpc_server_msg_received_total", **lb) == 2
    assert value(metrics, "grpc_server_msg_sent_total", **lb) == 6
    assert handled(metrics, "Stream", "OK", "server_stream") == 1
    assert handled(metrics, "Stream", "INVALID_ARGUMENT", "server_stream") == 1


async def test_interceptor_on_the_grpc_health_service(metrics, probe_server):
    _, channel, settled = probe_server
    stub = health_pb2_grpc.HealthStub(channel)
    assert (await stub.Check(Req(service=""))).status == Resp.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(Req(service="no.such.Service"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    await settled.wait(2)
    assert handled(metrics, "Check", "OK", service="grpc.health.v1.Health") == 1
    assert handled(metrics, "Check", "NOT_FOUND", service="grpc.health.v1.Health") == 1


async def test_unknown_methods_are_not_recorded(metrics, probe_server):
    _, channel, _ = probe_server
    bogus = channel.unary_unary("/attacker.Chosen/Name", request_serializer=Req.SerializeToString,
                                response_deserializer=Resp.FromString)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bogus(Req())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    exposed = {s.labels.get("grpc_service") for f in metrics.registry.collect() for s in f.samples}
    assert "attacker.Chosen" not in exposed


# ----------------------------------------------------------------------------------- exposition
def test_metrics_server_serves_the_injected_registry_on_its_own_port(metrics):
    metrics.model_loaded("fc", "1", "forecast", "gru", 0.1)
    server, port = start_metrics_server(metrics, "127.0.0.1", 0)
    try:
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert resp.status == 200
        assert 'seqserve_model_info{cell="gru",model="fc",task="forecast",version="1"} 1.0' in text
        assert "process_cpu_seconds_total" in text
    finally:
        stop_metrics_server(server)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_speech_metrics_count_audio_and_real_time_factor(metrics):
    metrics.speech_audio("s", "1", "offline", 4.0, 0.02)
    metrics.speech_audio("s", "1", "offline", 1.0, 0.01)
    metrics.speech_audio("s", "1", "stream", 0.3, 0.003)
    get = metrics.registry.get_sample_value
    assert get("seqserve_audio_seconds_total", {"model": "s", "version": "1", "mode": "offline"}) == 5.0
    assert get("seqserve_speech_compute_seconds_total", {"model": "s", "version": "1", "mode": "stream"}) == 0.003
    # one real-time factor per offline request: 0.005 and 0.01
    assert get("seqserve_real_time_factor_count", {"model": "s", "version": "1"}) == 2
    assert get("seqserve_real_time_factor_sum", {"model": "s", "version": "1"}) == pytest.approx(0.015)
    metrics.speech_latency("s", "1", "final", 0.04)
    assert get("seqserve_speech_result_latency_seconds_count", {"model": "s", "version": "1", "kind": "final"}) == 1
