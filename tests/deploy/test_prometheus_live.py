"""A real Prometheus scrapes a live /metrics endpoint; every dashboard panel and rule query runs.

TODO(lead): the `seqserve_target` fixture below drives service.metrics directly (a grpc.aio server
with MetricsInterceptor + health service, plus the Metrics API called the way the engine will).
Once the server is wired, replace it with the real thing: start `service.server.create_server`
(or `seqserve serve --port 0 --metrics-port 0`) on small test bundles, send real Translate,
Forecast, Generate and GenerateStream RPCs (one of them rejected with RESOURCE_EXHAUSTED, one
with an expired deadline), and yield the bound metrics port. The assertions need no change.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from service.metrics import (
    Metrics,
    MetricsInterceptor,
    label_request,
    series_names,
    start_metrics_server,
    stop_metrics_server,
)
from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import grafana_to_promql

READY_TIMEOUT_S = 30.0
Req, Resp = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(metrics: Metrics) -> None:
    """Record every metric once, through real RPCs where the interceptor is the recorder."""
    metrics.model_loaded("en-de", "1", "translate", "lstm", 0.3)
    metrics.model_loaded("lm", "2", "generate", "gru", 0.1)
    metrics.model_load_failed("lm", "3", "onnx", 0.01)

    async def translate(request, context):
        label_request(model="en-de", version="1")
        if request.service == "full":
            # set_code + return, not abort: abort sends the status before the interceptor
            # records, and server.stop below could cut that short.
            label_request(reason="queue_full")
            context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            context.set_details("queue of 256 is full")
        return Resp(status=Resp.SERVING)

    async def generate_stream(request, context):
        label_request(model="lm", version="2")
        for _ in range(3):
            yield Resp(status=Resp.SERVING)

    codec = dict(request_deserializer=Req.FromString, response_serializer=Resp.SerializeToString)
    server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics)])
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler("seqserve.v1.Translator", {
            "Translate": grpc.unary_unary_rpc_method_handler(translate, **codec)}),
        grpc.method_handlers_generic_handler("seqserve.v1.Generator", {
            "GenerateStream": grpc.unary_stream_rpc_method_handler(generate_stream, **codec)}),
    ])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/seqserve.v1.Translator/Translate",
                                       request_serializer=Req.SerializeToString, response_deserializer=Resp.FromString)
            stream = channel.unary_stream("/seqserve.v1.Generator/GenerateStream",
                                          request_serializer=Req.SerializeToString, response_deserializer=Resp.FromString)
            for _ in range(5):
                await call(Req())
            with pytest.raises(grpc.aio.AioRpcError):
                await call(Req(service="full"))
            assert len([r async for r in stream(Req())]) == 3
            await health_pb2_grpc.HealthStub(channel).Check(Req())
    finally:
        await server.stop(None)

    metrics.observe_request("Translate", "en-de", "1", "DEADLINE_EXCEEDED", 2.0, "queue")
    metrics.observe_request("GenerateStream", "lm", "2", "CANCELLED", 0.4, "client")
    for graph, rows in (("encoder", 4), ("decoder_step", 8)):
        metrics.observe_batch("en-de", "1", graph, rows, 0.002)
        metrics.observe_item("en-de", "1", graph, queue_seconds=0.001, compute_seconds=0.003)
        metrics.queue_depth.labels("en-de", "1", graph).set(2)
    metrics.active_streams.labels("lm", "2").set(1)
    start = time.perf_counter()
    timer = metrics.token_timer("lm", "2", start=start)
    for i in range(1, 5):
        timer.emitted(1, now=start + 0.01 * i)


@pytest.fixture
async def seqserve_target() -> AsyncIterator[int]:
    """Port of a live /metrics endpoint with every seqserve metric populated (see TODO above)."""
    metrics = Metrics(CollectorRegistry())
    await drive(metrics)
    http, port = start_metrics_server(metrics, "127.0.0.1", 0)
    try:
        yield port
    finally:
        stop_metrics_server(http)


class Prometheus:
    """A prometheus process on 127.0.0.1 with its own config and storage in a temp dir."""

    def __init__(self, binary: str, tmp: Path, target_port: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(DEPLOY / "prometheus" / "rules.yml"), str(DEPLOY / "prometheus" / "alerts.yml")],
            "scrape_configs": [{"job_name": "seqserve",
                                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (tmp / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.log_path = tmp / "prometheus.log"

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}" if params else f"{self.url}{path}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read().decode()
        return json.loads(body) if body.startswith("{") else {"body": body}

    def query(self, expr: str) -> list:
        reply = self.get("/api/v1/query", query=expr)
        assert reply["status"] == "success", (expr, reply)
        return reply["data"]["result"]

    def wait_until(self, what: str, condition) -> None:
        """Poll ``condition`` (Prometheus is another process: nothing to await) until true."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited: {self.log_path.read_text()[-2000:]}"
            try:
                if condition():
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        pytest.fail(f"prometheus: {what} not within {READY_TIMEOUT_S} s; log: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def prometheus(prometheus_bin, seqserve_target, tmp_path) -> Iterator[Prometheus]:
    prom = Prometheus(prometheus_bin, tmp_path, seqserve_target)
    try:
        prom.wait_until("ready", lambda: "body" in prom.get("/-/ready"))
        prom.wait_until("2 successful scrapes", lambda: any(
            float(s["value"][1]) >= 2
            for s in prom.query('sum_over_time(up{job="seqserve"}[1m])')))
        yield prom
    finally:
        prom.stop()


async def test_prometheus_scrapes_every_metric_and_runs_every_query(prometheus):
    prom = prometheus
    # Every series the module defines reaches Prometheus under its own name.
    scraped = {s["metric"]["__name__"] for s in await asyncio.to_thread(
        prom.query, 'count by (__name__) ({__name__=~"seqserve_.*|grpc_server_.*|process_.*"})')}
    defined = {n for n in series_names(Metrics(CollectorRegistry()).registry)
               if n.startswith(("seqserve_", "grpc_server_", "process_cpu", "process_resident"))}
    assert defined - scraped == set()

    # Every dashboard panel query returns data.
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "seqserve.json").read_text())
    for panel in (p for p in dashboard["panels"] if p["type"] != "row"):
        for target in panel["targets"]:
            result = await asyncio.to_thread(prom.query, grafana_to_promql(target["expr"]))
            assert result, f"panel {panel['title']!r}: no data for {target['expr']!r}"

    # Every recording and alerting expression evaluates on live data (success, possibly empty).
    for name in ("rules.yml", "alerts.yml"):
        for group in yaml.safe_load((DEPLOY / "prometheus" / name).read_text())["groups"]:
            for rule in group["rules"]:
                await asyncio.to_thread(prom.query, rule["expr"])
    (target,) = (await asyncio.to_thread(prom.get, "/api/v1/targets"))["data"]["activeTargets"]
    assert target["health"] == "up"
