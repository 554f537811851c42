"""The ONNX file an ONNX engine runs for a precision: converted (and quantized) once, then cached."""

from __future__ import annotations

from pathlib import Path

from services.yolodetection.engines.base import DeviceUnavailable, ModelFiles


def model_for(model: ModelFiles, precision: str) -> Path:
    from services.yolodetection.convert import ensure_onnx

    fp32 = ensure_onnx(model.cfg, model.weights, model.input_size)
    if precision == "fp32":
        return fp32
    from services.yolodetection.quantize import int8_path

    int8 = int8_path(fp32)
    if not int8.is_file():
        raise DeviceUnavailable(
            f"--precision int8: no calibrated INT8 model at {int8}; build it once with "
            "`python -m services.yolodetection.quantize` (make models does) from real frames"
        )
    return int8
