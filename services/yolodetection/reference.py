"""Reference frames for checking a faster YOLO engine on the host that serves: real frames and FP32 answers.

``python -m services.yolodetection.reference`` (``make models`` runs it) takes held-out frames of the
sample clip (frames 400 on: calibration of the INT8 model uses frames 0-299), JPEG-encodes them as a
robot does, runs the reference engine (FP32 cv2.dnn on the Darknet files) on them and stores the
frames with its detections in ``<weights stem>-<W>x<H>-reference.npz`` beside the weights (about
3 MB). At start-up the server runs a candidate engine (INT8 ONNX Runtime or OpenVINO) on these frames
and serves it only if it keeps the reference's person detections (``engine_choice``): INT8 accuracy
depends on the CPU's instruction set (saturating u8*s8 sums without VNNI), so it is checked where it
runs, not where the model was built.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from services.yolodetection.decode import RawBox, decode_heads
from services.yolodetection.modeltools.clip import clip_frames
from services.yolodetection.modeltools.model import parse_clip_tool_args, sha256

# Held-out frames of vtest.avi: [start, stop) every step-th (50 frames, about 190 persons).
DEFAULT_FRAMES = (400, 800, 8)
JPEG_QUALITY = 90
CONF_THRESHOLD, NMS_THRESHOLD = 0.5, 0.4
FORMAT = "robomesh-yolo-reference-v1"


@dataclass(frozen=True)
class ReferenceSet:
    """Frames (JPEG) and the reference engine's detections on each, with what made them."""

    jpegs: tuple[bytes, ...]
    detections: tuple[tuple[RawBox, ...], ...]
    conf_threshold: float
    nms_threshold: float
    cfg_sha256: str
    weights_sha256: str
    input_size: tuple[int, int]

    def images(self) -> list[np.ndarray]:
        return [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in self.jpegs]


def reference_path(weights: Path, input_size: tuple[int, int]) -> Path:
    width, height = input_size
    return Path(weights).with_name(f"{Path(weights).stem}-{width}x{height}-reference.npz")


def detect_raw(infer: Callable[[np.ndarray], list[np.ndarray]], image: np.ndarray, input_size: tuple[int, int],
               conf_threshold: float, nms_threshold: float) -> list[RawBox]:
    """One frame through ``infer`` (an engine's ``infer``), prepared and decoded exactly as the detector does."""
    blob = cv2.dnn.blobFromImage(image, 1 / 255.0, input_size, swapRB=True, crop=False)
    heads = infer(blob)
    height, width = image.shape[:2]
    return decode_heads([h[0] for h in heads], width, height, conf_threshold, nms_threshold)


def save(reference: ReferenceSet, path: Path) -> Path:
    """Written atomically: a server starting meanwhile sees the old file or the new one."""
    offsets = np.cumsum([0, *(len(j) for j in reference.jpegs)]).astype(np.int64)
    rows = [(i, b.class_id, b.x, b.y, b.w, b.h) for i, boxes in enumerate(reference.detections) for b in boxes]
    confidences = [b.confidence for boxes in reference.detections for b in boxes]
    meta = {"format": FORMAT, "conf_threshold": reference.conf_threshold, "nms_threshold": reference.nms_threshold,
            "cfg_sha256": reference.cfg_sha256, "weights_sha256": reference.weights_sha256,
            "input_size": list(reference.input_size)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
        np.savez(f, jpegs=np.frombuffer(b"".join(reference.jpegs), np.uint8), offsets=offsets,
                 boxes=np.asarray(rows, np.int32).reshape(-1, 6), confidences=np.asarray(confidences, np.float32),
                 meta=np.asarray(json.dumps(meta)))
    os.chmod(f.name, 0o644)  # a temporary file is private; the servers (another user in an image) read it
    os.replace(f.name, path)
    return path


def load(path: Path) -> ReferenceSet:
    """The stored set; ValueError when the file is not one (a foreign or damaged file is never trusted)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            buffer, offsets = data["jpegs"].tobytes(), data["offsets"]
            boxes, confidences = data["boxes"], data["confidences"]
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path} is not a reference set: {err}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a reference set of format {FORMAT}")
    jpegs = tuple(buffer[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1))
    per_frame: list[list[RawBox]] = [[] for _ in jpegs]
    for (frame, class_id, x, y, w, h), confidence in zip(boxes.tolist(), confidences.tolist(), strict=True):
        per_frame[frame].append(RawBox(class_id, confidence, x, y, w, h))
    return ReferenceSet(jpegs, tuple(tuple(b) for b in per_frame), float(meta["conf_threshold"]),
                        float(meta["nms_threshold"]), meta["cfg_sha256"], meta["weights_sha256"],
                        (int(meta["input_size"][0]), int(meta["input_size"][1])))


def read_frames(clip: Path, frames: tuple[int, int, int], quality: int = JPEG_QUALITY) -> list[bytes]:
    """The clip's frames JPEG-encoded as a robot sends them."""
    return [cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
            for image in clip_frames(clip, frames)]


def build(cfg: Path, weights: Path, input_size: tuple[int, int], jpegs: Sequence[bytes]) -> ReferenceSet:
    """The reference engine's detections on ``jpegs``."""
    from services.yolodetection.engines import EngineRequest, ModelFiles, open_engine

    engine = open_engine(ModelFiles(cfg, weights, input_size), EngineRequest(engine="opencv", precision="fp32"))
    images = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
    detections = tuple(tuple(detect_raw(engine.infer, image, input_size, CONF_THRESHOLD, NMS_THRESHOLD))
                       for image in images)
    return ReferenceSet(tuple(jpegs), detections, CONF_THRESHOLD, NMS_THRESHOLD, sha256(cfg), sha256(weights),
                        input_size)


def ensure_reference(cfg: Path, weights: Path, clip: Path, frames: tuple[int, int, int] = DEFAULT_FRAMES,
                     force: bool = False) -> Path:
    from services.yolodetection.modeltools.darknet import cfg_input_size

    input_size = cfg_input_size(cfg)
    path = reference_path(weights, input_size)
    if path.is_file() and not force:
        try:
            current = load(path)
            if (current.cfg_sha256, current.weights_sha256) == (sha256(cfg), sha256(weights)):
                return path
        except ValueError:
            pass
    return save(build(cfg, weights, input_size, read_frames(clip, frames)), path)


def main(argv: list[str] | None = None) -> int:
    args, frames = parse_clip_tool_args(argv, __doc__.splitlines()[0], DEFAULT_FRAMES,
                                        "held-out (keep them apart from the calibration's)")
    try:
        print(ensure_reference(args.cfg, args.weights, args.clip, frames, args.force))
    except (FileNotFoundError, ValueError) as err:
        print(f"reference: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
