"""The pure detectors on real images with the real models."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from protos import timings as stage
from services.facedetection.detector import FaceParams, HaarFaceDetector, level_weight_confidence
from services.yolodetection.detector import YoloDetector, YoloParams
from services.yolodetection.engines import DeviceUnavailable, EngineRequest
from services.yolodetection.engines.opencv_engine import cuda_device_count
from services.yolodetection.modeltools.model import ModelPaths
from tests.conftest import iou, read_frames


@pytest.fixture(scope="module")
def face_detector() -> HaarFaceDetector:
    return HaarFaceDetector(FaceParams())


@pytest.fixture(scope="module")
def yolo(model_paths: ModelPaths) -> YoloDetector:
    detector = YoloDetector(YoloParams(model_paths.cfg, model_paths.weights, model_paths.names))
    detector.warm_up()
    return detector


def test_haar_finds_the_astronauts_face(face_detector: HaarFaceDetector, data_dir: Path) -> None:
    image = cv2.imread(str(data_dir / "astronaut.png"))
    detected = face_detector.detect(image, 1.0)
    (face,) = detected.found
    assert iou((face.x, face.y, face.w, face.h), (176, 66, 95, 95)) > 0.7
    assert 0.5 < face.confidence < 1.0
    assert face.rgb == tuple(int(v) for v in image[face.y + face.h // 2, face.x + face.w // 2][::-1])
    # The detector returns its own stages (the core adds decode and total); the caller's dict is not touched.
    assert list(detected.stages_ms) == [stage.WAIT, stage.HAAR]
    assert detected.stages_ms[stage.HAAR] > 0 and detected.stages_ms[stage.WAIT] >= 0
    with pytest.raises(TypeError):
        detected.stages_ms[stage.HAAR] = 0.0  # type: ignore[index]  # a returned value, read-only


def test_haar_boxes_map_back_from_a_reduced_image(face_detector: HaarFaceDetector, data_dir: Path) -> None:
    image = cv2.imread(str(data_dir / "astronaut.png"))
    half = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    detector = HaarFaceDetector(FaceParams(min_size=48))
    assert detector.decode_reduction(512, 512) == 2
    (face,) = detector.detect(half, 2.0).found
    assert iou((face.x, face.y, face.w, face.h), (176, 66, 95, 95)) > 0.6


def test_face_confidence_grows_with_the_level_weight() -> None:
    values = [level_weight_confidence(w) for w in (-1.0, 0.0, 2.5, 6.0, 12.0)]
    assert values == sorted(values)
    assert values[2] == pytest.approx(0.5)
    assert values[0] > 0.0 and values[-1] < 1.0


def test_face_downscale_sets_the_decode_and_the_smallest_face() -> None:
    default = HaarFaceDetector(FaceParams())
    assert default.decode_reduction(768, 576) == 2 and default.params.smallest_face == 48
    full = HaarFaceDetector(FaceParams(downscale=1, scale_factor=1.1, min_neighbors=5))
    assert full.decode_reduction(768, 576) == 1 and full.params.smallest_face == 30
    # A large minimum face decodes smaller still, whatever the downscale.
    assert HaarFaceDetector(FaceParams(downscale=1, min_size=96)).decode_reduction(768, 576) == 4
    # Small frames keep their resolution: a 320x240 camera, the 548x342 messi5.jpg.
    assert default.decode_reduction(640, 480) == 2
    assert default.decode_reduction(548, 342) == 1 and default.decode_reduction(320, 240) == 1
    assert HaarFaceDetector(FaceParams(downscale=4)).decode_reduction(1280, 720) == 2


def test_downscaled_default_finds_the_faces_full_resolution_finds(data_dir: Path) -> None:
    """Megamind.avi through the server's own decode: the default keeps >= 96 % of the frames with a face."""
    from services.common.imaging import decode_jpeg, probe_jpeg
    from tests.conftest import encode_jpeg

    fast = HaarFaceDetector(FaceParams())
    full = HaarFaceDetector(FaceParams(downscale=1, scale_factor=1.1, min_neighbors=5))
    with_face = kept = 0
    for frame in read_frames(data_dir / "Megamind.avi", 90, start=0)[::3]:
        jpeg = encode_jpeg(frame)
        info = probe_jpeg(jpeg)
        found = {}
        for name, detector in (("fast", fast), ("full", full)):
            reduce = detector.decode_reduction(info.width, info.height)
            found[name] = detector.detect(decode_jpeg(jpeg, info, reduce), float(reduce)).found
        if found["full"]:
            with_face += 1
            kept += bool(found["fast"])
            for face in found["fast"]:
                assert face.x + face.w <= info.width and face.y + face.h <= info.height  # boxes in frame pixels
    assert with_face >= 25
    assert kept >= 0.96 * with_face, (kept, with_face)


def test_face_parameters_are_checked() -> None:
    for bad in ({"scale_factor": 1.0}, {"min_neighbors": -1}, {"min_size": 10}, {"downscale": 3}):
        with pytest.raises(ValueError):
            FaceParams(**bad)


def test_yolo_finds_the_pedestrians_of_vtest(yolo: YoloDetector, vtest_frames: list[np.ndarray]) -> None:
    persons = []
    for frame in vtest_frames:
        detected = yolo.detect(frame, 1.0)
        found = detected.found
        assert set(detected.stages_ms) == set(stage.YOLO_STAGES) - {stage.DECODE, stage.TOTAL}
        assert detected.stages_ms[stage.DNN] > 0 and detected.stages_ms[stage.BATCH] == 1.0
        persons.append(sum(f.class_name == "person" for f in found))
        for f in found:
            assert f.x >= 0 and f.y >= 0 and f.x + f.w <= frame.shape[1] and f.y + f.h <= frame.shape[0]
            assert 0.5 <= f.confidence <= 1.0
    assert np.mean(persons) >= 2.0


def test_yolo_reads_the_input_size_from_the_cfg(yolo: YoloDetector) -> None:
    assert yolo.input_size == (416, 416)
    heads = yolo.engine_impl.infer(np.zeros((1, 3, 416, 416), np.float32))
    assert [h.shape for h in heads] == [(1, 507, 85), (1, 2028, 85)]  # YOLOv3-tiny's two heads, both decoded
    assert yolo.decode_reduction(1920, 1080) == 1  # full-size decode: reduced decoding changed detections
    assert yolo.decode_reduction(768, 576) == 1


@pytest.mark.skipif(cuda_device_count() > 0, reason="this OpenCV build has CUDA: the refusal cannot be shown")
def test_cuda_without_a_cuda_build_fails_at_start_unless_fallback_is_allowed(model_paths: ModelPaths) -> None:
    params = YoloParams(model_paths.cfg, model_paths.weights, model_paths.names, engine=EngineRequest(device="cuda"))
    with pytest.raises(DeviceUnavailable, match="--allow-fallback"):
        YoloDetector(params)
    fallback = YoloDetector(YoloParams(model_paths.cfg, model_paths.weights, model_paths.names,
                                       engine=EngineRequest(device="cuda", allow_fallback=True)))
    assert fallback.device == "opencv:cpu:fp32"


@pytest.mark.gpu
@pytest.mark.skipif(cuda_device_count() == 0, reason="needs an OpenCV build with CUDA and a GPU")
def test_cuda_backend_gives_the_cpu_detections(model_paths: ModelPaths, vtest_frames: list[np.ndarray]) -> None:
    cpu = YoloDetector(YoloParams(model_paths.cfg, model_paths.weights, model_paths.names))
    gpu = YoloDetector(YoloParams(model_paths.cfg, model_paths.weights, model_paths.names,
                                  engine=EngineRequest(device="cuda")))
    assert gpu.device == "opencv:cuda:fp32"
    for frame in vtest_frames[:3]:
        a = [(f.class_id, f.x, f.y) for f in cpu.detect(frame, 1.0).found]
        b = [(f.class_id, f.x, f.y) for f in gpu.detect(frame, 1.0).found]
        assert len(a) == len(b)


def test_missing_model_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make models"):
        YoloDetector(YoloParams(tmp_path / "x.cfg", tmp_path / "x.weights", tmp_path / "x.names"))

