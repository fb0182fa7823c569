"""The Grafana dashboard and provisioning: every panel queries metrics service/front/metrics.py defines."""

from __future__ import annotations

import json
import subprocess

import yaml
from prometheus_client import CollectorRegistry

from service.front.metrics import Metrics, series_names
from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import grafana_to_promql, metric_names

GRAFANA = DEPLOY / "grafana"


def dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "seqserve.json").read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana variables substituted) for every target."""
    return [(p["title"], grafana_to_promql(t["expr"])) for p in panels() for t in p["targets"]]


def test_every_panel_has_a_promql_target_on_defined_metrics():
    known = series_names(Metrics(CollectorRegistry()).registry)
    assert len(panels()) >= 12
    for panel in panels():
        exprs = [t.get("expr", "") for t in panel.get("targets", [])]
        assert exprs and all(exprs), f"panel {panel['title']!r} has no PromQL target"
        for expr in exprs:
            names = metric_names(grafana_to_promql(expr))
            assert names, f"panel {panel['title']!r}: no metric in {expr!r}"
            assert names <= known, f"panel {panel['title']!r} reads undefined {names - known}"


def test_dashboard_covers_the_required_views():
    used = set().union(*(metric_names(q) for _, q in panel_queries()))
    for name in (
        "seqserve_request_duration_seconds_bucket", "seqserve_request_duration_seconds_count",
        "seqserve_queue_duration_seconds_bucket", "seqserve_compute_duration_seconds_bucket",
        "seqserve_batch_size_bucket", "seqserve_requests_in_flight", "seqserve_queue_depth",
        "seqserve_time_to_first_token_seconds_bucket", "seqserve_time_between_tokens_seconds_bucket",
        "seqserve_generated_tokens_total", "seqserve_model_info", "grpc_server_handled_total",
        "seqserve_audio_seconds_total", "seqserve_speech_compute_seconds_total", "seqserve_real_time_factor_bucket",
        "seqserve_speech_result_latency_seconds_bucket",
    ):
        assert name in used, f"no panel shows {name}"
    quantiles = {q.split(",")[0] for _, q in panel_queries() if "seqserve_request_duration_seconds_bucket" in q}
    assert quantiles == {"histogram_quantile(0.5", "histogram_quantile(0.95", "histogram_quantile(0.99"}


def test_panel_queries_parse(promtool, tmp_path):
    """promtool parses each query as a recording rule: a syntax error fails the check."""
    group = {"name": "dashboard", "rules": [
        {"record": f"lint:panel_{i}", "expr": q} for i, (_, q) in enumerate(panel_queries())]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_ids_layout_and_datasource():
    dash = dashboard()
    assert dash["uid"] == "seqserve"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, p["title"]
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    for p in panels():
        assert p["datasource"]["uid"] == source["uid"], p["title"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in p["targets"]), p["title"]
    assert source["url"] == "http://prometheus:9090"


def test_dashboard_provider_points_at_the_mounted_folder():
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "seqserve.yml").read_text())
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
