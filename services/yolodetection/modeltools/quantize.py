"""INT8 post-training static quantization of the converted YOLO model, calibrated on real frames.

``python -m services.yolodetection.modeltools.quantize [--clip vtest.avi]`` (``make models`` runs it) writes
``<model>-int8.onnx`` next to the FP32 ONNX model: ONNX Runtime static QDQ, weights int8 per
channel in 7 bits (see ``reduce_range`` below), activations uint8, ranges from the calibration
frames. Only convolutions are quantized: the YOLO head decoding (sigmoid, exp, grid offsets)
stays in float, so boxes keep their geometry. Calibrate on frames the benchmark does not score
(the default is the first 300 frames of the clip; ``bench/engine_bench.py`` scores held-out frames from 400 on).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from services.yolodetection.modeltools.clip import clip_frames
from services.yolodetection.modeltools.convert import ensure_onnx
from services.yolodetection.modeltools.darknet import cfg_input_size
from services.yolodetection.modeltools.model import parse_clip_tool_args

# Calibration frames: [start, stop) every step-th frame of the clip.
DEFAULT_FRAMES = (0, 300, 3)
# Written into the model's metadata: a cached model made by another recipe is quantized again.
RECIPE_KEY, RECIPE = "robomesh.quantization", "static-qdq-minmax-per-channel-reduce-range-v2"


def int8_path(fp32: Path) -> Path:
    return fp32.with_name(fp32.stem + "-int8.onnx")


def calibration_blobs(clip: Path, frames: tuple[int, int, int], input_size: tuple[int, int]) -> list[np.ndarray]:
    """Network inputs exactly as the detector prepares them (plain resize, RGB, 1/255)."""
    return [cv2.dnn.blobFromImage(image, 1 / 255.0, input_size, swapRB=True, crop=False)
            for image in clip_frames(clip, frames)]


class _BlobReader:
    """onnxruntime's CalibrationDataReader protocol over prepared blobs."""

    def __init__(self, input_name: str, blobs: Sequence[np.ndarray]) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter([{input_name: b} for b in blobs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize(fp32: Path, out: Path, blobs: Sequence[np.ndarray]) -> Path:
    """Static QDQ quantization of ``fp32`` into ``out`` (written atomically)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        partial = Path(tmp) / out.name
        quantize_static(
            str(prepared), str(partial), _BlobReader(input_name, blobs),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            per_channel=True, op_types_to_quantize=["Conv"], calibrate_method=CalibrationMethod.MinMax,
            # 7-bit weights: x86 CPUs without VNNI (AVX2 only) multiply u8 x s8 pairs into saturating 16-bit
            # sums (VPMADDUBSW); with full-range weights ONNX Runtime and OpenVINO alike lost 43 % of
            # YOLO's detections on such a CPU (67 of 118 matched), 116 of 118 with reduce_range.
            reduce_range=True,
        )
        quantized = onnx.load(str(partial))
        onnx.helper.set_model_props(quantized, {RECIPE_KEY: RECIPE})
        onnx.save(quantized, str(partial))
        os.replace(partial, out)
    return out


def recipe_of(model: Path) -> str | None:
    import onnx

    props = onnx.load(str(model), load_external_data=False).metadata_props
    return next((p.value for p in props if p.key == RECIPE_KEY), None)


def ensure_int8(cfg: Path, weights: Path, clip: Path, frames: tuple[int, int, int] = DEFAULT_FRAMES,
                force: bool = False) -> Path:
    input_size = cfg_input_size(cfg)
    fp32 = ensure_onnx(cfg, weights, input_size)
    out = int8_path(fp32)
    if out.is_file() and not force and out.stat().st_mtime >= fp32.stat().st_mtime and recipe_of(out) == RECIPE:
        return out
    return quantize(fp32, out, calibration_blobs(clip, frames, input_size))


def main(argv: list[str] | None = None) -> int:
    args, frames = parse_clip_tool_args(argv, __doc__.splitlines()[0], DEFAULT_FRAMES, "calibration")
    print(ensure_int8(args.cfg, args.weights, args.clip, frames, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
