"""YOLO on ONNX Runtime: CPU, CUDA (``onnxruntime-gpu``) or Intel devices (OpenVINO execution provider).

Runs the ONNX model converted from the Darknet files (``services.yolodetection.modeltools.convert``), FP32 or
its INT8 quantization (``services.yolodetection.modeltools.quantize``). ONNX Runtime silently falls back to the
CPU when a provider cannot start (e.g. missing CUDA libraries), so the provider really used is read
back from the session and a requested device that did not start is refused, as with any engine.

On CUDA every session sees a single input shape: batches are padded up to a power of two and each
size has its own session. Measured on an H200 (docs/benchmarks.md, CUDA): one session fed the
varying batch sizes that dynamic batching produces spent about 210 ms per call, against 1-6 ms for
a constant shape, because the CUDA convolutions are set up again whenever the shape changes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from services.yolodetection.engines.base import DeviceUnavailable, EngineRequest, ModelFiles
from services.yolodetection.engines.models import model_for

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
_OPENVINO_DEVICE = {"gpu": "GPU", "npu": "NPU"}
BATCH_BUCKETS = (1, 2, 4, 8, 16)


def bucket_of(n: int) -> int:
    """The smallest bucket that holds ``n`` frames."""
    for size in BATCH_BUCKETS:
        if n <= size:
            return size
    raise ValueError(f"batch of {n} is larger than the largest bucket {BATCH_BUCKETS[-1]}")


def pad_batch(blob: np.ndarray, size: int) -> np.ndarray:
    """``blob`` with zero frames appended up to ``size`` (their heads are dropped after the run)."""
    missing = size - blob.shape[0]
    if missing <= 0:
        return blob
    return np.concatenate([blob, np.zeros((missing, *blob.shape[1:]), dtype=blob.dtype)])


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise DeviceUnavailable(
            "--engine onnxruntime needs the onnxruntime package: pip install 'robomesh[onnx]' "
            "(or 'robomesh[cuda]' for onnxruntime-gpu)"
        ) from err
    return onnxruntime


def _providers(device: str, available: list[str]) -> tuple[list[Any], str] | str:
    """The provider list for ``device`` and the name of the device it gives, or why it cannot run here."""
    if device == "cpu":
        return [CPU], "cpu"
    if device == "cuda" or (device == "auto" and CUDA in available):
        if CUDA not in available:
            return ("--engine onnxruntime --device cuda: this onnxruntime has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu instead of onnxruntime: pip install 'robomesh[cuda]')")
        return [(CUDA, {"device_id": 0}), CPU], "cuda:0"
    if device in _OPENVINO_DEVICE:
        if OPENVINO not in available:
            return (f"--engine onnxruntime --device {device}: this onnxruntime has no OpenVINOExecutionProvider "
                    f"(pip install onnxruntime-openvino, or use --engine openvino --device {device})")
        return [(OPENVINO, {"device_type": _OPENVINO_DEVICE[device]}), CPU], f"openvino-ep:{_OPENVINO_DEVICE[device]}"
    if device == "myriad":
        return ("--device myriad: the Movidius VPU (MYRIAD) needs OpenVINO 2022.3 LTS and a converted IR; "
                "use --engine openvino with that release (see README), or --device npu on its successor")
    return [CPU], "cpu"  # auto without CUDA


class OnnxRuntimeEngine:
    name = "onnxruntime"
    max_batch = 16

    def __init__(self, model: ModelFiles, request: EngineRequest) -> None:
        ort = import_onnxruntime()
        available = list(ort.get_available_providers())
        choice = _providers(request.device, available)
        if isinstance(choice, str):
            if not request.allow_fallback:
                raise DeviceUnavailable(choice + "; pass --allow-fallback to run on the CPU instead")
            log.warning("device unavailable, falling back to the CPU", extra={"reason": choice})
            choice = ([CPU], "cpu")
        providers, device = choice
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if request.threads:
            options.intra_op_num_threads = request.threads
        # Idle pool threads sleep instead of spinning: the spin steals the cores a neighbour (the face
        # detector in the same pod or node) is computing on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.precision = request.precision
        self.path = model_for(model, request.precision)
        self._new_session = lambda: ort.InferenceSession(str(self.path), options, providers=providers)
        self.session = self._new_session()
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        used = self.session.get_providers()[0]
        if used != wanted:
            reason = f"--engine onnxruntime --device {request.device}: {wanted} did not start (session runs on {used})"
            if not request.allow_fallback:
                raise DeviceUnavailable(reason + "; pass --allow-fallback to run on the CPU instead")
            log.warning("device did not start, running on the CPU", extra={"reason": reason})
            device = "cpu"
        self.device = device
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # One shape per session on CUDA (module docstring); the CPU kernels do not care.
        self.fixed_shapes = device.startswith("cuda")
        self._sessions: dict[int, Any] = {}

    def infer(self, blob: np.ndarray) -> list[np.ndarray]:
        if not self.fixed_shapes:
            return list(self.session.run(self.output_names, {self.input_name: blob}))
        n = blob.shape[0]
        size = bucket_of(n)
        if size not in self._sessions:
            self._sessions[size] = self.session if not self._sessions else self._new_session()
        heads = self._sessions[size].run(self.output_names, {self.input_name: pad_batch(blob, size)})
        return [h[:n] for h in heads]
