"""60 s soak of the shared stack under the mixed load of tests/soaking.py: no leak of memory, threads or descriptors.

``bench/soak.py`` runs the same for 10 minutes.
"""

from __future__ import annotations

from services.launcher import LocalStack
from tests.integration.conftest import ASTRONAUT_FACE, CALL_TIMEOUT_S, box, iou, v1_request
from tests.soaking import Targets, soak

SECONDS, WARMUP_S, INTERVAL_S = 60.0, 20.0, 2.0


def test_a_minute_of_mixed_load_leaks_nothing(stack: LocalStack, vtest_jpegs: list[bytes], aggregator,
                                              astronaut_jpeg: bytes) -> None:
    pids = {s.name: s.process.pid for s in stack.services if s.process is not None}
    assert len(pids) == 3
    report = soak(Targets(stack.aggregator.target, stack.face.target, stack.yolo.target), pids, vtest_jpegs[:30],
                  SECONDS, WARMUP_S, INTERVAL_S)
    assert report.leaks == [], report.verdicts
    # The load really ran on every path, with the statuses each path must give.
    codes = report.codes
    busy = "RESOURCE_EXHAUSTED"  # any request may find the slots taken
    assert codes["stream"].get("OK", 0) >= 50 and set(codes["stream"]) <= {"OK", busy}, codes
    assert codes["malformed"].get("INVALID_ARGUMENT", 0) >= 20 and set(codes["malformed"]) <= {"INVALID_ARGUMENT", busy}
    assert codes["deadline"].get("DEADLINE_EXCEEDED", 0) >= 1 and set(codes["deadline"]) <= {"DEADLINE_EXCEEDED", busy}
    assert codes["legacy"].get("OK", 0) >= 10 and codes["reconnect"].get("OK", 0) >= 5, codes
    assert set(codes["legacy"]) | set(codes["reconnect"]) <= {"OK", busy}, codes
    assert any(busy in outcome for outcome in codes["burst"]), codes
    assert all(s.process is not None and s.process.poll() is None for s in stack.services)
    # And the mesh still answers a good frame correctly.
    reply = aggregator.Detect(v1_request(astronaut_jpeg), timeout=CALL_TIMEOUT_S)
    faces = [d for d in reply.detections if d.class_name == "face"]
    assert len(faces) == 1 and iou(box(faces[0]), ASTRONAUT_FACE) > 0.5
