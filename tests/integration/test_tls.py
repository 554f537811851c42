"""TLS and mutual TLS on direct gRPC, with real servers on loopback and certificates made in the test.

A CA signs the servers' certificate (SAN DNS:localhost, IP:127.0.0.1) and a robot's client
certificate; a rogue CA signs a client certificate no server trusts. Checked: a TLS server answers
a TLS client with real detections and refuses plaintext; an mTLS server refuses a client without a
certificate and one from the rogue CA; the aggregator reaches mTLS detectors only with its
``--detector-tls-*`` flags; the robot's OffloadClient with its certificate gets detections.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from robotclient.runtime.model import CapturedFrame
from robotclient.runtime.offload import OffloadClient, OffloadConfig
from robotclient.runtime.tls import ClientTls as RobotTls
from services.launcher import ServiceProcess, wait_serving
from tests.integration.conftest import (
    ASTRONAUT_FACE,
    CALL_TIMEOUT_S,
    START_TIMEOUT_S,
    Spawner,
    iou,
    rpc_error,
    v1_request,
)
from tests.tlscerts import Pki, make_pki

pytestmark = pytest.mark.timeout(240)


def credentials(pki: Pki, *, client: str = "none") -> grpc.ChannelCredentials:
    """Trusts the test CA; presents no client certificate, the robot's, or the rogue one."""
    pair = {"none": None, "robot": pki.client, "rogue": pki.rogue_client}[client]
    if pair is None:
        return grpc.ssl_channel_credentials(pki.ca.read_bytes())
    return grpc.ssl_channel_credentials(pki.ca.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes())


def server_flags(pki: Pki, mutual: bool) -> list[str]:
    flags = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    return [*flags, "--tls-client-ca", str(pki.ca)] if mutual else flags


def start_tls(spawn: Spawner, pki: Pki, name: str, *args: str, mutual: bool) -> ServiceProcess:
    """A server with TLS flags, waited for over TLS (the launcher's default check speaks plaintext)."""
    service = spawn(name, *server_flags(pki, mutual), *args, wait=False)
    wait_serving(service.target, START_TIMEOUT_S, service.process,
                 credentials=credentials(pki, client="robot" if mutual else "none"))
    return service


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_face(spawn: Spawner, pki: Pki, model_paths: object) -> ServiceProcess:
    return start_tls(spawn, pki, "facedetection", mutual=False)


@pytest.fixture(scope="module")
def mtls_face(spawn: Spawner, pki: Pki, model_paths: object) -> ServiceProcess:
    return start_tls(spawn, pki, "facedetection", mutual=True)


@pytest.fixture(scope="module")
def mtls_yolo(spawn: Spawner, pki: Pki, model_paths: object) -> ServiceProcess:
    return start_tls(spawn, pki, "yolodetection", mutual=True)


@pytest.fixture(scope="module")
def mtls_aggregator(spawn: Spawner, pki: Pki, mtls_face: ServiceProcess,
                    mtls_yolo: ServiceProcess) -> ServiceProcess:
    """mTLS towards the robot and towards the detectors (addressed by IP, verified as ``localhost``)."""
    return start_tls(spawn, pki, "objectdetection", "--face", mtls_face.target, "--yolo", mtls_yolo.target,
                     "--detector-tls-ca", str(pki.ca), "--detector-tls-cert", str(pki.client.cert),
                     "--detector-tls-key", str(pki.client.key), "--detector-tls-server-name", "localhost",
                     mutual=True)


def face_detect(target: str, creds: grpc.ChannelCredentials | None, jpeg: bytes) -> v1.DetectResponse:
    with grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target) as channel:
        return v1_grpc.FaceDetectionStub(channel).Detect(v1_request(jpeg), timeout=CALL_TIMEOUT_S)


def assert_astronaut_face(reply: v1.DetectResponse) -> None:
    faces = [d for d in reply.detections if d.class_name == "face"]
    assert len(faces) == 1, reply
    b = faces[0].box
    assert iou((b.x, b.y, b.width, b.height), ASTRONAUT_FACE) > 0.7


def test_tls_server_answers_a_tls_client(tls_face: ServiceProcess, pki: Pki, astronaut_jpeg: bytes) -> None:
    assert_astronaut_face(face_detect(tls_face.target, credentials(pki), astronaut_jpeg))
    # The same certificate verifies under its DNS name too.
    host_target = f"localhost:{tls_face.port}"
    assert_astronaut_face(face_detect(host_target, credentials(pki), astronaut_jpeg))


def test_tls_server_refuses_plaintext(tls_face: ServiceProcess, astronaut_jpeg: bytes) -> None:
    err = rpc_error(lambda: face_detect(tls_face.target, None, astronaut_jpeg))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_refuses_a_server_from_another_ca(tls_face: ServiceProcess, pki: Pki,
                                                     astronaut_jpeg: bytes) -> None:
    rogue_trust = grpc.ssl_channel_credentials(pki.rogue_ca.read_bytes())
    err = rpc_error(lambda: face_detect(tls_face.target, rogue_trust, astronaut_jpeg))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_server_refuses_clients_without_a_trusted_certificate(mtls_face: ServiceProcess, pki: Pki,
                                                                   astronaut_jpeg: bytes) -> None:
    for who in ("none", "rogue"):
        err = rpc_error(lambda who=who: face_detect(mtls_face.target, credentials(pki, client=who), astronaut_jpeg))
        assert err.code() == grpc.StatusCode.UNAVAILABLE, who
    err = rpc_error(lambda: face_detect(mtls_face.target, None, astronaut_jpeg))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_server_accepts_a_client_of_its_ca(mtls_face: ServiceProcess, pki: Pki, astronaut_jpeg: bytes) -> None:
    assert_astronaut_face(face_detect(mtls_face.target, credentials(pki, client="robot"), astronaut_jpeg))


def test_aggregator_speaks_mtls_to_its_detectors(mtls_aggregator: ServiceProcess, pki: Pki,
                                                 astronaut_jpeg: bytes) -> None:
    with grpc.secure_channel(mtls_aggregator.target, credentials(pki, client="robot")) as channel:
        reply = v1_grpc.ObjectDetectionStub(channel).Detect(v1_request(astronaut_jpeg), timeout=CALL_TIMEOUT_S)
    codes = {v1.Engine.Name(s.engine): s.code_name for s in reply.detector_status}
    assert codes == {"ENGINE_FACE": "OK", "ENGINE_YOLO": "OK"}, reply.detector_status
    assert_astronaut_face(reply)
    assert reply.timings_ms["yolo.dnn"] > 0, reply.timings_ms  # YOLO really ran behind the TLS hop


def test_aggregator_without_detector_tls_flags_gets_no_answers(spawn: Spawner, pki: Pki, mtls_face: ServiceProcess,
                                                               mtls_yolo: ServiceProcess,
                                                               astronaut_jpeg: bytes) -> None:
    """Proof that the hop really is TLS: plaintext channels to the same detectors fail (a partial reply)."""
    plain = spawn("objectdetection", "--face", mtls_face.target, "--yolo", mtls_yolo.target)
    with grpc.insecure_channel(plain.target) as channel:
        reply = v1_grpc.ObjectDetectionStub(channel).Detect(v1_request(astronaut_jpeg), timeout=CALL_TIMEOUT_S)
    assert {s.code_name for s in reply.detector_status} == {"UNAVAILABLE"}, reply.detector_status
    assert not reply.detections


@pytest.fixture()
def robot_tls(pki: Pki) -> RobotTls:
    tls = RobotTls.from_files(str(pki.ca), str(pki.client.cert), str(pki.client.key), "localhost")
    assert tls is not None
    return tls


def test_robot_offload_client_with_a_client_certificate(mtls_aggregator: ServiceProcess, robot_tls: RobotTls,
                                                        data_dir: Path) -> None:
    image = cv2.imread(str(data_dir / "astronaut.png"))
    config = OffloadConfig(target=mtls_aggregator.target, credentials=robot_tls.credentials,
                           server_name=robot_tls.server_name, deadline_s=CALL_TIMEOUT_S)
    with OffloadClient(config) as client:
        result = None
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while result is None and time.monotonic() < deadline:
            client.offer(CapturedFrame(number=1, captured_at=time.monotonic(), image=np.ascontiguousarray(image)))
            results = client.wait_results(2.0)
            result = results[0] if results else None
        assert result is not None, (client.stats(), client.take_failures())
    assert not result.detector_errors, result.detector_errors
    faces = [d.box.as_int() for d in result.detections if d.class_name == "face"]
    assert len(faces) == 1 and iou(faces[0], ASTRONAUT_FACE) > 0.5, result.detections


def test_robot_offload_client_without_a_certificate_is_refused(mtls_aggregator: ServiceProcess, pki: Pki,
                                                               data_dir: Path) -> None:
    no_cert = RobotTls.from_files(str(pki.ca))
    assert no_cert is not None
    image = cv2.imread(str(data_dir / "astronaut.png"))
    config = OffloadConfig(target=mtls_aggregator.target, credentials=no_cert.credentials, deadline_s=2.0)
    with OffloadClient(config) as client:
        client.offer(CapturedFrame(number=1, captured_at=time.monotonic(), image=image))
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while not (failures := client.take_failures()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not client.take_results()
    assert failures and failures[0].code == "UNAVAILABLE", failures


def run_healthcheck(port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """docker/healthcheck.py as the image runs it, with the container's PORT."""
    script = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"
    return subprocess.run([sys.executable, str(script), *args], env={**os.environ, "PORT": str(port), **(env or {})},
                          capture_output=True, text=True, timeout=30)


def test_container_health_check_speaks_tls(tls_face: ServiceProcess, mtls_face: ServiceProcess, pki: Pki) -> None:
    assert run_healthcheck(tls_face.port).returncode == 1, "plaintext check of a TLS server must fail"
    ok = run_healthcheck(tls_face.port, "--tls-ca", str(pki.ca))
    assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stderr
    assert run_healthcheck(mtls_face.port, "--tls-ca", str(pki.ca)).returncode == 1, "mTLS needs a client cert"
    ok = run_healthcheck(mtls_face.port, env={"HEALTHCHECK_TLS_CA": str(pki.ca),
                                              "HEALTHCHECK_TLS_CERT": str(pki.client.cert),
                                              "HEALTHCHECK_TLS_KEY": str(pki.client.key)})
    assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stderr
