"""Darknet YOLO through OpenCV DNN (pure: image in, detections out)."""

from __future__ import annotations

import configparser
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from protos import detection_v1_pb2 as v1
from services.common.detections import Found
from services.common.imaging import center_color
from services.yolodetection.decode import decode_heads

DEVICES = ("cpu", "cuda")


class DeviceUnavailable(RuntimeError):
    """The requested inference device is not usable with this OpenCV build or machine."""


@dataclass(frozen=True)
class YoloParams:
    cfg: Path
    weights: Path
    names: Path
    conf_threshold: float = 0.5
    nms_threshold: float = 0.4
    # Network input (width, height); None: the [net] section of the cfg.
    input_size: tuple[int, int] | None = None
    device: str = "cpu"
    allow_fallback: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf_threshold <= 1.0:
            raise ValueError(f"confidence threshold must be in [0, 1]; got {self.conf_threshold}")
        if not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"NMS threshold must be in [0, 1]; got {self.nms_threshold}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {self.device!r}")


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


def cuda_device_count() -> int:
    try:
        return cv2.cuda.getCudaEnabledDeviceCount()
    except (AttributeError, cv2.error):
        return 0


def select_backend(net: cv2.dnn.Net, device: str, allow_fallback: bool) -> str:
    """Configures the net for ``device``; returns the device really used."""
    if device == "cuda":
        if cuda_device_count() > 0:
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_CUDA)
            net.setPreferableTarget(cv2.dnn.DNN_TARGET_CUDA)
            return "cuda"
        reason = (
            f"--device cuda: this OpenCV {cv2.__version__} build has no CUDA DNN backend or sees no GPU "
            "(the PyPI wheels are CPU-only; build OpenCV with -DWITH_CUDA=ON -DOPENCV_DNN_CUDA=ON)"
        )
        if not allow_fallback:
            raise DeviceUnavailable(reason + "; pass --allow-fallback to run on the CPU instead")
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return "cpu"


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
        self.net = cv2.dnn.readNetFromDarknet(str(params.cfg), str(params.weights))
        self.device = select_backend(self.net, params.device, params.allow_fallback)
        self.output_names = list(self.net.getUnconnectedOutLayersNames())
        # A cv2.dnn.Net runs one forward at a time.
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
            self.net.setInput(blob)
            outputs = self.net.forward(self.output_names)
        t3 = self.clock()
        timings_ms["preprocess"] = (t1 - t0) * 1000.0
        # "wait" is time queued behind other frames for the network; "dnn" is the forward pass itself.
        timings_ms["wait"] = (t2 - t1) * 1000.0
        timings_ms["dnn"] = (t3 - t2) * 1000.0
        return list(outputs)

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
