"""Darknet YOLO through OpenCV DNN: the reference engine (CPU; CUDA with a CUDA build of OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np

from services.yolodetection.engines.base import DeviceUnavailable, EngineRequest, ModelFiles, as_batched


def cuda_device_count() -> int:
    try:
        return cv2.cuda.getCudaEnabledDeviceCount()
    except (AttributeError, cv2.error):
        return 0


class OpenCVEngine:
    name = "opencv"
    max_batch = 16

    def __init__(self, model: ModelFiles, request: EngineRequest) -> None:
        if request.precision != "fp32":
            raise DeviceUnavailable(
                f"--engine opencv runs the Darknet model in fp32 only; --precision {request.precision} needs "
                "--engine onnxruntime or openvino"
            )
        self.precision = "fp32"
        self.net = cv2.dnn.readNetFromDarknet(str(model.cfg), str(model.weights))
        self.device = self._select_device(request)
        self.output_names = list(self.net.getUnconnectedOutLayersNames())

    def _select_device(self, request: EngineRequest) -> str:
        if request.device in ("cuda", "auto") and cuda_device_count() > 0:
            self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_CUDA)
            self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CUDA)
            return "cuda"
        if request.device not in ("cpu", "auto"):
            if request.device == "cuda":
                reason = (
                    f"--engine opencv --device cuda: this OpenCV {cv2.__version__} build has no CUDA DNN backend "
                    "or sees no GPU (the PyPI wheels are CPU-only; build OpenCV with -DWITH_CUDA=ON "
                    "-DOPENCV_DNN_CUDA=ON, or use --engine onnxruntime with onnxruntime-gpu)"
                )
            else:
                reason = f"--engine opencv has no {request.device!r} device here; use --engine openvino"
            if not request.allow_fallback:
                raise DeviceUnavailable(reason + "; pass --allow-fallback to run on the CPU instead")
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        return "cpu"

    def infer(self, blob: np.ndarray) -> list[np.ndarray]:
        self.net.setInput(blob)
        return as_batched(list(self.net.forward(self.output_names)), blob.shape[0])
