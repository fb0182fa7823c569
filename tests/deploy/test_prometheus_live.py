"""A real Prometheus scrapes a live seqserve; every dashboard panel and rule query returns data.

The target is the real server (``service.front.server.create_server`` on loopback) over tiny exported
bundles plus one broken bundle, driven with real Translate, Forecast, Generate, GenerateStream and
Models RPCs, including one rejected with RESOURCE_EXHAUSTED, one that runs past its deadline and one
stream the client cancels.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.front.metrics import Metrics, series_names, start_metrics_server, stop_metrics_server
from service.v1 import forecast_pb2, generate_pb2, models_pb2, recognize_pb2, recognize_pb2_grpc, translate_pb2
from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import grafana_to_promql
from tests.integration.harness import free_port, metric_value, rpc_error, serving, wait_until

READY_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def live_models(module_models) -> Path:
    """Tiny bundles of every task, and a version whose manifest is broken (a load failure)."""
    models = module_models
    broken = models / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")
    return models


async def drive(served) -> None:
    """Real RPCs to every method, with a rejection, an expired deadline and a cancelled stream."""
    for _ in range(3):
        await served.translator.Translate(translate_pb2.TranslateRequest(texts=["ka pa lo", "lo ka"]))
        await served.translator.Translate(translate_pb2.TranslateRequest(texts=["pa lo"], beam_size=3))
    await asyncio.gather(*(  # fills batches of equal history lengths
        served.forecaster.Forecast(forecast_pb2.ForecastRequest(history=[float(i % 7) for i in range(24 + k % 2)]))
        for k in range(6)))
    for seed in range(3):
        await served.generator.Generate(generate_pb2.GenerateRequest(prompt="the ", max_tokens=8, seed=seed))
    async for _ in served.generator.GenerateStream(generate_pb2.GenerateRequest(prompt="a", max_tokens=6, seed=1)):
        pass
    await served.models.ListModels(models_pb2.ListModelsRequest())
    await served.models.GetModel(models_pb2.GetModelRequest(name="tiny-forecast"))
    # Speech: an offline recognition and a stream with interim results.
    speech = recognize_pb2_grpc.RecognizerStub(served.channel)
    config = recognize_pb2.RecognitionConfig(encoding=recognize_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=8000)
    audio = (np.sin(np.arange(8000) / 3.0) * 8000).astype("<i2").tobytes()
    await speech.Recognize(recognize_pb2.RecognizeRequest(config=config, audio=audio))
    stream = [recognize_pb2.StreamingRecognizeRequest(
        streaming_config=recognize_pb2.StreamingRecognitionConfig(config=config, interim_results=True)),
        *(recognize_pb2.StreamingRecognizeRequest(audio_content=audio[i : i + 3200]) for i in range(0, len(audio), 3200))]
    async for _ in speech.StreamingRecognize(iter(stream)):
        pass

    # RESOURCE_EXHAUSTED: more sentences than the server's decoding streams (max_streams=4 below).
    err = await rpc_error(served.translator.Translate(translate_pb2.TranslateRequest(texts=["ka"] * 5)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    # DEADLINE_EXCEEDED: a forecast whose deadline passes while it waits for its batch to fill
    # (max_batch_wait_ms=300 below).
    lone = forecast_pb2.ForecastRequest(history=[1.0] * 30)
    err = await rpc_error(served.forecaster.Forecast(lone, timeout=0.1))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    # CANCELLED: the client walks away from a forecast waiting in the same queue (once the expired
    # one has left it).
    def queued() -> float:
        return metric_value(served.metrics, "seqserve_queue_depth", graph="forecast")

    await wait_until(lambda: queued() == 0, what="the expired forecast to leave the queue")
    call = served.forecaster.Forecast(lone)
    await wait_until(lambda: queued() == 1, what="the forecast to wait in its batcher")
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_until(lambda: metric_value(served.metrics, "seqserve_requests_cancelled_total") == 1,
                     what="the server to count the cancelled call")


@pytest.fixture
async def seqserve_target(live_models) -> AsyncIterator[int]:
    """Port of the live /metrics endpoint of a real server that has served traffic."""
    metrics = Metrics(CollectorRegistry())
    async with serving(live_models, metrics=metrics, max_streams=4, max_batch_wait_ms=300) as served:
        await drive(served)
        http, port = start_metrics_server(metrics, "127.0.0.1", 0)
        try:
            # Keep the server (and its event loop) alive while Prometheus scrapes.
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
