"""The aggregator's pure rules."""

from __future__ import annotations

import grpc
import pytest

from protos import detection_v1_pb2 as v1
from protos.deadline import NO_DEADLINE, Deadline
from services.common.errors import RequestError
from services.common.rpc import Loaded, checked_max_results
from services.objectdetection.fanout import REPLY_MARGIN_S, FanOut
from services.objectdetection.merge import (
    UserIdRule,
    frame_error,
    merge_detections,
    tracing_metadata,
    wanted_engines,
)


def test_user_ids_follow_the_original_rule_by_default() -> None:
    rule = UserIdRule()
    for user in range(6):
        rule.check(user)
    with pytest.raises(RequestError) as caught:
        rule.check(6)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "unknown user_id 6" in caught.value.message
    with pytest.raises(RequestError):
        rule.check(-1)


@pytest.mark.parametrize(("text", "low", "high"), [("0-5", 0, 5), ("3", 3, 3), ("2-10", 2, 10), ("any", None, None)])
def test_user_id_rules_parse(text: str, low: int | None, high: int | None) -> None:
    rule = UserIdRule.parse(text)
    assert (rule.low, rule.high) == (low, high)


def test_any_user_id_rule_allows_everyone_and_bad_rules_are_refused() -> None:
    UserIdRule.parse("any").check(12345)
    for bad in ("5-1", "a-b", "1-"):
        with pytest.raises(ValueError):
            UserIdRule.parse(bad)


def test_engines_default_to_all_and_unknown_ones_are_refused_by_name() -> None:
    available = [v1.ENGINE_FACE, v1.ENGINE_YOLO]
    assert wanted_engines([], available) == available
    assert wanted_engines([v1.ENGINE_YOLO, v1.ENGINE_YOLO], available) == [v1.ENGINE_YOLO]
    with pytest.raises(RequestError, match="ENGINE_FACE is not served"):
        wanted_engines([v1.ENGINE_FACE], [v1.ENGINE_YOLO])
    with pytest.raises(RequestError, match="engine 42"):
        wanted_engines([42], available)


def test_only_tracing_headers_and_the_robot_id_are_forwarded() -> None:
    incoming = [("x-request-id", "r1"), ("traceparent", "00-abc"), ("x-b3-traceid", "t"), ("b3", "x"),
                ("tracestate", "s"), ("authorization", "secret"), ("user-agent", "grpc"), ("x-robot-id", "2")]
    assert dict(tracing_metadata(incoming)) == {"x-request-id": "r1", "traceparent": "00-abc", "x-b3-traceid": "t",
                                                "b3": "x", "tracestate": "s", "x-robot-id": "2"}


def _det(name: str, engine: int, confidence: float) -> v1.Detection:
    return v1.Detection(class_name=name, engine=engine, confidence=confidence)


def test_merge_orders_by_confidence_across_engines_and_caps() -> None:
    faces = [_det("face", v1.ENGINE_FACE, 0.6)]
    objects = [_det("person", v1.ENGINE_YOLO, 0.9), _det("dog", v1.ENGINE_YOLO, 0.3)]
    merged = merge_detections([faces, objects], max_results=2)
    assert [(d.class_name, round(d.confidence, 2)) for d in merged] == [("person", 0.9), ("face", 0.6)]


def test_a_frame_every_detector_refuses_is_the_callers_error() -> None:
    bad = v1.DetectorStatus(engine=v1.ENGINE_FACE, code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="corrupt")
    down = v1.DetectorStatus(engine=v1.ENGINE_YOLO, code=grpc.StatusCode.UNAVAILABLE.value[0])
    ok = v1.DetectorStatus(engine=v1.ENGINE_YOLO, code=0)
    error = frame_error([bad, bad])
    assert error is not None and error.code == grpc.StatusCode.INVALID_ARGUMENT and error.message == "corrupt"
    assert frame_error([bad, down]) is None  # partial: one detector's refusal is not the frame's
    assert frame_error([ok]) is None
    assert frame_error([]) is None


def test_a_frame_every_detector_refuses_as_overloaded_is_refused_as_overloaded() -> None:
    busy = [v1.DetectorStatus(engine=e, code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message=f"busy {e}")
            for e in (v1.ENGINE_FACE, v1.ENGINE_YOLO)]
    ok = v1.DetectorStatus(engine=v1.ENGINE_YOLO, code=0)
    error = frame_error(busy)
    assert error is not None and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "every detector is overloaded" in error.message and "busy 2" in error.message
    assert frame_error([busy[0], ok]) is None  # the other detector answered: a partial reply


def test_detector_timeout_follows_the_callers_deadline() -> None:
    fanout = FanOut([], default_timeout_s=1.0)
    now = 100.0
    assert fanout.timeout_for(NO_DEADLINE, now) == 1.0  # a caller without a deadline: --detector-timeout
    assert fanout.timeout_for(Deadline.after(5.0, now), now) == 1.0
    assert fanout.timeout_for(Deadline.after(0.3, now), now) == pytest.approx(0.3 - REPLY_MARGIN_S)
    # Time spent in the aggregator since the call arrived comes off the detectors' share.
    assert fanout.timeout_for(Deadline.after(0.3, now), now + 0.1) == pytest.approx(0.2 - REPLY_MARGIN_S)
    assert fanout.timeout_for(Deadline.after(0.001, now), now) == 0.0


def test_max_results_zero_means_the_limit_and_out_of_range_is_refused() -> None:
    assert checked_max_results(0, 100) == 100
    assert checked_max_results(7, 100) == 7
    for bad in (-1, 101, 2**31 - 1):
        with pytest.raises(RequestError) as caught:
            checked_max_results(bad, 100)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_model_still_loading_answers_unavailable() -> None:
    slot: Loaded[str] = Loaded()
    with pytest.raises(RequestError) as caught:
        slot.get()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    slot.set("model")
    assert slot.get() == "model"
