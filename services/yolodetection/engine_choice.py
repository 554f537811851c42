"""Which engine and precision serve YOLO when the operator leaves it to us (``--engine auto --precision auto``).

The fastest that keeps the reference's answers, from what is installed here. Candidates are tried
fastest first (measured, docs/benchmarks.md); a candidate that cannot open (package, model file or
device missing) or that loses more than the agreement bar allows on the reference frames
(``services.yolodetection.reference``: >= 95 % of FP32 cv2.dnn's person detections, <= 5 % extra)
is skipped, with why. The last candidate on a CPU is FP32 cv2.dnn itself, which needs nothing beyond
OpenCV: a plain install serves it and says once in the log why it did not get faster.

Explicit choices (``--engine onnxruntime --precision int8``) are served as asked, without the check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from services.yolodetection.agreement import Agreement, agreement
from services.yolodetection.engines import (
    AUTO,
    DeviceUnavailable,
    EngineRequest,
    InferenceEngine,
    ModelFiles,
    open_engine,
)
from services.yolodetection.reference import ReferenceSet, detect_raw, load, reference_path

log = logging.getLogger(__name__)

PERSON = 0  # COCO class id of "person"
# Fastest first, per device kind. On a CPU INT8 leads (ONNX Runtime and OpenVINO 1.6-2.3x FP32 cv2.dnn on
# AVX2 and AVX-512 hosts, docs/benchmarks.md); OpenVINO before ONNX Runtime where both are installed.
# Accelerators run FP32 (INT8 is checked on CPU kernels only).
_ENGINES = {"cpu": ("openvino", "onnxruntime", "opencv"), "cuda": ("onnxruntime", "opencv"),
            "gpu": ("openvino", "onnxruntime"), "npu": ("openvino", "onnxruntime"),
            "auto": ("openvino", "onnxruntime", "opencv"), "myriad": ("openvino",)}


@dataclass(frozen=True)
class Choice:
    engine: InferenceEngine
    agreement: Agreement | None  # None: not checked (asked for explicitly, or the reference engine itself)
    skipped: tuple[str, ...]  # "engine:precision: why" for each faster candidate passed over


def candidates(request: EngineRequest) -> list[EngineRequest]:
    """Concrete requests to try, fastest first (one element when nothing is left to ``auto``)."""
    engines = _ENGINES[request.device] if request.engine == AUTO else (request.engine,)
    if request.precision != AUTO:
        precisions: tuple[str, ...] = (request.precision,)
    elif request.device == "cpu":
        precisions = ("int8", "fp32")
    else:
        precisions = ("fp32",)
    ordered = [(p, e) for p in precisions for e in engines]
    if request.engine == AUTO and request.precision == AUTO and request.device == "cpu":
        # The rule on a CPU: INT8 where it passes, else the reference (FP32 cv2.dnn), which needs
        # neither a conversion nor a writable model folder.
        ordered = [(p, e) for p, e in ordered if p == "int8" or e == "opencv"]
    return [replace(request, engine=e, precision=p) for p, e in ordered if not (e == "opencv" and p != "fp32")]


def is_reference(request: EngineRequest) -> bool:
    return request.engine == "opencv" and request.precision == "fp32"


def check_against(reference: ReferenceSet) -> Callable[[InferenceEngine], Agreement]:
    """Runs an engine on the reference frames (prepared and decoded as the detector does) and compares persons."""
    images = reference.images()

    def check(engine: InferenceEngine) -> Agreement:
        found = [detect_raw(engine.infer, image, reference.input_size, reference.conf_threshold,
                            reference.nms_threshold) for image in images]
        return agreement(reference.detections, found, PERSON, only_class=PERSON)

    return check


def load_reference(model: ModelFiles) -> tuple[ReferenceSet | None, str]:
    """The reference set for this model, or None and why (missing, another model, unreadable)."""
    from services.yolodetection.modeltools.model import sha256

    path = reference_path(model.weights, model.input_size)
    if not path.is_file():
        return None, f"no reference frames at {path} (`make models` builds them)"
    try:
        reference = load(path)
    except ValueError as err:
        return None, str(err)
    if (reference.cfg_sha256, reference.weights_sha256) != (sha256(Path(model.cfg)), sha256(Path(model.weights))):
        return None, f"the reference frames at {path} were made for another model"
    return reference, ""


def choose_engine(
    model: ModelFiles,
    request: EngineRequest,
    opener: Callable[[ModelFiles, EngineRequest], InferenceEngine] = open_engine,
    reference_loader: Callable[[ModelFiles], tuple[ReferenceSet | None, str]] = load_reference,
) -> Choice:
    """The first candidate that opens and, unless it is the reference or was asked for, agrees with it.

    Raises DeviceUnavailable (with every reason) when none is left.
    """
    tried = candidates(request)
    checked = request.engine == AUTO or request.precision == AUTO
    skipped: list[str] = []
    reference: ReferenceSet | None = None
    missing_reference = ""
    for index, candidate in enumerate(tried):
        label = f"{candidate.engine}:{candidate.precision}"
        last = index == len(tried) - 1
        needs_check = checked and not is_reference(candidate) and not last
        if needs_check and reference is None and not missing_reference:
            reference, missing_reference = reference_loader(model)
        if needs_check and reference is None:
            skipped.append(f"{label}: cannot check it: {missing_reference}")
            continue
        try:
            engine = opener(model, candidate)
        except DeviceUnavailable as err:
            if last:
                raise DeviceUnavailable("; ".join([*skipped, f"{label}: {err}"])) from None
            skipped.append(f"{label}: {err}")
            continue
        if not needs_check:
            return Choice(engine, None, tuple(skipped))
        assert reference is not None
        result = check_against(reference)(engine)
        if result.good_enough:
            return Choice(engine, result, tuple(skipped))
        skipped.append(f"{label}: disagrees with FP32 cv2.dnn here: {result.summary()}")
    raise DeviceUnavailable("; ".join(skipped) or "no engine to try")


def log_choice(choice: Choice, request: EngineRequest) -> None:
    """One line: what serves, why, and (when a faster candidate was passed over) why not that one."""
    engine = choice.engine
    served = f"{engine.name}:{engine.device}:{engine.precision}"
    extra = {"engine": served, "asked": f"{request.engine}:{request.device}:{request.precision}"}
    if choice.agreement is not None:
        extra["agreement"] = choice.agreement.summary()
    if choice.skipped:
        extra["passed_over"] = "; ".join(choice.skipped)
        log.warning("serving %s; faster candidates passed over: %s", served, extra["passed_over"], extra=extra)
    else:
        log.info("serving %s", served, extra=extra)
