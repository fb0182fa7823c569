"""deploy/envoy/envoy.yaml: an HTTP/2 round-robin gRPC balancer over DNS-discovered replicas."""

import yaml

from tests.deploy.conftest import DEPLOY

HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def config() -> dict:
    return yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())


def test_cluster_is_strict_dns_round_robin_http2_with_grpc_health_checks():
    (cluster,) = config()["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS"
    assert cluster["lb_policy"] == "ROUND_ROBIN"
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["@type"].endswith("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    assert "http2_protocol_options" in options["explicit_http_config"]
    (check,) = cluster["health_checks"]
    assert "grpc_health_check" in check


def test_listener_routes_everything_on_50051_to_the_cluster():
    (listener,) = config()["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == 50051
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    assert hcm["typed_config"]["@type"].endswith(HCM)
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    (cluster,) = config()["static_resources"]["clusters"]
    assert {r["route"]["cluster"] for r in routes} == {cluster["name"]}
    assert hcm["typed_config"]["http_filters"][-1]["name"] == "envoy.filters.http.router"
