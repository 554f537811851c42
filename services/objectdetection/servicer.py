"""gRPC adapters of the aggregator: robomesh.detection.v1.ObjectDetection and the legacy ObjectDetection."""

from __future__ import annotations

import grpc

from protos import detection_pb2 as legacy
from protos import detection_v1_pb2 as v1
from protos.deadline import Deadline
from services.common.imaging import validate_jpeg
from services.common.rpc import checked_max_results, handle_rpc
from services.objectdetection.aggregator import Aggregator, FrameCall
from services.objectdetection.merge import tracing_metadata

_LEGACY_ENG = {v1.ENGINE_FACE: legacy.DetectedObject.FACE, v1.ENGINE_YOLO: legacy.DetectedObject.YOLO}


def _frame_call(request: v1.DetectRequest, context: grpc.ServicerContext, aggregator: Aggregator) -> FrameCall:
    deadline = Deadline.from_grpc_context(context, aggregator.clock())
    return FrameCall(request, deadline, tracing_metadata(context.invocation_metadata()))


class ObjectDetectionV1Servicer:
    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def Detect(self, request: v1.DetectRequest, context: grpc.ServicerContext) -> v1.DetectResponse:
        return handle_rpc("v1.Detect", context, self.aggregator.metrics,
                          lambda: self.aggregator.detect(_frame_call(request, context, self.aggregator)))


def legacy_to_v1(request: legacy.ObjectDetectionRequest) -> v1.DetectRequest:
    engines = [e for e, wanted in ((v1.ENGINE_FACE, request.wantface), (v1.ENGINE_YOLO, request.wantyolo)) if wanted]
    return v1.DetectRequest(
        frame=v1.Frame(number=request.frame.number, capture_timestamp_us=request.frame.timestamp,
                       jpeg=request.frame.img),
        engines=engines,
        max_results=request.max_results,
        user_id=request.user_id,
    )


class LegacyObjectDetectionServicer:
    """``/ObjectDetection/ObjectDetect``: the original robots' call, answered by the same aggregator."""

    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def ObjectDetect(self, request: legacy.ObjectDetectionRequest, context: grpc.ServicerContext
                     ) -> legacy.ObjectDetectionResponse:
        def work() -> legacy.ObjectDetectionResponse:
            v1_request = legacy_to_v1(request)
            if not v1_request.engines:  # wantface = wantyolo = 0: nothing to run, but the request is still checked
                self.aggregator.users.check(request.user_id)
                checked_max_results(request.max_results, self.aggregator.max_results_limit)
                if request.frame.img:  # an empty frame is a plain "who serves me" (ipv4, name) query
                    validate_jpeg(request.frame.img, self.aggregator.limits)
                reply = v1.DetectResponse()
            else:
                reply = self.aggregator.detect(_frame_call(v1_request, context, self.aggregator))
            identity = self.aggregator.served_by
            return legacy.ObjectDetectionResponse(
                number=request.frame.number,
                timestamp=request.frame.timestamp,
                objects=[
                    legacy.DetectedObject(
                        name=d.class_name, eng=_LEGACY_ENG[d.engine], confidence=d.confidence,
                        x=d.box.x, y=d.box.y, w=d.box.width, h=d.box.height,
                        r=d.center_color.r, g=d.center_color.g, b=d.center_color.b)
                    for d in reply.detections
                ],
                ipv4=identity.ipv4_as_int,
                name=identity.node or identity.hostname,
            )

        return handle_rpc("legacy.ObjectDetect", context, self.aggregator.metrics, work)
