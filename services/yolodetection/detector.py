"""Darknet YOLO through OpenCV DNN (pure: image in, detections out)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import grpc
import numpy as np

from protos import detection_v1_pb2 as v1
from protos import timings as stage
from protos.deadline import NO_DEADLINE, Deadline
from services.common.detections import Detected, Found
from services.common.errors import RequestError
from services.common.imaging import center_color
from services.yolodetection.batching import BatchConfig, BatcherClosed, DynamicBatcher, Expired, QueueFull
from services.yolodetection.decode import decode_heads
from services.yolodetection.engine_choice import choose_engine, log_choice
from services.yolodetection.engines import EngineRequest, InferenceEngine, ModelFiles
from services.yolodetection.modeltools.darknet import cfg_input_size

log = logging.getLogger(__name__)

# Default largest batch where batching pays: the engine's limit, capped (latency grows with the batch).
DEFAULT_MAX_BATCH = 8


def default_max_batch(engine: InferenceEngine) -> int:
    """The batch limit when the operator gives none: 1 (batching off) on a CPU, where it does not pay.

    A CPU is compute-bound: a batch costs about the same per image as single frames (2 cores:
    OpenCV about 26 ms per image at batch 1 and 4; ONNX Runtime INT8 12.7 vs 14.1 ms in-process),
    while waiting for a batch to form and running several frames in one forward adds latency and,
    served at 4 concurrent robots, measured from -12 % to +10 % throughput run to run. OpenCV also
    re-allocates its network whenever the batch size changes. Intel GPUs and NPUs (OpenVINO) run a
    batch in little more than the time of one frame: there batching is on.

    CUDA is off too until batching is measured to win there: the one served run on a GPU (H200,
    ONNX Runtime CUDA, 8 robots, docs/benchmarks.md) gave 373 frames/s without batching and 20 with
    it, before the fixed-shape sessions of the ONNX Runtime engine, which were not yet measured
    served. ``--max-batch 8`` turns it on.
    """
    if engine.device.lower().split(":")[0] in ("cpu", "cuda"):
        return 1
    return max(1, min(DEFAULT_MAX_BATCH, int(engine.max_batch)))


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
    # Dynamic batching; max_batch 0: default_max_batch(engine).
    max_batch: int = 0
    max_queue: int = 16
    batch_wait_s: float = 0.002
    # Fault injection (tests, experiments): the engine sleeps this long before each batch.
    engine_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf_threshold <= 1.0:
            raise ValueError(f"confidence threshold must be in [0, 1]; got {self.conf_threshold}")
        if not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"NMS threshold must be in [0, 1]; got {self.nms_threshold}")
        if self.max_batch < 0:
            raise ValueError(f"max batch must be >= 0 (0: the default); got {self.max_batch}")
        if self.engine_delay_s < 0:
            raise ValueError(f"engine delay must be >= 0; got {self.engine_delay_s}")


def read_class_names(path: Path) -> list[str]:
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"no class names in {path}")
    return names


class YoloDetector:
    """YOLO on one engine, shared by every request through a DynamicBatcher (whose worker owns the engine)."""

    engine = v1.ENGINE_YOLO

    def __init__(
        self,
        params: YoloParams,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        for path in (params.cfg, params.weights, params.names):
            if not Path(path).is_file():
                raise FileNotFoundError(f"model file not found: {path} (run `make models`)")
        self.params = params
        self.clock = clock
        self.class_names = read_class_names(params.names)
        self.input_size = params.input_size or cfg_input_size(params.cfg)
        choice = choose_engine(ModelFiles(params.cfg, params.weights, self.input_size), params.engine)
        log_choice(choice, params.engine)
        self.engine_impl = choice.engine
        # What served_by and health report: engine, device really used, precision.
        self.device = f"{self.engine_impl.name}:{self.engine_impl.device}:{self.engine_impl.precision}"
        self._sleep = sleep
        engine_limit = max(1, int(self.engine_impl.max_batch))
        max_batch = min(params.max_batch or default_max_batch(self.engine_impl), engine_limit)
        # The batcher's worker thread is the only caller of the engine (engines are not thread-safe).
        self.batcher = DynamicBatcher(
            self._infer, BatchConfig(max_batch=max_batch, max_queue=params.max_queue, wait_s=params.batch_wait_s),
            name="yolo-batcher")

    def _infer(self, blob: np.ndarray) -> list[np.ndarray]:
        if self.params.engine_delay_s:  # fault injection: a slow engine
            self._sleep(self.params.engine_delay_s)
        return self.engine_impl.infer(blob)

    def close(self) -> None:
        """Drain: frames already queued complete, then the engine's worker stops."""
        self.batcher.close()

    def warm_up(self) -> None:
        """The first forward allocates everything (about a second): do it before reporting SERVING.

        With batching, each batch size the engine will see (powers of two up to ``max_batch``, and
        ``max_batch``) runs once too, so the first robots to meet at the engine pay no set-up. The
        batcher's worker is idle before serving, so calling the engine here does not race it.
        """
        width, height = self.input_size
        self.heads(np.full((height, width, 3), 127, dtype=np.uint8))
        max_batch = self.batcher.config.max_batch
        sizes, size = [], 2
        while size < max_batch:
            sizes.append(size)
            size *= 2
        if max_batch > 1:
            sizes.append(max_batch)
        frame = np.full((1, 3, height, width), 0.5, dtype=np.float32)
        for size in sizes:
            started = time.perf_counter()
            self._infer(np.repeat(frame, size, axis=0))
            log.info("warmed up a batch", extra={"batch": size, "ms": round(1000 * (time.perf_counter() - started), 1)})

    def decode_reduction(self, width: int, height: int) -> int:
        """Always 1: YOLO decodes the JPEG at full size.

        Decoding at 1/2 size when the frame is still larger than the network input was measured on 40
        vtest frames scaled to 1664x1248: 147 of 148 detections kept, 4 extra, and only 1.7 ms of 37 ms
        saved per frame (the resize into the network input is cheap). Not identical, not worth it.
        """
        # DetectorCore asks this first for every frame, before decoding it: the batcher takes it as the
        # sign that a frame is on its way (see the wait rule in services.yolodetection.batching).
        self.batcher.announce()
        return 1

    def heads(self, image: np.ndarray, deadline: Deadline = NO_DEADLINE) -> tuple[list[np.ndarray], dict[str, float]]:
        """Heads of one image, run in a batch with whatever other frames meet it at the engine, and the
        stage times so far.

        ``deadline`` (on ``time.monotonic``): a frame still queued then is dropped (DEADLINE_EXCEEDED).
        """
        t0 = self.clock()
        blob = cv2.dnn.blobFromImage(image, 1 / 255.0, self.input_size, swapRB=True, crop=False)
        preprocess_ms = (self.clock() - t0) * 1000.0
        try:
            result = self.batcher.submit(blob, deadline)
        except QueueFull as err:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"yolodetection is overloaded: {err}; retry later or add replicas") from None
        except Expired as err:
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, str(err)) from None
        except BatcherClosed as err:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, str(err)) from None
        # "wait" is time queued behind other frames for the network; "dnn" is the forward pass of the
        # batch this frame ran in, and "batch" its size.
        return result.heads, {
            stage.PREPROCESS: preprocess_ms,
            stage.WAIT: result.wait_s * 1000.0,
            stage.DNN: result.run_s * 1000.0,
            stage.BATCH: float(result.batch_size),
        }

    def detect(self, image: np.ndarray, scale: float, deadline: Deadline = NO_DEADLINE) -> Detected:
        heads, stages_ms = self.heads(image, deadline)
        t0 = self.clock()
        frame_w, frame_h = round(image.shape[1] * scale), round(image.shape[0] * scale)
        boxes = decode_heads(heads, frame_w, frame_h, self.params.conf_threshold, self.params.nms_threshold)
        found = tuple(
            Found(
                class_name=self.class_name(b.class_id), class_id=b.class_id, confidence=b.confidence,
                x=b.x, y=b.y, w=b.w, h=b.h, rgb=center_color(image, b.x, b.y, b.w, b.h, scale),
            )
            for b in boxes
        )
        stages_ms[stage.POSTPROCESS] = (self.clock() - t0) * 1000.0
        return Detected(found, stages_ms)

    def class_name(self, class_id: int) -> str:
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else f"class{class_id}"
