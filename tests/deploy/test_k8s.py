"""deploy/k8s: core kinds validated offline with kubernetes-validate, CRDs checked structurally."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.deploy.conftest import DEPLOY

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate==1.37.0 (dev)")

K8S = DEPLOY / "k8s"
VERSIONS = ("1.30.0", "1.37.0")  # oldest and newest Kubernetes we claim to support
CRD_KINDS = {"ServiceMonitor"}


def docs() -> dict[str, dict]:
    """kind -> manifest for every file in deploy/k8s except the kustomization."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"] if doc["kind"] != "ConfigMap" else f"ConfigMap/{doc['metadata']['name']}"] = doc
    return out


def deployment() -> dict:
    return docs()["Deployment"]


@pytest.mark.parametrize("version", VERSIONS)
def test_core_manifests_validate_strictly(version):
    checked = 0
    for kind, doc in docs().items():
        if doc["kind"] in CRD_KINDS:
            continue
        kv.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 6


def test_validator_rejects_a_broken_manifest():
    broken = copy.deepcopy(deployment())
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["portt"] = 1
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk


def test_deployment_probes_security_and_shutdown():
    spec = deployment()["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["lifecycle"]["preStop"]
    config = docs()["ConfigMap/seqserve"]["data"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > pre_stop + float(config["SEQSERVE_GRACE_S"])
    assert container["envFrom"][0]["configMapRef"]["name"] == "seqserve"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(config["SEQSERVE_PORT"]), "metrics": int(config["SEQSERVE_METRICS_PORT"])}
    assert config["SEQSERVE_HOST"] == "0.0.0.0"


def test_service_is_headless_and_selects_the_pods():
    service = docs()["Service"]
    assert service["spec"]["clusterIP"] == "None"
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert docs()["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_monitor_structure():
    monitor = docs()["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) <= {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    service = docs()["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings",
                                 "metricRelabelings", "honorLabels"}
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"


def test_hpa_metrics_are_served_by_the_adapter_rules():
    hpa = docs()["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment()["metadata"]["name"]
    adapter = yaml.safe_load(docs()["ConfigMap/prometheus-adapter-seqserve"]["data"]["config.yaml"])
    served = {rule["name"]["as"] for rule in adapter["rules"]}
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted and wanted <= served
    for rule in adapter["rules"]:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
