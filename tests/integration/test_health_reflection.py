"""grpc.health.v1 and server reflection on every server of the stack."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.integration.conftest import CALL_TIMEOUT_S

SERVICES = {
    "objectdetection": ("robomesh.detection.v1.ObjectDetection", "ObjectDetection", "ObjectDetect"),
    "facedetection": ("robomesh.detection.v1.FaceDetection", "FaceDetection", "FaceDetect"),
    "yolodetection": ("robomesh.detection.v1.YoloDetection", "YoloDetection", "YoloDetect"),
}
COMMON = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


@pytest.mark.parametrize("server", sorted(SERVICES))
def test_health_is_serving_for_the_server_and_each_service(channels: dict[str, grpc.Channel], server: str) -> None:
    stub = health_pb2_grpc.HealthStub(channels[server])
    v1_name, legacy_name, _ = SERVICES[server]
    for name in ("", v1_name, legacy_name):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=CALL_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.RpcError) as caught:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=CALL_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("server", sorted(SERVICES))
def test_reflection_lists_and_describes_v1_and_legacy_services(channels: dict[str, grpc.Channel],
                                                               server: str) -> None:
    database = ProtoReflectionDescriptorDatabase(channels[server])
    v1_name, legacy_name, legacy_method = SERVICES[server]
    assert set(database.get_services()) == {v1_name, legacy_name, *COMMON}
    pool = DescriptorPool(database)
    detect = pool.FindServiceByName(v1_name).methods_by_name["Detect"]
    assert detect.input_type.full_name == "robomesh.detection.v1.DetectRequest"
    assert detect.output_type.full_name == "robomesh.detection.v1.DetectResponse"
    legacy = pool.FindServiceByName(legacy_name).methods_by_name[legacy_method]
    assert legacy.input_type.full_name.endswith("Request") and "." not in legacy.input_type.full_name
    assert legacy.containing_service.file.name.endswith("/detection.proto")
    assert detect.containing_service.file.name.endswith("/detection_v1.proto")
