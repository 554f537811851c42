"""Malformed-input fuzzing of every service's request path: strategies, the oracle and the harness.

Shared by ``tests/integration/test_fuzz.py`` (a few hundred cases) and
``bench/fuzz_bench.py`` (10,000+), so that both send the same kinds of input
and judge the answers by the same rules. Requests travel as raw bytes over
``channel.unary_unary(path)`` without client-side serialization, so that a
case can be any byte string, not only what the generated stubs would send.

The oracle: every answer is either a consistent reply (frame number and
timestamp echoed, boxes inside the image, confidences in [0, 1], at most
``max_results`` detections, no detector status UNKNOWN/INTERNAL) or an error
whose code is in a precise set for that case, with a message; never UNKNOWN or
INTERNAL, never a hang. After each batch the service must still answer a good
frame correctly and its process must still be alive.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

from protos import detection_pb2 as legacy
from protos import detection_v1_pb2 as v1
from tests.conftest import encode_jpeg, iou
from tests.integration.conftest import ASTRONAUT_FACE, patch_sof_size, png_bytes, sof_position

CALL_TIMEOUT_S = 10.0
# The services' defaults (README, Configuration): what the oracle expects them to enforce.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_FRAME_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
MAX_RESULTS_LIMIT = 100
ALLOWED_USER_IDS = range(0, 6)
# grpc's default header list limit: above it a request may be refused (always above twice it, 16 KiB).
# It counts every header, the standard ones (:path, user-agent, ...: about 600 bytes) too. Above the hard
# limit grpc core resets the call before any service code runs, with RESOURCE_EXHAUSTED and an empty message
# when many headers add up (one big value gets a message): the same from a bare grpc server.
METADATA_SOFT_LIMIT = 8 * 1024
METADATA_HARD_LIMIT = 16 * 1024
STANDARD_HEADERS_BYTES = 1024

UINT32_MAX = 2**32 - 1
BAD_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
KINDS = ("bytes", "fields", "image", "dims", "limits")


# ---------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class Endpoint:
    """One RPC of one server: its wire path and message types."""

    server: str  # "objectdetection", "facedetection" or "yolodetection"
    api: str  # "v1" or "legacy"
    path: str
    request: type[Message]
    response: type[Message]

    def __str__(self) -> str:
        return f"{self.server}-{self.api}"

    @property
    def aggregator(self) -> bool:
        return self.server == "objectdetection"

    @property
    def engine(self) -> int:
        """The engine a detector server runs (ENGINE_UNSPECIFIED for the aggregator)."""
        return {"facedetection": v1.ENGINE_FACE, "yolodetection": v1.ENGINE_YOLO}.get(self.server, 0)


ENDPOINTS = (
    Endpoint("objectdetection", "v1", "/robomesh.detection.v1.ObjectDetection/Detect",
             v1.DetectRequest, v1.DetectResponse),
    Endpoint("objectdetection", "legacy", "/ObjectDetection/ObjectDetect",
             legacy.ObjectDetectionRequest, legacy.ObjectDetectionResponse),
    Endpoint("facedetection", "v1", "/robomesh.detection.v1.FaceDetection/Detect",
             v1.DetectRequest, v1.DetectResponse),
    Endpoint("facedetection", "legacy", "/FaceDetection/FaceDetect",
             legacy.FaceDetectionRequest, legacy.FaceDetectionResponse),
    Endpoint("yolodetection", "v1", "/robomesh.detection.v1.YoloDetection/Detect",
             v1.DetectRequest, v1.DetectResponse),
    Endpoint("yolodetection", "legacy", "/YoloDetection/YoloDetect",
             legacy.YoloDetectionRequest, legacy.YoloDetectionResponse),
)


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Fields:
    """The request fields every API has in some form; ``serialize`` maps them onto an endpoint's message."""

    number: int = 1
    timestamp: int = 0
    jpeg: bytes = b""
    engines: tuple[int, ...] = ()  # v1 only
    max_results: int = 0
    user_id: int = 0  # the aggregators only
    want: tuple[int, int] = (1, 1)  # legacy aggregator: wantface, wantyolo


def build(endpoint: Endpoint, f: Fields) -> Message:
    if endpoint.api == "v1":
        return v1.DetectRequest(frame=v1.Frame(number=f.number, capture_timestamp_us=f.timestamp, jpeg=f.jpeg),
                                engines=list(f.engines), max_results=f.max_results, user_id=f.user_id)
    frame = legacy.VideoFrame(number=f.number, timestamp=f.timestamp, img=f.jpeg)
    if endpoint.aggregator:
        return legacy.ObjectDetectionRequest(user_id=f.user_id, frame=frame, wantface=f.want[0],
                                             wantyolo=f.want[1], max_results=f.max_results)
    return endpoint.request(frame=frame, max_results=f.max_results)


def serialize(endpoint: Endpoint, f: Fields) -> bytes:
    return build(endpoint, f).SerializeToString()


class Case:
    """One request as sent: the payload bytes (the whole serialized message) and the call's metadata.

    A plain class, not a dataclass: hypothesis prints dataclasses field by field, megabyte payloads included.
    """

    def __init__(self, kind: str, payload: bytes, metadata: tuple[tuple[str, str | bytes], ...] = (),
                 note: str = "") -> None:
        self.kind = kind
        self.payload = payload
        self.metadata = metadata
        self.note = note

    def __repr__(self) -> str:
        head = self.payload[:48].hex()
        sizes = [len(v) for _, v in self.metadata]
        return f"Case({self.kind}, {self.note}, {len(self.payload)} B: {head}..., metadata sizes {sizes})"

    @property
    def metadata_bytes(self) -> int:
        """Size as grpc counts it against its limits: name + value + 32 bytes per header (RFC 7541, 4.1)."""
        return sum(len(k) + len(v) + 32 for k, v in self.metadata)


# ---------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Corpus:
    """Real images: the good frames of the after-batch check, and small seeds for the mutations."""

    astronaut_jpeg: bytes  # Haar finds the one face at ASTRONAUT_FACE
    vtest_jpeg: bytes  # YOLO finds persons
    jpegs: tuple[bytes, ...]  # mutation seeds; small, so that the frames that survive stay cheap to detect on
    pngs: tuple[bytes, ...]

    @classmethod
    def load(cls, data_dir: Path) -> Corpus:
        astronaut = cv2.imread(str(data_dir / "astronaut.png"))
        capture = cv2.VideoCapture(str(data_dir / "vtest.avi"))
        try:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 100)
            ok, street = capture.read()
        finally:
            capture.release()
        assert astronaut is not None and ok, f"sample data missing in {data_dir}"
        small_astronaut = cv2.resize(astronaut, (96, 96), interpolation=cv2.INTER_AREA)
        small_street = cv2.resize(street, (160, 120), interpolation=cv2.INTER_AREA)
        ok, progressive = cv2.imencode(".jpg", small_street, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
        assert ok
        odd = cv2.resize(astronaut, (37, 23), interpolation=cv2.INTER_AREA)  # odd sizes: MCU padding
        return cls(
            astronaut_jpeg=encode_jpeg(astronaut),
            vtest_jpeg=encode_jpeg(street),
            jpegs=(encode_jpeg(small_astronaut), encode_jpeg(small_street, quality=60), progressive.tobytes(),
                   encode_jpeg(odd, quality=95)),
            pngs=(png_bytes(small_astronaut), png_bytes(small_street)),
        )


# ---------------------------------------------------------------- strategies


def ints(bits: int, signed: bool = True) -> st.SearchStrategy[int]:
    """Any value of a protobuf integer field, with the edges drawn often."""
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = sorted({v for v in (0, 1, -1, 2, lo, hi, lo + 1, hi - 1, 2**31 - 1, -(2**31), 2**32 - 1)
                    if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def big_random_bytes(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    """Large random blobs from a drawn seed (cheaper than hypothesis' byte-by-byte ``binary``)."""
    return st.builds(lambda seed, n: random.Random(seed).randbytes(n),
                     st.integers(0, UINT32_MAX), st.integers(min_size, max_size))


def mutate(data: bytes, draw: Callable[[st.SearchStrategy[Any]], Any]) -> tuple[bytes, str]:
    """One corruption of ``data``: truncation, bit flips, overwritten/inserted/deleted runs, 0xFF bytes."""
    size = len(data)
    how = draw(st.sampled_from(("truncate", "flip", "overwrite", "insert", "delete", "marker", "tail")))
    pos = draw(st.integers(0, max(size - 1, 0)))
    if how == "truncate":
        return data[:pos], f"truncated at {pos}/{size}"
    if how == "flip":
        flips = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 7)), min_size=1, max_size=8))
        out = bytearray(data)
        for at, bit in flips:
            out[at] ^= 1 << bit
        return bytes(out), f"{len(flips)} bit flips, first at {flips[0][0]}"
    if how == "overwrite":
        run = draw(st.binary(min_size=1, max_size=16))
        return data[:pos] + run + data[pos + len(run):], f"{len(run)} bytes overwritten at {pos}"
    if how == "insert":
        run = draw(st.binary(min_size=1, max_size=16))
        return data[:pos] + run + data[pos:], f"{len(run)} bytes inserted at {pos}"
    if how == "delete":
        n = draw(st.integers(1, 64))
        return data[:pos] + data[pos + n:], f"{n} bytes deleted at {pos}"
    if how == "marker":  # a stray marker: 0xFF followed by any byte
        second = draw(st.integers(0, 255))
        return data[:pos] + bytes([0xFF, second]) + data[pos + 2:], f"0xFF{second:02X} at {pos}"
    tail = draw(st.binary(min_size=1, max_size=32))  # garbage after the end-of-image marker
    return data + tail, f"{len(tail)} bytes after EOI"


@st.composite
def mutated_image(draw: st.DrawFn, corpus: Corpus) -> tuple[bytes, str]:
    """A truncated or corrupted real JPEG (mostly) or PNG."""
    is_png = draw(st.integers(0, 4)) == 0
    seeds = corpus.pngs if is_png else corpus.jpegs
    index = draw(st.integers(0, len(seeds) - 1))
    data, note = mutate(seeds[index], draw)
    return data, f"{'png' if is_png else 'jpeg'}#{index} {note}"


# Start-of-frame types: baseline, extended, progressive, lossless, hierarchical, arithmetic.
SOF_MARKERS = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


@st.composite
def extreme_dims(draw: st.DrawFn, corpus: Corpus) -> tuple[bytes, str]:
    """A real JPEG whose frame header claims other dimensions (0, 65535, ...), or has other header fields.

    Besides the size: the frame type (lossless, arithmetic, ...), the sample precision (12-bit, 16-bit),
    the component count, a component's sampling factors or quantization table.
    """
    dim = st.one_of(st.sampled_from((0, 1, 2, 8, 95, 4095, 4096, 4097, 8192, 32768, 65535)), st.integers(0, 65535))
    width, height = draw(dim), draw(dim)
    index = draw(st.integers(0, len(corpus.jpegs) - 1))
    original = corpus.jpegs[index]
    pos = sof_position(original)
    keep_size = draw(st.integers(0, 2)) == 0
    data = bytearray(original if keep_size else patch_sof_size(original, width, height))
    note = f"jpeg#{index}" + ("" if keep_size else f" claims {width}x{height}")
    field_name = draw(st.sampled_from(("none", "type", "precision", "components", "sampling", "qtable")))
    component = draw(st.integers(0, 2))
    at, value = {
        "type": (pos + 1, st.sampled_from(SOF_MARKERS)),
        "precision": (pos + 4, st.sampled_from((0, 1, 2, 7, 9, 12, 16, 255))),
        "components": (pos + 9, st.sampled_from((0, 1, 2, 4, 255))),
        "sampling": (pos + 11 + 3 * component, st.sampled_from((0x00, 0x12, 0x21, 0x22, 0x44, 0x14, 0x33, 0xFF))),
        "qtable": (pos + 12 + 3 * component, st.integers(0, 255)),
    }.get(field_name, (None, st.just(0)))
    if at is not None:
        data[at] = draw(value)
        note += f", {field_name} byte {data[at]:#04x}"
    return bytes(data), note


def frame_fields(endpoint: Endpoint) -> st.SearchStrategy[dict[str, int]]:
    """Frame number and timestamp of any value the endpoint's message can carry."""
    return st.fixed_dictionaries({"number": ints(64 if endpoint.api == "v1" else 32), "timestamp": ints(64)})


@st.composite
def case_bytes(draw: st.DrawFn, endpoint: Endpoint, corpus: Corpus) -> Case:
    """Random bytes as the whole request, or a real serialized request with its bytes damaged."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return Case("bytes", draw(st.binary(max_size=512)), note="random")
    if choice == 1:
        payload = draw(big_random_bytes(513, 65536))
        return Case("bytes", payload, note="random, large")
    good = serialize(endpoint, Fields(jpeg=draw(st.sampled_from(corpus.jpegs))))
    payload, note = mutate(good, draw)
    return Case("bytes", payload, note=f"serialized request, {note}")


@st.composite
def case_fields(draw: st.DrawFn, endpoint: Endpoint, corpus: Corpus) -> Case:
    """Any value in every field: numbers, timestamps, user ids, unknown engines, max_results."""
    frame = draw(frame_fields(endpoint))
    jpeg = draw(st.one_of(
        st.sampled_from(corpus.jpegs),
        st.sampled_from(corpus.pngs),
        st.just(b""),
        st.binary(max_size=64),
    ))
    engines = draw(st.lists(st.one_of(st.sampled_from((0, 1, 2, 3)), ints(32)), max_size=4))
    user_id = draw(st.one_of(st.sampled_from(tuple(ALLOWED_USER_IDS)), ints(32)))
    want = (draw(st.one_of(st.sampled_from((0, 1)), ints(32))), draw(st.one_of(st.sampled_from((0, 1)), ints(32))))
    max_results = draw(st.one_of(st.integers(0, MAX_RESULTS_LIMIT + 1), ints(32)))
    f = Fields(jpeg=jpeg, engines=tuple(engines), max_results=max_results, user_id=user_id, want=want, **frame)
    return Case("fields", serialize(endpoint, f), note=f"{f.number=} {f.engines=} {f.max_results=} {f.user_id=} "
                f"{f.want=} jpeg {len(jpeg)} B")


@st.composite
def case_image(draw: st.DrawFn, endpoint: Endpoint, corpus: Corpus) -> Case:
    """Truncated and corrupted real JPEGs and PNGs, in an otherwise valid request."""
    image, note = draw(mutated_image(corpus))
    return Case("image", serialize(endpoint, Fields(jpeg=image, **draw(frame_fields(endpoint)))), note=note)


@st.composite
def case_dims(draw: st.DrawFn, endpoint: Endpoint, corpus: Corpus) -> Case:
    image, note = draw(extreme_dims(corpus))
    return Case("dims", serialize(endpoint, Fields(jpeg=image, number=7)), note=note)


# Headers the aggregator copies to its detector calls, and others.
METADATA_KEYS = ("x-request-id", "traceparent", "x-robot-id", "x-b3-traceid", "x-b3-fuzz-bin", "x-fuzz",
                 "x-fuzz-bin")
PRINTABLE = bytes(range(0x20, 0x7F)).decode()  # what grpc lets a header value hold


@st.composite
def case_limits(draw: st.DrawFn, endpoint: Endpoint, corpus: Corpus) -> Case:
    """Extreme max_results, oversized metadata (one big header value), frames around the size limits."""
    jpeg = draw(st.sampled_from(corpus.jpegs))
    choice = draw(st.integers(0, 2))
    if choice == 0:
        max_results = draw(st.one_of(
            st.sampled_from((-(2**31), -1, 0, 1, MAX_RESULTS_LIMIT, MAX_RESULTS_LIMIT + 1, 2**31 - 1)), ints(32)))
        return Case("limits", serialize(endpoint, Fields(jpeg=jpeg, max_results=max_results)),
                    note=f"max_results {max_results}")
    if choice == 1:  # one big header value, or many headers
        key = draw(st.sampled_from(METADATA_KEYS))
        size = draw(st.one_of(st.sampled_from((1024, 8000, 8192, 9000, 16384, 20 * 1024, 64 * 1024)),
                              st.integers(1, 80 * 1024)))
        count = draw(st.sampled_from((1, 1, 1, 2, 64, 512)))
        rng = random.Random(size)
        metadata = []
        for i in range(count):
            name = key if count == 1 else f"{key.removesuffix('-bin')}-{i}" + ("-bin" if key.endswith("-bin") else "")
            n = max(1, size // count)
            value: str | bytes = rng.randbytes(n) if name.endswith("-bin") else "".join(rng.choices(PRINTABLE, k=n))
            metadata.append((name, value))
        return Case("limits", serialize(endpoint, Fields(jpeg=jpeg)), metadata=tuple(metadata),
                    note=f"{count} x {key}: {size} B")
    # Zeros after the end-of-image marker are allowed, so the frame stays a valid JPEG of any size.
    size = draw(st.sampled_from((MAX_FRAME_BYTES - 1, MAX_FRAME_BYTES, MAX_FRAME_BYTES + 1, MAX_MESSAGE_BYTES + 1)))
    big = jpeg + bytes(max(0, size - len(jpeg)))
    return Case("limits", serialize(endpoint, Fields(jpeg=big)), note=f"frame of {size} B")


STRATEGIES: dict[str, Callable[[Endpoint, Corpus], st.SearchStrategy[Case]]] = {
    "bytes": case_bytes, "fields": case_fields, "image": case_image, "dims": case_dims, "limits": case_limits,
}


def cases(endpoint: Endpoint, corpus: Corpus, kind: str) -> st.SearchStrategy[Case]:
    return STRATEGIES[kind](endpoint, corpus)


# ---------------------------------------------------------------- oracle


def parse(message: type[Message], data: bytes) -> Message | None:
    try:
        return message.FromString(data)
    except (DecodeError, RuntimeError, ValueError):
        return None


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a moment (C libraries write there directly)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def decoded_size(jpeg: bytes) -> tuple[int, int] | None:
    """(width, height) as libjpeg decodes the frame, independently of the services' header parser."""
    if not jpeg.startswith(b"\xff\xd8"):
        return None
    with quiet_stderr():  # libjpeg prints a warning for every corrupt frame it still decodes
        image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    return None if image is None else (image.shape[1], image.shape[0])


def allowed_codes(endpoint: Endpoint, case: Case, request: Message | None) -> set[grpc.StatusCode]:
    """The error codes that are a precise answer to this case; anything else is a finding."""
    frame = getattr(request, "frame", None)
    image = (frame.jpeg if hasattr(frame, "jpeg") else frame.img) if frame is not None else b""
    big = (len(case.payload) > MAX_MESSAGE_BYTES or len(image) > MAX_FRAME_BYTES
           or case.metadata_bytes + STANDARD_HEADERS_BYTES > METADATA_SOFT_LIMIT)
    exhausted = {grpc.StatusCode.RESOURCE_EXHAUSTED} if big else set()
    if request is None:
        return {grpc.StatusCode.INVALID_ARGUMENT, *exhausted}
    codes = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, *exhausted}
    if endpoint.aggregator:
        codes.add(grpc.StatusCode.NOT_FOUND)
    return codes


@dataclass
class Outcome:
    code: str  # "OK" or the status code's name
    problems: list[str] = field(default_factory=list)


def detector_status_problems(reply: v1.DetectResponse) -> list[str]:
    problems = []
    names = {c.value[0]: c.name for c in grpc.StatusCode}
    for status in reply.detector_status:
        if status.code in (c.value[0] for c in BAD_CODES):
            problems.append(f"detector status {status.code_name}: {status.message}")
        if names.get(status.code) != status.code_name:
            problems.append(f"detector status code {status.code} named {status.code_name!r}")
    return problems


def reply_problems(endpoint: Endpoint, request: Message, data: bytes) -> list[str]:
    """Checks an OK reply against the request it answers."""
    reply = parse(endpoint.response, data)
    if reply is None:
        return ["reply does not parse"]
    frame = request.frame
    if endpoint.api == "v1":
        echoed = (reply.frame_number, reply.capture_timestamp_us)
        sent = (frame.number, frame.capture_timestamp_us)
        boxes = [(d.box.x, d.box.y, d.box.width, d.box.height, d.confidence) for d in reply.detections]
        engines = {d.engine for d in reply.detections}
    else:
        echoed, sent = (reply.number, reply.timestamp), (frame.number, frame.timestamp)
        items = reply.objects if endpoint.aggregator else reply.faces if endpoint.server == "facedetection" \
            else reply.yolos
        boxes = [(o.x, o.y, o.w, o.h, o.confidence) for o in items]
        engines = {o.eng + 1 for o in reply.objects} if endpoint.aggregator else set()
    problems = [] if echoed == sent else [f"echoed {echoed}, sent {sent}"]
    jpeg = frame.jpeg if endpoint.api == "v1" else frame.img
    if not 0 <= request.max_results <= MAX_RESULTS_LIMIT:
        problems.append(f"accepted max_results {request.max_results}")
    elif len(boxes) > (request.max_results or MAX_RESULTS_LIMIT):
        problems.append(f"{len(boxes)} detections, max_results {request.max_results}")
    size = decoded_size(jpeg)
    # Only the legacy aggregator asked for no engine may answer without a frame ("who serves me": ipv4, name).
    ping = endpoint.aggregator and endpoint.api == "legacy" and not (request.wantface or request.wantyolo)
    if size is None and (jpeg or not ping):
        problems.append(f"accepted a frame that does not decode ({len(jpeg)} bytes)")
    if endpoint.api == "v1":
        problems += detector_status_problems(reply)
        if size is not None and (reply.image_width, reply.image_height) != size:
            problems.append(f"image size {reply.image_width}x{reply.image_height}, decoded {size}")
        if endpoint.aggregator and request.engines:
            asked = set(request.engines)
            if {s.engine for s in reply.detector_status} != asked or not engines <= asked:
                problems.append(f"engines asked {sorted(asked)}, got {reply.detector_status}")
        elif not endpoint.aggregator and engines - {endpoint.engine}:
            problems.append(f"engines {engines} from the {endpoint.server} server")
    elif endpoint.aggregator:
        asked = {e for e, want in ((v1.ENGINE_FACE, request.wantface), (v1.ENGINE_YOLO, request.wantyolo)) if want}
        if not engines <= asked:
            problems.append(f"engines asked {asked}, detections from {engines}")
    width, height = size or (0, 0)
    for x, y, w, h, confidence in boxes:
        if not (min(x, y) >= 0 and min(w, h) > 0 and x + w <= width and y + h <= height):
            problems.append(f"box {(x, y, w, h)} outside the {width}x{height} image")
        if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
            problems.append(f"confidence {confidence}")
    return problems


def judge(endpoint: Endpoint, case: Case, answer: bytes | grpc.RpcError) -> Outcome:
    request = parse(endpoint.request, case.payload)
    if isinstance(answer, grpc.RpcError):
        code, details = answer.code(), answer.details() or ""
        outcome = Outcome(code.name)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            outcome.problems.append(f"no answer within {CALL_TIMEOUT_S} s (hang)")
        elif code not in allowed_codes(endpoint, case, request):
            expected = sorted(c.name for c in allowed_codes(endpoint, case, request))
            outcome.problems.append(f"{code.name} ({details!r}); expected OK or one of {expected}")
        grpc_reset = (code == grpc.StatusCode.RESOURCE_EXHAUSTED
                      and case.metadata_bytes + STANDARD_HEADERS_BYTES > METADATA_HARD_LIMIT)
        if (not details.strip() and not grpc_reset) or "Exception" in details or "Traceback" in details:
            outcome.problems.append(f"{code.name} without a precise message: {details!r}")
        return outcome
    if request is None:
        return Outcome("OK", ["OK for a request that does not parse"])
    return Outcome("OK", reply_problems(endpoint, request, answer))


# ---------------------------------------------------------------- harness


@dataclass
class Finding:
    endpoint: str
    case: str
    problems: list[str]


@dataclass
class GoodFrameCheck:
    endpoint: str
    after_cases: int
    ok: bool
    detail: str


class Harness:
    """Sends cases to running servers, judges the answers, counts codes, checks good frames and liveness."""

    def __init__(self, targets: Mapping[str, str], corpus: Corpus,
                 processes: Mapping[str, subprocess.Popen | None] | None = None) -> None:
        self.corpus = corpus
        self.processes = dict(processes or {})
        # Unlimited send size: frames beyond the server's receive limit must reach the server.
        self.channels = {name: grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])
                         for name, target in targets.items()}
        self.calls = {str(e): self.channels[e.server].unary_unary(e.path, request_serializer=None,
                                                                 response_deserializer=None)
                      for e in ENDPOINTS if e.server in self.channels}
        self.counts: dict[str, Counter[str]] = {str(e): Counter() for e in ENDPOINTS}
        self.by_kind: dict[str, Counter[str]] = {}
        self.findings: list[Finding] = []
        self.good_checks: list[GoodFrameCheck] = []
        self.seconds = 0.0

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()

    def send(self, endpoint: Endpoint, payload: bytes, metadata: Sequence[tuple[str, str | bytes]] = ()
             ) -> bytes | grpc.RpcError:
        try:
            return self.calls[str(endpoint)](payload, metadata=tuple(metadata), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            return err

    def run(self, endpoint: Endpoint, case: Case) -> Outcome:
        """One case: send, judge, count; the outcome's problems are also kept as findings."""
        started = time.perf_counter()
        outcome = judge(endpoint, case, self.send(endpoint, case.payload, case.metadata))
        outcome.problems += self.dead()
        self.seconds += time.perf_counter() - started
        self.counts[str(endpoint)][outcome.code] += 1
        self.by_kind.setdefault(case.kind, Counter())[outcome.code] += 1
        if outcome.problems:
            self.findings.append(Finding(str(endpoint), repr(case), outcome.problems))
        return outcome

    def dead(self) -> list[str]:
        return [f"{name} exited with code {p.returncode}" for name, p in self.processes.items()
                if p is not None and p.poll() is not None]

    def good_frame(self, endpoint: Endpoint) -> GoodFrameCheck:
        """The astronaut's face (face server, aggregator) or a person in a vtest frame (YOLO) comes back."""
        yolo = endpoint.server == "yolodetection"
        jpeg = self.corpus.vtest_jpeg if yolo else self.corpus.astronaut_jpeg
        f = Fields(number=4242, timestamp=1_700_000_000_000_000, jpeg=jpeg, want=(1, 0))
        answer = self.send(endpoint, serialize(endpoint, f))
        detail = ""
        if isinstance(answer, grpc.RpcError):
            detail = f"{answer.code().name}: {answer.details()}"
        else:
            problems = reply_problems(endpoint, build(endpoint, f), answer)
            reply = endpoint.response.FromString(answer)
            items = (reply.detections if endpoint.api == "v1" else reply.objects if endpoint.aggregator
                     else reply.faces if endpoint.server == "facedetection" else reply.yolos)
            if yolo:
                names = [getattr(d, "class_name", "") or getattr(d, "name", "") for d in items]
                if "person" not in names:
                    problems.append(f"no person found: {names}")
            else:
                boxes = [(d.box.x, d.box.y, d.box.width, d.box.height) if endpoint.api == "v1"
                         else (d.x, d.y, d.w, d.h) for d in items]
                if not any(iou(b, ASTRONAUT_FACE) > 0.5 for b in boxes):
                    problems.append(f"the astronaut's face not found: {boxes}")
            detail = "; ".join(problems)
        problems = [detail] if detail else []
        problems += self.dead()
        check = GoodFrameCheck(str(endpoint), sum(self.counts[str(endpoint)].values()), not problems,
                               "; ".join(problems) or "ok")
        self.good_checks.append(check)
        return check

    def summary(self) -> dict[str, Any]:
        return {
            "cases": sum(sum(c.values()) for c in self.counts.values()),
            "seconds": round(self.seconds, 1),
            "per_endpoint": {name: dict(sorted(c.items())) for name, c in self.counts.items()},
            "per_kind": {kind: dict(sorted(c.items())) for kind, c in self.by_kind.items()},
            "crashes": len(self.dead()),
            "findings": [replace(f, problems=f.problems[:5]).__dict__ for f in self.findings],
            "good_frame_checks": [c.__dict__ for c in self.good_checks],
        }
