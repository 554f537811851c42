"""Every YOLO engine gives OpenCV's detections; missing devices are refused at start with directions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.yolodetection.decode import RawBox, decode_heads
from services.yolodetection.engines import DeviceUnavailable, EngineRequest, ModelFiles, open_engine
from services.yolodetection.modeltools.model import ModelPaths
from services.yolodetection.modeltools.quantize import DEFAULT_FRAMES, ensure_int8
from tests.conftest import iou, read_frames

INPUT = (416, 416)
# Frames the INT8 calibration never saw (it uses DEFAULT_FRAMES, the start of the clip).
HELD_OUT_START, HELD_OUT = 450, 24


@pytest.fixture(scope="module")
def model(model_paths: ModelPaths) -> ModelFiles:
    return ModelFiles(model_paths.cfg, model_paths.weights, INPUT)


def blob(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.dnn.blobFromImage(image, 1 / 255.0, INPUT, swapRB=True, crop=False)


def needs(engine: str) -> None:
    """Skips a test whose engine's module is absent (a CUDA host has onnxruntime-gpu, not OpenVINO)."""
    if engine != "opencv":
        pytest.importorskip(engine)


def detect(engine: object, image: np.ndarray) -> list[RawBox]:
    heads = engine.infer(blob(image))  # type: ignore[attr-defined]
    return decode_heads([h[0] for h in heads], image.shape[1], image.shape[0], 0.5, 0.4)


@pytest.fixture(scope="module")
def reference(model: ModelFiles) -> object:
    return open_engine(model, EngineRequest())


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_fp32_engines_give_opencvs_detections(engine: str, model: ModelFiles, reference: object,
                                               vtest_frames: list[np.ndarray]) -> None:
    needs(engine)
    other = open_engine(model, EngineRequest(engine=engine))
    assert (other.name, other.device.lower(), other.precision) == (engine, "cpu", "fp32")
    total = 0
    for image in vtest_frames:
        expected, got = detect(reference, image), detect(other, image)
        assert [(b.class_id, b.x, b.y, b.w, b.h) for b in got] == [(b.class_id, b.x, b.y, b.w, b.h) for b in expected]
        assert [b.confidence for b in got] == pytest.approx([b.confidence for b in expected], abs=1e-3)
        total += len(expected)
    assert total >= 20  # the comparison covered real detections


@pytest.mark.parametrize("name", ["opencv", "onnxruntime", "openvino"])
def test_batches_give_the_single_frame_heads(name: str, model: ModelFiles, vtest_frames: list[np.ndarray]) -> None:
    needs(name)
    engine = open_engine(model, EngineRequest(engine=name))
    batch = np.concatenate([blob(image) for image in vtest_frames[:3]])
    together = engine.infer(batch)
    for i, image in enumerate(vtest_frames[:3]):
        alone = engine.infer(blob(image))
        for head_batch, head_alone in zip(together, alone, strict=True):
            np.testing.assert_allclose(head_batch[i], head_alone[0], atol=1e-4, err_msg=name)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_int8_agrees_with_fp32_on_held_out_frames(engine: str, model: ModelFiles, reference: object,
                                                  data_dir: Path) -> None:
    needs(engine)
    ensure_int8(model.cfg, model.weights, data_dir / "vtest.avi", DEFAULT_FRAMES)
    assert DEFAULT_FRAMES[1] <= HELD_OUT_START
    int8 = open_engine(model, EngineRequest(engine=engine, precision="int8"))
    assert int8.precision == "int8"
    matched = extra = expected_total = 0
    for image in read_frames(data_dir / "vtest.avi", HELD_OUT, start=HELD_OUT_START):
        expected, got = detect(reference, image), detect(int8, image)
        expected_total += len(expected)
        unmatched = list(expected)
        for box in got:
            best = max(unmatched, default=None, key=lambda e, b=box: iou((e.x, e.y, e.w, e.h), (b.x, b.y, b.w, b.h))
                       if e.class_id == b.class_id else -1.0)
            if best is not None and best.class_id == box.class_id and \
                    iou((best.x, best.y, best.w, best.h), (box.x, box.y, box.w, box.h)) >= 0.5:
                unmatched.remove(best)
                matched += 1
            else:
                extra += 1
    assert expected_total >= 50
    assert matched >= 0.95 * expected_total, (matched, expected_total)
    assert extra <= 0.05 * expected_total, (extra, expected_total)


def test_opencv_has_no_int8(model: ModelFiles) -> None:
    with pytest.raises(DeviceUnavailable, match="fp32 only"):
        open_engine(model, EngineRequest(precision="int8"))


def test_missing_cuda_provider_is_refused_unless_fallback(model: ModelFiles) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: the refusal cannot be shown")
    with pytest.raises(DeviceUnavailable, match=r"onnxruntime-gpu.*--allow-fallback"):
        open_engine(model, EngineRequest(engine="onnxruntime", device="cuda"))
    fallback = open_engine(model, EngineRequest(engine="onnxruntime", device="cuda", allow_fallback=True))
    assert fallback.device == "cpu"


def test_openvino_refuses_absent_devices_and_myriad(model: ModelFiles) -> None:
    openvino = pytest.importorskip("openvino")

    if any(d.startswith("NPU") for d in openvino.Core().available_devices):
        pytest.skip("this machine has an NPU")
    with pytest.raises(DeviceUnavailable, match="sees no NPU"):
        open_engine(model, EngineRequest(engine="openvino", device="npu"))
    with pytest.raises(DeviceUnavailable, match=r"2022\.3"):
        open_engine(model, EngineRequest(engine="openvino", device="myriad"))
    assert open_engine(model, EngineRequest(engine="openvino", device="auto")).device in ("CPU", "GPU", "NPU")


def _cuda_provider() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_provider(), reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_onnxruntime_cuda_gives_the_cpu_detections(model: ModelFiles, reference: object,
                                                   vtest_frames: list[np.ndarray]) -> None:
    gpu = open_engine(model, EngineRequest(engine="onnxruntime", device="cuda"))
    assert gpu.device == "cuda:0"
    total = 0
    for image in vtest_frames:
        expected, got = detect(reference, image), detect(gpu, image)
        assert [b.class_id for b in got] == [b.class_id for b in expected]
        for g, e in zip(got, expected, strict=True):
            assert max(abs(g.x - e.x), abs(g.y - e.y), abs(g.w - e.w), abs(g.h - e.h)) <= 1, (g, e)
        total += len(expected)
    assert total >= 20
    # Dynamic batching's sizes (3 runs padded to 4, in its own session) give the single-frame heads.
    batch = np.concatenate([blob(image) for image in vtest_frames[:3]])
    for i, head in enumerate(gpu.infer(batch)[0]):
        np.testing.assert_allclose(head, gpu.infer(blob(vtest_frames[i]))[0][0], atol=1e-3)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_fixed_shape_buckets_give_the_dynamic_heads(n: int, model: ModelFiles,
                                                    vtest_frames: list[np.ndarray]) -> None:
    """The CUDA path (padding to a bucket, one session per size) exercised on the CPU."""
    needs("onnxruntime")
    from services.yolodetection.engines.onnxruntime_engine import bucket_of

    engine = open_engine(model, EngineRequest(engine="onnxruntime"))
    batch = np.concatenate([blob(vtest_frames[i % len(vtest_frames)]) for i in range(n)])
    dynamic = engine.infer(batch)
    engine.fixed_shapes = True
    bucketed = engine.infer(batch)
    assert [h.shape for h in bucketed] == [h.shape for h in dynamic]
    for b, d in zip(bucketed, dynamic, strict=True):
        np.testing.assert_allclose(b, d, atol=1e-4)
    assert list(engine._sessions) == [bucket_of(n)]


def test_bucket_of_rounds_up_to_a_power_of_two() -> None:
    from services.yolodetection.engines.onnxruntime_engine import bucket_of, pad_batch

    assert [bucket_of(n) for n in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, 16, 16]
    with pytest.raises(ValueError, match="larger than the largest bucket"):
        bucket_of(17)
    padded = pad_batch(np.ones((3, 2), dtype=np.float32), 4)
    assert padded.shape == (4, 2) and padded[3].sum() == 0 and padded[:3].sum() == 6
