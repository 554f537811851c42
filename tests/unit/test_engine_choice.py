"""``--engine auto --precision auto``: the fastest engine here that keeps FP32 cv2.dnn's persons, else cv2.dnn."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from services.yolodetection.decode import RawBox
from services.yolodetection.engine_choice import PERSON, candidates, check_against, choose_engine, log_choice
from services.yolodetection.engines import DeviceUnavailable, EngineRequest, ModelFiles, open_engine
from services.yolodetection.modeltools.model import ModelPaths
from services.yolodetection.modeltools.quantize import DEFAULT_FRAMES, ensure_int8
from services.yolodetection.reference import (
    DEFAULT_FRAMES as REFERENCE_FRAMES,
)
from services.yolodetection.reference import (
    ReferenceSet,
    build,
    ensure_reference,
    load,
    read_frames,
    reference_path,
    save,
)

INPUT = (416, 416)
AUTO = EngineRequest(engine="auto", precision="auto")


@pytest.fixture(scope="module")
def model(model_paths: ModelPaths, data_dir: Path) -> ModelFiles:
    pytest.importorskip("onnxruntime")
    ensure_int8(model_paths.cfg, model_paths.weights, data_dir / "vtest.avi", DEFAULT_FRAMES)
    ensure_reference(model_paths.cfg, model_paths.weights, data_dir / "vtest.avi")
    return ModelFiles(model_paths.cfg, model_paths.weights, INPUT)


@pytest.fixture(scope="module")
def reference(model: ModelFiles) -> ReferenceSet:
    return load(reference_path(model.weights, INPUT))


def without(*engines: str):
    """An opener on a host where these engines are not installed (the real one for the rest)."""
    def opener(model: ModelFiles, request: EngineRequest) -> object:
        if request.engine in engines:
            raise DeviceUnavailable(f"--engine {request.engine} needs the {request.engine} package")
        return open_engine(model, request)
    return opener


def test_candidates_on_a_cpu_are_int8_then_the_reference() -> None:
    assert [(c.engine, c.precision) for c in candidates(AUTO)] == [
        ("openvino", "int8"), ("onnxruntime", "int8"), ("opencv", "fp32")]
    named = candidates(replace(AUTO, engine="onnxruntime"))
    assert [(c.engine, c.precision) for c in named] == [("onnxruntime", "int8"), ("onnxruntime", "fp32")]
    assert [(c.engine, c.precision) for c in candidates(replace(AUTO, engine="opencv"))] == [("opencv", "fp32")]
    explicit = candidates(EngineRequest(engine="openvino", precision="fp32"))
    assert [(c.engine, c.precision) for c in explicit] == [("openvino", "fp32")]
    cuda = candidates(replace(AUTO, device="cuda"))
    assert [(c.engine, c.precision, c.device) for c in cuda] == [
        ("onnxruntime", "fp32", "cuda"), ("opencv", "fp32", "cuda")]


def test_reference_set_round_trips_and_holds_real_persons(model: ModelFiles, reference: ReferenceSet,
                                                           tmp_path: Path) -> None:
    persons = sum(b.class_id == PERSON for boxes in reference.detections for b in boxes)
    assert len(reference.jpegs) == len(range(*REFERENCE_FRAMES))
    assert persons >= 150  # the bar is checked on enough people to mean something
    again = load(save(reference, tmp_path / "ref.npz"))
    assert again == reference
    (tmp_path / "junk.npz").write_bytes(b"not a reference")
    with pytest.raises(ValueError, match="not a reference set"):
        load(tmp_path / "junk.npz")


def test_auto_serves_an_int8_engine_that_passes_the_check(model: ModelFiles) -> None:
    choice = choose_engine(model, AUTO)
    assert choice.engine.precision == "int8"
    assert choice.engine.name in ("openvino", "onnxruntime")
    assert choice.agreement is not None and choice.agreement.good_enough
    assert choice.agreement.matched_frac >= 0.95 and choice.agreement.extra_frac <= 0.05


def test_without_openvino_onnxruntime_int8_serves(model: ModelFiles) -> None:
    choice = choose_engine(model, AUTO, opener=without("openvino"))
    assert (choice.engine.name, choice.engine.precision) == ("onnxruntime", "int8")
    assert choice.skipped == ("openvino:int8: --engine openvino needs the openvino package",)


def test_no_onnx_engine_installed_falls_back_to_fp32_cv2_dnn(model: ModelFiles, caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    choice = choose_engine(model, AUTO, opener=without("openvino", "onnxruntime"))
    assert (choice.engine.name, choice.engine.precision) == ("opencv", "fp32")
    assert choice.agreement is None and len(choice.skipped) == 2
    with caplog.at_level(logging.INFO, logger="services.yolodetection.engine_choice"):
        log_choice(choice, AUTO)
    (record,) = caplog.records  # one line says what serves and why not faster
    assert record.levelno == logging.WARNING
    assert "serving opencv:cpu:fp32" in record.getMessage() and "onnxruntime package" in record.getMessage()


def test_without_reference_frames_int8_is_not_trusted(model: ModelFiles) -> None:
    choice = choose_engine(model, AUTO, reference_loader=lambda _m: (None, "no reference frames at /x"))
    assert (choice.engine.name, choice.engine.precision) == ("opencv", "fp32")
    assert all("cannot check it: no reference frames" in why for why in choice.skipped)


def test_an_engine_that_loses_persons_is_passed_over(model: ModelFiles, reference: ReferenceSet) -> None:
    """Reference answers moved by half a box: every INT8 candidate now disagrees, and FP32 cv2.dnn serves."""
    moved = tuple(tuple(RawBox(b.class_id, b.confidence, b.x + b.w // 2, b.y, b.w, b.h) for b in boxes)
                  for boxes in reference.detections)
    wrong = replace(reference, detections=moved)
    choice = choose_engine(model, AUTO, reference_loader=lambda _m: (wrong, ""))
    assert (choice.engine.name, choice.engine.precision) == ("opencv", "fp32")
    assert any("disagrees with FP32 cv2.dnn" in why for why in choice.skipped)


def test_the_check_scores_the_reference_engine_perfectly(model: ModelFiles, reference: ReferenceSet) -> None:
    result = check_against(reference)(open_engine(model, EngineRequest()))
    assert result.matched == result.reference_detections and result.extra == 0


def test_explicit_choices_are_served_as_asked_without_the_check(model: ModelFiles) -> None:
    def no_reference(_m: ModelFiles) -> tuple[None, str]:
        raise AssertionError("an explicit choice must not be checked")

    choice = choose_engine(model, EngineRequest(engine="onnxruntime", precision="int8"), reference_loader=no_reference)
    assert (choice.engine.name, choice.engine.precision, choice.agreement) == ("onnxruntime", "int8", None)


def test_nothing_left_raises_with_every_reason(model: ModelFiles) -> None:
    with pytest.raises(DeviceUnavailable, match=r"openvino:int8: .*onnxruntime:int8: .*opencv:fp32: "):
        choose_engine(model, AUTO, opener=without("openvino", "onnxruntime", "opencv"))


def test_reference_is_rebuilt_for_another_model(model: ModelFiles, tmp_path: Path, data_dir: Path) -> None:
    jpegs = read_frames(data_dir / "vtest.avi", (400, 404, 2))
    small = build(model.cfg, model.weights, INPUT, jpegs)
    assert len(small.jpegs) == 2
    other = replace(small, weights_sha256="0" * 64)
    path = save(other, tmp_path / reference_path(model.weights, INPUT).name)
    weights = tmp_path / model.weights.name
    weights.symlink_to(model.weights)
    cfg = tmp_path / model.cfg.name
    cfg.symlink_to(model.cfg)
    rebuilt = load(ensure_reference(cfg, weights, data_dir / "vtest.avi", (400, 404, 2)))
    assert rebuilt.weights_sha256 != "0" * 64 and rebuilt.jpegs == small.jpegs
    assert path.is_file()


def test_a_plain_install_without_onnx_packages_serves_cv2_dnn(model: ModelFiles, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """The real import paths: with onnxruntime, openvino and onnx absent (None in sys.modules makes `import`
    fail, as on `pip install .` without extras), every engine's own message says what to install."""
    import sys

    for module in ("onnxruntime", "openvino", "onnx", "services.yolodetection.modeltools.convert"):
        monkeypatch.setitem(sys.modules, module, None)
    choice = choose_engine(model, AUTO)
    assert (choice.engine.name, choice.engine.precision) == ("opencv", "fp32")
    assert [why.split(":")[0] for why in choice.skipped] == ["openvino", "onnxruntime"]
    assert "pip install 'robomesh[openvino]'" in choice.skipped[0]
    assert "pip install 'robomesh[onnx]'" in choice.skipped[1]
