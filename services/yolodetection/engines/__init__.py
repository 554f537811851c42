"""YOLO inference engines behind one interface; ``open_engine`` picks one from the operator's request."""

from __future__ import annotations

from services.yolodetection.engines.base import (
    AUTO,
    DEVICES,
    ENGINES,
    PRECISIONS,
    DeviceUnavailable,
    EngineRequest,
    InferenceEngine,
    ModelFiles,
)

__all__ = [
    "AUTO", "DEVICES", "ENGINES", "PRECISIONS", "DeviceUnavailable", "EngineRequest", "InferenceEngine", "ModelFiles",
    "open_engine",
]


def open_engine(model: ModelFiles, request: EngineRequest) -> InferenceEngine:
    """The engine asked for, on the device asked for; DeviceUnavailable (with why) when it cannot run here."""
    if request.engine == AUTO or request.precision == AUTO:
        raise ValueError("open_engine needs a concrete engine and precision; choose_engine resolves 'auto'")
    if request.engine == "opencv":
        from services.yolodetection.engines.opencv_engine import OpenCVEngine

        return OpenCVEngine(model, request)
    if request.engine == "onnxruntime":
        from services.yolodetection.engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(model, request)
    if request.engine == "openvino":
        from services.yolodetection.engines.openvino_engine import OpenVinoEngine

        return OpenVinoEngine(model, request)
    raise DeviceUnavailable(f"--engine {request.engine} is not available in this build")
