"""Stage names of ``DetectResponse.timings_ms``: the Python side of that map's wire contract.

``timings_ms`` (``map<string, double>`` in detection_v1.proto) is a string-keyed map on the wire; this
module is the one place its keys are spelled, imported by the services (which write them) and by the
robot client (which reads them back to pace itself). Neither side imports the other: both import only
``protos``. Hand-written, not generated: ``protos.generate`` writes only the ``*_pb2*`` stubs.

Keys, in milliseconds unless listed in ``COUNTS``:

- a detector's reply (facedetection, yolodetection): its own stages, unprefixed: ``decode``, ``wait``,
  ``haar`` (face) or ``preprocess``, ``wait``, ``dnn``, ``batch`` (a count), ``postprocess`` (YOLO), and
  ``total``;
- the aggregator's reply (objectdetection): its own ``validate`` and ``total``, each detector's round
  trip under the detector's key (``face``, ``yolo``), and each detector's stages under
  ``<detector>.<stage>`` (``face.haar``, ``yolo.wait``, ``yolo.total``...).

``wait`` is time a frame spent queued behind other frames, not work on it (see ``QUEUEING``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from protos import detection_v1_pb2 as v1

SEPARATOR = "."

# A detector's stages.
DECODE = "decode"  # the JPEG decoded (at the size the detector needs)
WAIT = "wait"  # queued behind other frames for the cascade or the network
HAAR = "haar"  # the face cascade itself
PREPROCESS = "preprocess"  # YOLO: the image into the network's input blob
DNN = "dnn"  # YOLO: the forward pass of the batch the frame ran in
BATCH = "batch"  # YOLO: frames in that batch (a count, not milliseconds)
POSTPROCESS = "postprocess"  # YOLO: heads decoded into boxes (NMS, colours)
TOTAL = "total"  # the whole request in that server
# The aggregator's own stage (``total`` too, and each detector's round trip under its key).
VALIDATE = "validate"

# Detector keys: the aggregator's round trip to a detector, and the prefix of that detector's stages.
FACE = "face"
YOLO = "yolo"

FACE_STAGES: tuple[str, ...] = (DECODE, WAIT, HAAR, TOTAL)
YOLO_STAGES: tuple[str, ...] = (DECODE, PREPROCESS, WAIT, DNN, BATCH, POSTPROCESS, TOTAL)
DETECTOR_STAGES: Mapping[str, tuple[str, ...]] = MappingProxyType({FACE: FACE_STAGES, YOLO: YOLO_STAGES})
AGGREGATOR_STAGES: tuple[str, ...] = (VALIDATE, FACE, YOLO, TOTAL)
# The detector key of each engine of the v1 API.
DETECTOR_KEYS: Mapping[int, str] = MappingProxyType({v1.ENGINE_FACE: FACE, v1.ENGINE_YOLO: YOLO})

COUNTS = frozenset({BATCH})  # values that are counts, not durations
QUEUEING = frozenset({WAIT})  # durations spent waiting for the engine, not working


def detector_key(detector: str, stage: str) -> str:
    """``("yolo", "wait")`` -> ``"yolo.wait"``: a detector's stage as the aggregator reports it."""
    if not detector or SEPARATOR in detector:
        raise ValueError(f"not a detector key: {detector!r}")
    return f"{detector}{SEPARATOR}{stage}"


def split_key(key: str) -> tuple[str, str]:
    """``"yolo.wait"`` -> ``("yolo", "wait")``; a server's own stage -> ``("", stage)``."""
    detector, separator, stage = key.partition(SEPARATOR)
    return (detector, stage) if separator and stage else ("", key)


def prefixed(detector: str, stages_ms: Mapping[str, float]) -> dict[str, float]:
    """A detector's reply's stages under its key, as the aggregator forwards them."""
    return {detector_key(detector, stage): ms for stage, ms in stages_ms.items()}


def by_detector(timings_ms: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """An aggregator's timings parsed back: detector key -> that detector's stages (own stages left out)."""
    stages: dict[str, dict[str, float]] = {}
    for key, ms in timings_ms.items():
        detector, stage = split_key(key)
        if detector:
            stages.setdefault(detector, {})[stage] = ms
    return stages


def own_stages(timings_ms: Mapping[str, float]) -> dict[str, float]:
    """The server's own stages: the keys that carry no detector prefix."""
    return {key: ms for key, ms in timings_ms.items() if not split_key(key)[0]}

