"""Prometheus /metrics of the running servers, scraped over HTTP."""

from __future__ import annotations

import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from services.launcher import LocalStack, ServiceProcess
from tests.integration.conftest import CALL_TIMEOUT_S, rpc_error, v1_request


def metrics_port(service: ServiceProcess) -> int:
    return int(service.args[service.args.index("--metrics-port") + 1])


def scrape(service: ServiceProcess) -> dict[tuple[str, frozenset], float]:
    """Sample name and labels -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port(service)}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none yet)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_aggregator_counts_requests_and_stage_times(stack: LocalStack, aggregator, astronaut_jpeg: bytes,
                                                    vtest_jpegs: list[bytes]) -> None:
    before = scrape(stack.aggregator)
    frames = [astronaut_jpeg, *vtest_jpegs[:3]]
    for jpeg in frames:
        aggregator.Detect(v1_request(jpeg), timeout=CALL_TIMEOUT_S)
    error = rpc_error(lambda: aggregator.Detect(v1_request(b""), timeout=CALL_TIMEOUT_S))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(stack.aggregator)

    common = {"service": "objectdetection", "version": "it-1", "site": "it-site"}
    ok = value(after, "robomesh_requests_total", code="OK", method="v1.Detect", **common)
    assert ok - value(before, "robomesh_requests_total", code="OK", method="v1.Detect", **common) == len(frames)
    refused = value(after, "robomesh_requests_total", code="INVALID_ARGUMENT", method="v1.Detect")
    assert refused - value(before, "robomesh_requests_total", code="INVALID_ARGUMENT", method="v1.Detect") == 1
    for stage in ("total", "validate", "face", "yolo"):
        count = value(after, "robomesh_stage_seconds_count", stage=stage, **common)
        assert count - value(before, "robomesh_stage_seconds_count", stage=stage) == len(frames), stage
        assert value(after, "robomesh_stage_seconds_sum", stage=stage) > 0
    for detector in ("face", "yolo"):
        name = "robomesh_detector_seconds_count"
        assert value(after, name, detector=detector, code="OK") - value(
            before, name, detector=detector, code="OK") == len(frames)
    assert value(after, "robomesh_detections_total", engine="face") >= 1
    assert value(after, "robomesh_requests_in_flight") == 0


def test_detectors_serve_metrics_too(stack: LocalStack, face, astronaut_jpeg: bytes) -> None:
    face.Detect(v1_request(astronaut_jpeg), timeout=CALL_TIMEOUT_S)
    samples = scrape(stack.face)
    assert value(samples, "robomesh_requests_total", service="facedetection", code="OK", method="v1.Detect") >= 1
    assert value(samples, "robomesh_stage_seconds_count", stage="haar") >= 1
    assert value(scrape(stack.yolo), "robomesh_stage_seconds_count", service="yolodetection", stage="dnn") >= 1
