"""What every YOLO inference engine offers the detector: a batch of blobs in, head tensors out.

Every engine returns the heads in one layout, the one OpenCV's Darknet importer produces:
one array per YOLO head, shaped ``(batch, rows, 5 + classes)``, each row
``[cx, cy, w, h, objectness, class scores...]`` normalised to the network input, with class
scores already multiplied by objectness. ``services.yolodetection.decode`` turns one image's
rows into boxes, whatever engine produced them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

ENGINES = ("opencv", "onnxruntime", "openvino")
DEVICES = ("auto", "cpu", "cuda", "gpu", "npu", "myriad")
PRECISIONS = ("fp32", "int8")
# Left to the server: the fastest engine / precision installed here that keeps the reference's answers
# (services.yolodetection.engine_choice).
AUTO = "auto"


class DeviceUnavailable(RuntimeError):
    """The requested engine, device or precision cannot run here (missing package, build or hardware)."""


@dataclass(frozen=True)
class EngineRequest:
    """What the operator asked for; the engine reports what it really uses."""

    engine: str = "opencv"
    device: str = "cpu"
    precision: str = "fp32"
    allow_fallback: bool = False
    # CPU threads for the engine; 0: the engine's default (all cores).
    threads: int = 0

    def __post_init__(self) -> None:
        if self.engine not in (AUTO, *ENGINES):
            raise ValueError(f"engine must be one of {AUTO}, {', '.join(ENGINES)}; got {self.engine!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        if self.precision not in (AUTO, *PRECISIONS):
            raise ValueError(f"precision must be one of {AUTO}, {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0; got {self.threads}")


@dataclass(frozen=True)
class ModelFiles:
    """The Darknet model and where its converted forms are cached."""

    cfg: Path
    weights: Path
    input_size: tuple[int, int]  # (width, height) of the network input

    @property
    def cache_dir(self) -> Path:
        return self.weights.parent


class InferenceEngine(Protocol):
    name: str  # one of ENGINES
    device: str  # the device really used, as reported in served_by and health (e.g. "cpu", "cuda:0", "openvino:CPU")
    precision: str
    # Largest batch ``infer`` accepts in one call (1: the engine cannot batch).
    max_batch: int

    def infer(self, blob: np.ndarray) -> list[np.ndarray]:
        """``blob``: float32 ``(N, 3, H, W)``, RGB in [0, 1]. Not thread-safe: the caller serialises calls."""
        ...


def as_batched(heads: list[np.ndarray], batch: int) -> list[np.ndarray]:
    """OpenCV drops the batch axis for a batch of one: put it back so every engine looks alike."""
    return [h.reshape(batch, -1, h.shape[-1]) for h in heads]
