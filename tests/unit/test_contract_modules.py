"""The hand-written parts of the wire contract: protos.timings (the keys of timings_ms) and protos.deadline."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

from protos import detection_v1_pb2 as v1
from protos import timings as stage
from protos.deadline import NO_DEADLINE, Deadline

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- timings_ms keys


def test_detector_stages_are_prefixed_and_parsed_back() -> None:
    reply = {stage.DECODE: 5.0, stage.WAIT: 20.0, stage.DNN: 50.0, stage.TOTAL: 80.0}
    forwarded = stage.prefixed(stage.YOLO, reply)
    assert forwarded == {"yolo.decode": 5.0, "yolo.wait": 20.0, "yolo.dnn": 50.0, "yolo.total": 80.0}
    aggregated = {stage.VALIDATE: 0.5, stage.YOLO: 85.0, stage.TOTAL: 86.0, **forwarded,
                  **stage.prefixed(stage.FACE, {stage.HAAR: 30.0})}
    assert stage.by_detector(aggregated) == {stage.YOLO: reply, stage.FACE: {stage.HAAR: 30.0}}
    assert stage.own_stages(aggregated) == {"validate": 0.5, "yolo": 85.0, "total": 86.0}


def test_keys_split_into_detector_and_stage() -> None:
    assert stage.split_key("face.haar") == ("face", "haar")
    assert stage.split_key("total") == ("", "total")
    assert stage.split_key("yolo.") == ("", "yolo.")  # no stage after the separator: not a detector's
    assert stage.detector_key("face", "wait") == "face.wait"
    for bad in ("", "face.x"):
        with pytest.raises(ValueError):
            stage.detector_key(bad, "wait")


def test_every_v1_engine_has_a_detector_key_with_its_stages() -> None:
    engines = {value for name, value in v1.Engine.items() if name != "ENGINE_UNSPECIFIED"}
    assert set(stage.DETECTOR_KEYS) == engines
    assert set(stage.DETECTOR_KEYS.values()) == set(stage.DETECTOR_STAGES)
    for stages in stage.DETECTOR_STAGES.values():
        assert stage.DECODE in stages and stage.TOTAL in stages and stage.WAIT in stages
    with pytest.raises(TypeError):
        stage.DETECTOR_KEYS[99] = "x"  # type: ignore[index]  # read-only: no module-level mutable state


def test_the_readme_lists_every_stage_key_and_no_other() -> None:
    """The README's `timings_ms` list, word for word against protos.timings."""
    readme = (REPO / "README.md").read_text()
    (listing,) = re.findall(r"`timings_ms` per stage \((.*?)\)", readme, flags=re.S)
    listed = set(re.findall(r"`([a-z.]+)`", listing))
    declared = {*stage.AGGREGATOR_STAGES}
    declared |= {stage.detector_key(d, s) for d, names in stage.DETECTOR_STAGES.items() for s in names}
    assert listed == declared


def test_generate_writes_only_the_stubs(tmp_path: Path) -> None:
    """`python -m protos.generate` must never overwrite the hand-written modules beside the stubs."""
    from protos.generate import generate

    written = generate(tmp_path)
    assert {p.name for p in (tmp_path / "protos").iterdir()} == {p.name for p in written}
    assert all("_pb2" in p.name for p in written)
    hand_written = {"__init__.py", "generate.py", "timings.py", "deadline.py"}
    assert not hand_written & {p.name for p in written}
    assert hand_written <= {p.name for p in (REPO / "protos").glob("*.py")}


# ---------------------------------------------------------------- deadline


def test_a_deadline_counts_down_from_its_start() -> None:
    deadline = Deadline.after(1.0, 10.0)  # a frame captured at t=10 with a 1 s budget
    assert deadline.at == 11.0 and deadline.bounded
    assert deadline.remaining(10.25) == pytest.approx(0.75)
    assert not deadline.expired(10.99)
    assert deadline.expired(11.0)  # passed at the instant itself
    assert deadline.expired(10.996, margin=0.005) and not deadline.expired(10.994, margin=0.005)
    assert deadline.remaining(12.0) == pytest.approx(-1.0)


def test_the_call_timeout_is_what_is_left_less_a_margin_and_capped() -> None:
    deadline = Deadline.after(0.3, 0.0)
    assert deadline.for_call(0.1) == pytest.approx(0.2)
    assert deadline.for_call(0.1, margin=0.05) == pytest.approx(0.15)
    assert deadline.for_call(0.1, 0.05, cap=0.1) == pytest.approx(0.1)
    assert deadline.for_call(0.29, margin=0.05) == 0.0  # never negative
    assert deadline.for_call(1.0) == 0.0
    assert NO_DEADLINE.for_call(5.0) is None  # no timeout at all
    assert NO_DEADLINE.for_call(5.0, 0.05, cap=2.0) == 2.0
    assert not NO_DEADLINE.expired(1e12, margin=1e6) and not NO_DEADLINE.bounded


class FakeContext:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def test_a_deadline_crosses_a_call_as_its_timeout() -> None:
    """The caller's timeout becomes the server's deadline on the server's own clock."""
    robot = Deadline.after(1.0, 50.0)
    timeout = robot.for_call(50.4)
    server = Deadline.from_grpc_context(FakeContext(timeout), now=7000.0)
    assert server.at == pytest.approx(7000.6)
    assert Deadline.from_grpc_context(FakeContext(None), now=7000.0) == NO_DEADLINE
    assert Deadline.from_timeout(None, 3.0) is NO_DEADLINE and Deadline.from_timeout(2.0, 3.0) == Deadline(5.0)
    # gRPC reports a call without a deadline as a huge time left: the cap still applies.
    assert Deadline.from_grpc_context(FakeContext(1e18), now=0.0).for_call(0.0, 0.05, cap=1.0) == 1.0


def test_a_deadline_is_an_immutable_value() -> None:
    deadline = Deadline(3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        deadline.at = 4.0  # type: ignore[misc]
    assert deadline == Deadline(3.0) and hash(deadline) == hash(Deadline(3.0))
    with pytest.raises(ValueError):
        Deadline(math.nan)
