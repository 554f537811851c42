"""The ONNX file an ONNX engine runs for a precision: converted (and quantized) once, then cached."""

from __future__ import annotations

from pathlib import Path

from services.yolodetection.engines.base import DeviceUnavailable, ModelFiles


def model_for(model: ModelFiles, precision: str) -> Path:
    try:
        from services.yolodetection.modeltools.convert import ensure_onnx
    except ImportError as err:
        raise DeviceUnavailable(
            f"the ONNX engines need the onnx package ({err}): pip install 'robomesh[onnx]'") from None
    try:
        fp32 = ensure_onnx(model.cfg, model.weights, model.input_size)
    except OSError as err:  # e.g. a read-only model folder without a converted model: `make models` makes it
        raise DeviceUnavailable(f"no usable ONNX model beside {model.weights}: {err}") from None
    if precision == "fp32":
        return fp32
    from services.yolodetection.modeltools.quantize import int8_path

    int8 = int8_path(fp32)
    if not int8.is_file():
        raise DeviceUnavailable(
            f"--precision int8: no calibrated INT8 model at {int8}; build it once with "
            "`python -m services.yolodetection.modeltools.quantize` (make models does) from real frames"
        )
    return int8
