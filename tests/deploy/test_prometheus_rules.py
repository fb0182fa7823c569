"""Prometheus config, recording and alert rules: promtool checks, unit tests and metric names."""

from __future__ import annotations

import subprocess

import yaml
from prometheus_client import CollectorRegistry

from service.front.metrics import Metrics, series_names
from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import metric_names

PROM = DEPLOY / "prometheus"


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def rules(name: str) -> list[dict]:
    return [r for g in yaml.safe_load((PROM / name).read_text())["groups"] for r in g["rules"]]


def test_promtool_check_config(promtool):
    out = promtool_run(promtool, "check", "config", "prometheus.yml").stdout
    assert "2 rule files found" in out


def test_promtool_check_rules(promtool):
    promtool_run(promtool, "check", "rules", "rules.yml", "alerts.yml")


def test_promtool_unit_tests_make_each_alert_fire_and_stay_quiet(promtool):
    promtool_run(promtool, "test", "rules", "alerts_test.yml")
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    for alert in (r["alert"] for r in rules("alerts.yml")):
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in mine), f"{alert} is never shown to fire"
        assert any(not c["exp_alerts"] for c in mine), f"{alert} is never shown to stay quiet"


def test_rules_read_only_metrics_the_service_defines():
    known = series_names(Metrics(CollectorRegistry()).registry) | {"up"}
    recorded = {r["record"] for r in rules("rules.yml")}
    for rule in rules("rules.yml") + rules("alerts.yml"):
        unknown = metric_names(rule["expr"]) - known - recorded
        assert not unknown, f"{rule.get('record') or rule.get('alert')} reads undefined {unknown}"
