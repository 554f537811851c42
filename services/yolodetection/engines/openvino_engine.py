"""YOLO on the OpenVINO runtime: Intel CPU, integrated GPU and NPU (the Movidius VPU's successor).

OpenVINO cannot read Darknet, so it runs the converted ONNX model (FP32 or INT8 QDQ, which its
CPU plugin executes in INT8). FP32 asks the plugin for f32 inference explicitly: CPUs with bf16
and GPUs default to lower precision, which would change detections. ``MYRIAD`` (NCS2) was removed
after OpenVINO 2022.3 LTS and is refused with directions.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from services.yolodetection.engines.base import DeviceUnavailable, EngineRequest, ModelFiles
from services.yolodetection.engines.models import model_for

log = logging.getLogger(__name__)

_DEVICE = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError as err:
        raise DeviceUnavailable(
            "--engine openvino needs the openvino package: pip install 'robomesh[openvino]'"
        ) from err
    return openvino


def _target(device: str, available: list[str], version: str) -> str:
    """The OpenVINO device name for ``device``; DeviceUnavailable-worthy text starts with '--'."""
    if device == "auto":
        for name in ("NPU", "GPU", "CPU"):
            if any(d.split(".")[0] == name for d in available):
                return name
    if device == "myriad":
        return (f"--engine openvino --device myriad: OpenVINO {version} has no MYRIAD plugin (the Movidius NCS2 "
                "was last supported by OpenVINO 2022.3 LTS, which needs the model as IR: see README); its "
                "successor is --device npu")
    if device == "cuda":
        return "--engine openvino has no CUDA device; use --engine onnxruntime --device cuda (onnxruntime-gpu)"
    name = _DEVICE.get(device, "CPU")
    if not any(d.split(".")[0] == name for d in available):
        return f"--engine openvino --device {device}: OpenVINO {version} sees no {name} (devices: {available})"
    return name


class OpenVinoEngine:
    name = "openvino"
    max_batch = 16

    def __init__(self, model: ModelFiles, request: EngineRequest) -> None:
        ov = import_openvino()
        core = ov.Core()
        available = list(core.available_devices)
        target = _target(request.device, available, ov.__version__)
        if target.startswith("--"):
            if not request.allow_fallback:
                raise DeviceUnavailable(target + "; pass --allow-fallback to run on the CPU instead")
            log.warning("device unavailable, falling back to the CPU", extra={"reason": target})
            target = "CPU"
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if request.precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if request.threads and target == "CPU":
            config["INFERENCE_NUM_THREADS"] = request.threads
        self.precision = request.precision
        self.path = model_for(model, request.precision)
        self.compiled = core.compile_model(core.read_model(str(self.path)), target, config)
        self.device = target
        self.request = self.compiled.create_infer_request()
        self.outputs = list(self.compiled.outputs)

    def infer(self, blob: np.ndarray) -> list[np.ndarray]:
        results = self.request.infer({0: blob})
        # Copies: the request's buffers are reused by the next inference.
        return [np.array(results[output], copy=True) for output in self.outputs]
