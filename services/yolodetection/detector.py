"""Darknet YOLO through OpenCV DNN (pure: image in, detections out)."""

from __future__ import annotations

import configparser
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from protos import detection_v1_pb2 as v1
from services.common.detections import Found
from services.common.imaging import center_color
from services.yolodetection.decode import decode_heads
from services.yolodetection.engines import EngineRequest, ModelFiles, open_engine


@dataclass(frozen=True)
class YoloParams:
    cfg: Path
    weights: Path
    names: Path
    conf_threshold: float = 0.5
    nms_threshold: float = 0.4
    # Network input (width, height); None: the [net] section of the cfg.
    input_size: tuple[int, int] | None = None
    engine: EngineRequest = field(default_factory=EngineRequest)

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf_threshold <= 1.0:
            raise ValueError(f"confidence threshold must be in [0, 1]; got {self.conf_threshold}")
        if not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"NMS threshold must be in [0, 1]; got {self.nms_threshold}")


def read_class_names(path: Path) -> list[str]:
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"no class names in {path}")
    return names


def cfg_input_size(cfg: Path) -> tuple[int, int]:
    """(width, height) from the cfg's [net] section (Darknet cfgs repeat section names, hence strict=False)."""
    parser = configparser.ConfigParser(strict=False, inline_comment_prefixes=("#", ";"))
    parser.read_string(Path(cfg).read_text())
    return int(parser["net"]["width"]), int(parser["net"]["height"])


class YoloDetector:
    engine = v1.ENGINE_YOLO

    def __init__(self, params: YoloParams, clock: Callable[[], float] = time.perf_counter) -> None:
        for path in (params.cfg, params.weights, params.names):
            if not Path(path).is_file():
                raise FileNotFoundError(f"model file not found: {path} (run `make models`)")
        self.params = params
        self.clock = clock
        self.class_names = read_class_names(params.names)
        self.input_size = params.input_size or cfg_input_size(params.cfg)
        self.engine_impl = open_engine(ModelFiles(params.cfg, params.weights, self.input_size), params.engine)
        # What served_by and health report: engine, device really used, precision.
        self.device = f"{self.engine_impl.name}:{self.engine_impl.device}:{self.engine_impl.precision}"
        # An engine runs one inference at a time.
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """The first forward allocates everything (about a second): do it before reporting SERVING."""
        width, height = self.input_size
        self.heads(np.full((height, width, 3), 127, dtype=np.uint8), {})

    def decode_reduction(self, width: int, height: int) -> int:
        net_w, net_h = self.input_size
        k = 1
        for candidate in (2, 4, 8):
            if width // candidate >= net_w and height // candidate >= net_h:
                k = candidate
        return k

    def heads(self, image: np.ndarray, timings_ms: dict[str, float]) -> list[np.ndarray]:
        t0 = self.clock()
        blob = cv2.dnn.blobFromImage(image, 1 / 255.0, self.input_size, swapRB=True, crop=False)
        t1 = self.clock()
        with self._lock:
            t2 = self.clock()
            outputs = self.engine_impl.infer(blob)
        t3 = self.clock()
        timings_ms["preprocess"] = (t1 - t0) * 1000.0
        # "wait" is time queued behind other frames for the network; "dnn" is the forward pass itself.
        timings_ms["wait"] = (t2 - t1) * 1000.0
        timings_ms["dnn"] = (t3 - t2) * 1000.0
        return [head[0] for head in outputs]

    def detect(self, image: np.ndarray, scale: float, timings_ms: dict[str, float]) -> list[Found]:
        heads = self.heads(image, timings_ms)
        t0 = self.clock()
        frame_w, frame_h = round(image.shape[1] * scale), round(image.shape[0] * scale)
        boxes = decode_heads(heads, frame_w, frame_h, self.params.conf_threshold, self.params.nms_threshold)
        found = [
            Found(
                class_name=self.class_name(b.class_id), class_id=b.class_id, confidence=b.confidence,
                x=b.x, y=b.y, w=b.w, h=b.h, rgb=center_color(image, b.x, b.y, b.w, b.h, scale),
            )
            for b in boxes
        ]
        timings_ms["postprocess"] = (self.clock() - t0) * 1000.0
        return found

    def class_name(self, class_id: int) -> str:
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else f"class{class_id}"
