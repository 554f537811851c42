"""Real servers in subprocesses on free loopback ports, and the helpers the integration tests share.

One LocalStack (facedetection + yolodetection + objectdetection, metrics on)
serves the whole session; tests that need special flags start their own
processes with ``spawn``.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from protos import detection_pb2 as legacy
from protos import detection_pb2_grpc as legacy_grpc
from protos import detection_v1_pb2 as v1
from protos import detection_v1_pb2_grpc as v1_grpc
from services.launcher import LocalStack, ServiceProcess, free_port, wait_serving
from tests.conftest import encode_jpeg, iou  # noqa: F401  (re-exported for the tests)

# Identity of the shared stack, as Kubernetes' Downward API would set it.
STACK_ENV = {"POD_IP": "127.0.0.1", "NODE_NAME": "it-node", "SITE": "it-site", "SERVICE_VERSION": "it-1"}
LOOPBACK_AS_INT = int(ipaddress.IPv4Address("127.0.0.1"))
ASTRONAUT_FACE = (176, 66, 95, 95)  # x, y, w, h where Haar finds the one face (DESIGN.md section 4)
CALL_TIMEOUT_S = 10.0
START_TIMEOUT_S = 90.0


def box(d: v1.Detection) -> tuple[int, int, int, int]:
    return d.box.x, d.box.y, d.box.width, d.box.height


def v1_request(jpeg: bytes, number: int = 1, timestamp_us: int = 0, engines: tuple[int, ...] = (),
               max_results: int = 0, user_id: int = 0) -> v1.DetectRequest:
    return v1.DetectRequest(frame=v1.Frame(number=number, capture_timestamp_us=timestamp_us, jpeg=jpeg),
                            engines=list(engines), max_results=max_results, user_id=user_id)


def legacy_frame(jpeg: bytes, number: int = 1, timestamp: int = 0) -> legacy.VideoFrame:
    return legacy.VideoFrame(number=number, timestamp=timestamp, img=jpeg)


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """Runs ``call``, which must fail with a gRPC status; returns the error."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


# ---------------------------------------------------------------- processes


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def stack(model_paths: object, data_dir: Path, log_dir: Path) -> Iterator[LocalStack]:
    """The shared stack; its logs are in ``log_dir`` (pytest's basetemp) when something fails."""
    local = LocalStack(metrics=True, log_dir=log_dir)
    for service in local.services:
        service.env.update(STACK_ENV)
    local.start(START_TIMEOUT_S)
    yield local
    exit_codes = local.stop()
    assert exit_codes == {"objectdetection": 0, "yolodetection": 0, "facedetection": 0}, exit_codes


class Spawner:
    """Starts extra servers with special flags, each on a free port; stops them all at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ServiceProcess] = []

    _numbers = itertools.count()

    def __call__(self, name: str, *args: str, wait: bool = True) -> ServiceProcess:
        service = ServiceProcess(name, free_port(), ["--metrics-port", "-1", *args], env=dict(STACK_ENV),
                                 log_path=self.log_dir / f"{name}-{next(self._numbers)}.log")
        service.start()
        self.started.append(service)
        if wait:
            wait_serving(service.target, START_TIMEOUT_S, service.process)
        return service

    def stop_all(self) -> None:
        for service in reversed(self.started):
            service.stop()


@pytest.fixture(scope="module")
def spawn(log_dir: Path) -> Iterator[Spawner]:
    spawner = Spawner(log_dir)
    yield spawner
    spawner.stop_all()


# ---------------------------------------------------------------- channels and stubs


@pytest.fixture(scope="session")
def channels(stack: LocalStack) -> Iterator[dict[str, grpc.Channel]]:
    opened = {s.name: grpc.insecure_channel(s.target) for s in stack.services}
    yield opened
    for channel in opened.values():
        channel.close()


@pytest.fixture(scope="session")
def aggregator(channels: dict[str, grpc.Channel]) -> v1_grpc.ObjectDetectionStub:
    return v1_grpc.ObjectDetectionStub(channels["objectdetection"])


@pytest.fixture(scope="session")
def face(channels: dict[str, grpc.Channel]) -> v1_grpc.FaceDetectionStub:
    return v1_grpc.FaceDetectionStub(channels["facedetection"])


@pytest.fixture(scope="session")
def yolo(channels: dict[str, grpc.Channel]) -> v1_grpc.YoloDetectionStub:
    return v1_grpc.YoloDetectionStub(channels["yolodetection"])


@pytest.fixture(scope="session")
def legacy_aggregator(channels: dict[str, grpc.Channel]) -> legacy_grpc.ObjectDetectionStub:
    return legacy_grpc.ObjectDetectionStub(channels["objectdetection"])


@pytest.fixture(scope="session")
def legacy_face(channels: dict[str, grpc.Channel]) -> legacy_grpc.FaceDetectionStub:
    return legacy_grpc.FaceDetectionStub(channels["facedetection"])


@pytest.fixture(scope="session")
def legacy_yolo(channels: dict[str, grpc.Channel]) -> legacy_grpc.YoloDetectionStub:
    return legacy_grpc.YoloDetectionStub(channels["yolodetection"])


# ---------------------------------------------------------------- crafted frames


def jpeg_segments(jpeg: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, position, length) of every segment up to and including the start of scan."""
    pos = 2
    while True:
        marker = jpeg[pos + 1]
        length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        yield marker, pos, length
        if marker == 0xDA:
            return
        pos += 2 + length


def sof_position(jpeg: bytes) -> int:
    return next(pos for marker, pos, _ in jpeg_segments(jpeg) if marker in (0xC0, 0xC1, 0xC2))


def patch_sof_size(jpeg: bytes, width: int, height: int) -> bytes:
    data = bytearray(jpeg)
    pos = sof_position(jpeg)
    data[pos + 5 : pos + 7] = height.to_bytes(2, "big")
    data[pos + 7 : pos + 9] = width.to_bytes(2, "big")
    return bytes(data)


def four_component_jpeg(jpeg: bytes) -> bytes:
    """A colour JPEG whose frame header declares a 4th component (CMYK/YCCK layout: 4 x 3 bytes).

    Neither cv2 nor anything installed here writes CMYK JPEGs, so the header is
    rewritten: component count 4, segment length 8 + 3 * 4, a 4th component
    spec. The scan still codes 3 components; the services must refuse the
    frame on its header, before any decoding.
    """
    pos = sof_position(jpeg)
    length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
    assert jpeg[pos + 9] == 3 and length == 8 + 3 * 3
    header = bytearray(jpeg[pos : pos + 2 + length])
    header[2:4] = (8 + 3 * 4).to_bytes(2, "big")
    header[9] = 4
    header += bytes([4, 0x11, 0])  # component id 4, no subsampling, quantisation table 0
    return jpeg[:pos] + bytes(header) + jpeg[pos + 2 + length :]


def scan_start(jpeg: bytes) -> int:
    _, pos, length = list(jpeg_segments(jpeg))[-1]
    return pos + 2 + length


def garbage_scan_jpeg(jpeg: bytes, seed: int = 1) -> bytes:
    """Every header intact; the entropy-coded data replaced by random bytes of the same length."""
    start = scan_start(jpeg)
    noise = random.Random(seed).randbytes(len(jpeg) - start - 2)
    return jpeg[:start] + noise + b"\xff\xd9"


def bogus_huffman_jpeg(jpeg: bytes) -> bytes:
    """Well-formed marker structure, but the first Huffman table declares more codes than can exist.

    Only a decoder notices: libjpeg stops with "Bogus Huffman table definition".
    """
    data = bytearray(jpeg)
    pos = next(pos for marker, pos, _ in jpeg_segments(jpeg) if marker == 0xC4)
    data[pos + 5 : pos + 5 + 16] = b"\xff" * 16  # the 16 code-length counts
    return bytes(data)


def random_bytes(n: int, seed: int = 7) -> bytes:
    data = random.Random(seed).randbytes(n)
    return b"\x00" + data[1:]  # never a JPEG/PNG signature by chance


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def grayscale_jpeg(image: np.ndarray) -> bytes:
    return encode_jpeg(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
