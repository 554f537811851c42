"""Adapters from the shared detector path to the legacy LIQUID EDGE messages."""

from __future__ import annotations

import grpc

from protos import detection_pb2 as legacy
from services.common.detector_service import DetectorCore, deadline_of
from services.common.rpc import handle_rpc


class LegacyFaceServicer:
    """``/FaceDetection/FaceDetect`` of the original protocol."""

    def __init__(self, core: DetectorCore) -> None:
        self.core = core

    def FaceDetect(self, request: legacy.FaceDetectionRequest, context: grpc.ServicerContext
                   ) -> legacy.FaceDetectionResponse:
        def work() -> legacy.FaceDetectionResponse:
            result = self.core.run(request.frame.img, request.max_results, deadline_of(context))
            return legacy.FaceDetectionResponse(
                number=request.frame.number,
                timestamp=request.frame.timestamp,
                faces=[legacy.DetectedFace(confidence=f.confidence, x=f.x, y=f.y, w=f.w, h=f.h,
                                           r=f.rgb[0], g=f.rgb[1], b=f.rgb[2]) for f in result.found],
            )

        return handle_rpc("legacy.FaceDetect", context, self.core.metrics, work)


class LegacyYoloServicer:
    """``/YoloDetection/YoloDetect`` of the original protocol."""

    def __init__(self, core: DetectorCore) -> None:
        self.core = core

    def YoloDetect(self, request: legacy.YoloDetectionRequest, context: grpc.ServicerContext
                   ) -> legacy.YoloDetectionResponse:
        def work() -> legacy.YoloDetectionResponse:
            result = self.core.run(request.frame.img, request.max_results, deadline_of(context))
            return legacy.YoloDetectionResponse(
                number=request.frame.number,
                timestamp=request.frame.timestamp,
                yolos=[legacy.DetectedYolo(name=f.class_name, confidence=f.confidence, x=f.x, y=f.y, w=f.w,
                                           h=f.h, r=f.rgb[0], g=f.rgb[1], b=f.rgb[2]) for f in result.found],
            )

        return handle_rpc("legacy.YoloDetect", context, self.core.metrics, work)
