"""The request path shared by the face and YOLO servers, and their v1 servicer.

Validate (header only) -> decode once at the size the detector needs ->
detect -> reply. The legacy servicers reuse ``DetectorCore.run``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from protos import detection_v1_pb2 as v1
from protos import timings as stage
from protos.deadline import NO_DEADLINE, Deadline
from services.common.detections import Detector, Found, detection_message, served_by_message
from services.common.errors import invalid
from services.common.identity import ServedByInfo
from services.common.imaging import ImageLimits, decode_jpeg, validate_jpeg
from services.common.metrics import ServiceMetrics
from services.common.rpc import Loaded, checked_max_results, handle_rpc


@dataclass
class FrameResult:
    found: list[Found]
    width: int
    height: int
    timings_ms: dict[str, float] = field(default_factory=dict)


class DetectorCore:
    """One implementation behind both the v1 and the legacy service of a detector server."""

    def __init__(
        self,
        detector: Loaded[Detector],
        limits: ImageLimits,
        max_results_limit: int,
        served_by: ServedByInfo,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.perf_counter,
        inject_delay_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.detector = detector
        self.limits = limits
        self.max_results_limit = max_results_limit
        self.served_by = served_by
        self.metrics = metrics
        self.clock = clock
        self.inject_delay_s = inject_delay_s
        self.sleep = sleep

    def run(self, jpeg: bytes, max_results: int, deadline: Deadline = NO_DEADLINE) -> FrameResult:
        """``deadline``: the caller's, on ``time.monotonic`` (see ``deadline_of``)."""
        started = self.clock()
        cap = checked_max_results(max_results, self.max_results_limit)
        info = validate_jpeg(jpeg, self.limits)
        detector = self.detector.get()
        if self.inject_delay_s:  # fault injection for experiments (--inject-delay-ms)
            self.sleep(self.inject_delay_s)
        t0 = self.clock()
        reduce = detector.decode_reduction(info.width, info.height)
        image = decode_jpeg(jpeg, info, reduce)
        timings = {stage.DECODE: (self.clock() - t0) * 1000.0}
        scale = info.width / image.shape[1]
        detected = detector.detect(image, scale, deadline)
        timings.update(detected.stages_ms)
        found = sorted(detected.found, key=lambda f: f.confidence, reverse=True)[:cap]
        timings[stage.TOTAL] = (self.clock() - started) * 1000.0
        self.metrics.observe_stages(timings)
        self.metrics.count_detections(v1.Engine.Name(detector.engine), len(found))
        return FrameResult(found=found, width=info.width, height=info.height, timings_ms=timings)

    def current_served_by(self) -> ServedByInfo:
        try:
            return self.served_by.with_device(self.detector.get().device)
        except Exception:
            return self.served_by


def deadline_of(context: grpc.ServicerContext, clock: Callable[[], float] = time.monotonic) -> Deadline:
    """The caller's gRPC deadline on this process's monotonic clock (``NO_DEADLINE`` when the call has none)."""
    return Deadline.from_grpc_context(context, clock())


class DetectorV1Servicer:
    """``Detect`` of robomesh.detection.v1.FaceDetection / YoloDetection."""

    def __init__(self, core: DetectorCore, engine: int) -> None:
        self.core = core
        self.engine = engine

    def Detect(self, request: v1.DetectRequest, context: grpc.ServicerContext) -> v1.DetectResponse:
        def work() -> v1.DetectResponse:
            if request.engines and self.engine not in request.engines:
                raise invalid(f"this service runs only {v1.Engine.Name(self.engine)}; got {list(request.engines)}")
            result = self.core.run(request.frame.jpeg, request.max_results, deadline_of(context))
            served_by = served_by_message(self.core.current_served_by())
            return v1.DetectResponse(
                frame_number=request.frame.number,
                capture_timestamp_us=request.frame.capture_timestamp_us,
                detections=[detection_message(f, self.engine) for f in result.found],
                detector_status=[v1.DetectorStatus(
                    engine=self.engine, code=0, code_name="OK", latency_ms=result.timings_ms[stage.TOTAL],
                    served_by=served_by, detections=len(result.found))],
                timings_ms=result.timings_ms,
                served_by=served_by,
                image_width=result.width,
                image_height=result.height,
            )

        return handle_rpc("v1.Detect", context, self.core.metrics, work)
