"""The aggregator's request path, shared by its v1 and legacy services."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from protos import detection_v1_pb2 as v1
from protos import timings as stage
from protos.deadline import Deadline
from services.common.detections import served_by_message
from services.common.errors import RequestError
from services.common.identity import ServedByInfo
from services.common.imaging import ImageLimits, validate_jpeg
from services.common.metrics import ServiceMetrics
from services.common.rpc import checked_max_results
from services.objectdetection.fanout import REPLY_MARGIN_S, FanOut
from services.objectdetection.merge import UserIdRule, frame_error, merge_detections, wanted_engines


@dataclass(frozen=True)
class FrameCall:
    """What the servicers pass in: the v1 request plus what gRPC knows about the call.

    ``deadline``: the caller's, on the aggregator's clock (``NO_DEADLINE`` when the call has none).
    """

    request: v1.DetectRequest
    deadline: Deadline
    metadata: Sequence[tuple[str, str | bytes]]


class Aggregator:
    def __init__(
        self,
        fanout: FanOut,
        users: UserIdRule,
        limits: ImageLimits,
        max_results_limit: int,
        served_by: ServedByInfo,
        metrics: ServiceMetrics,
        on_frame: Callable[[v1.DetectRequest, v1.DetectResponse], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock``: monotonic seconds, for the stage times and the callers' deadlines alike.

        ``on_frame``: told of each answered frame (the live view); it must only keep references.
        """
        self.fanout = fanout
        self.users = users
        self.limits = limits
        self.max_results_limit = max_results_limit
        self.served_by = served_by
        self.served_by_message = served_by_message(served_by)
        self.metrics = metrics
        self.on_frame = on_frame
        self.clock = clock

    def detect(self, call: FrameCall) -> v1.DetectResponse:
        started = self.clock()
        request = call.request
        self.users.check(request.user_id)
        cap = checked_max_results(request.max_results, self.max_results_limit)
        engines = wanted_engines(request.engines, self.fanout.engines)
        info = validate_jpeg(request.frame.jpeg, self.limits)  # header only: the detectors decode
        if call.deadline.expired(started, REPLY_MARGIN_S):
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"deadline too short: {call.deadline.remaining(started) * 1000:.1f} ms left on arrival")
        now = self.clock()
        timings = {stage.VALIDATE: (now - started) * 1000.0}
        outcomes = self.fanout.run(request, engines, self.fanout.timeout_for(call.deadline, now), call.metadata)
        statuses, per_engine = [], []
        for outcome in outcomes:
            key = stage.DETECTOR_KEYS[outcome.engine]
            latency_ms = outcome.latency_s * 1000.0
            timings[key] = latency_ms
            self.metrics.observe_detector(key, outcome.code.name, outcome.latency_s)
            status = v1.DetectorStatus(engine=outcome.engine, code=outcome.code.value[0],
                                       code_name=outcome.code.name, message=outcome.message, latency_ms=latency_ms)
            if outcome.reply is not None:
                status.served_by.CopyFrom(outcome.reply.served_by)
                status.detections = len(outcome.reply.detections)
                per_engine.append(outcome.reply.detections)
                timings.update(stage.prefixed(key, outcome.reply.timings_ms))
            statuses.append(status)
        if error := frame_error(statuses):
            raise error
        detections = merge_detections(per_engine, cap)
        timings[stage.TOTAL] = (self.clock() - started) * 1000.0
        self.metrics.observe_stages(stage.own_stages(timings))
        for engine, key in stage.DETECTOR_KEYS.items():
            self.metrics.count_detections(key, sum(1 for d in detections if d.engine == engine))
        reply = v1.DetectResponse(
            frame_number=request.frame.number,
            capture_timestamp_us=request.frame.capture_timestamp_us,
            detections=detections,
            detector_status=statuses,
            timings_ms=timings,
            served_by=self.served_by_message,
            image_width=info.width,
            image_height=info.height,
        )
        if self.on_frame is not None:
            self.on_frame(request, reply)
        return reply
