"""How far one engine's detections agree with another's: greedy one-to-one matching by IoU, same class.

The yardstick of every faster engine or precision: it must keep the detections of the reference
(FP32 cv2.dnn on the Darknet files) and add few of its own. Used by the engine choice at start-up
(``services.yolodetection.engine_choice``) and by the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.yolodetection.decode import RawBox

MATCH_IOU = 0.5
# What an engine must keep to stand in for the reference: >= 95 % of its detections, <= 5 % extra.
MIN_MATCHED = 0.95
MAX_EXTRA = 0.05


def iou(a: RawBox, b: RawBox) -> float:
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def match(reference: Sequence[RawBox], candidate: Sequence[RawBox], threshold: float = MATCH_IOU
          ) -> tuple[int, int, int]:
    """(matched, missed, extra): greedy one-to-one pairs of the same class, best IoU first, IoU >= threshold."""
    pairs = sorted(((iou(r, c), i, j) for i, r in enumerate(reference) for j, c in enumerate(candidate)
                    if r.class_id == c.class_id), reverse=True)
    used_r: set[int] = set()
    used_c: set[int] = set()
    for value, i, j in pairs:
        if value < threshold:
            break
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
    matched = len(used_r)
    return matched, len(reference) - matched, len(candidate) - matched


@dataclass(frozen=True)
class Agreement:
    frames: int
    reference_detections: int
    detections: int
    matched: int
    missed: int
    extra: int
    persons_per_frame: float

    @property
    def matched_frac(self) -> float:
        return self.matched / self.reference_detections if self.reference_detections else float("nan")

    @property
    def extra_frac(self) -> float:
        return self.extra / self.reference_detections if self.reference_detections else float("nan")

    @property
    def good_enough(self) -> bool:
        """Keeps >= MIN_MATCHED of the reference's detections with <= MAX_EXTRA extra (nothing to keep: no)."""
        return bool(self.reference_detections) and (
            self.matched_frac >= MIN_MATCHED and self.extra_frac <= MAX_EXTRA)

    def summary(self) -> str:
        return (f"{self.matched}/{self.reference_detections} matched ({100 * self.matched_frac:.1f} %), "
                f"{self.extra} extra ({100 * self.extra_frac:.1f} %) on {self.frames} frames")


def agreement(reference: Sequence[Sequence[RawBox]], candidate: Sequence[Sequence[RawBox]],
              person_id: int, only_class: int | None = None) -> Agreement:
    """Per-frame matching summed over frames; ``only_class``: count that class alone (e.g. persons)."""
    if only_class is not None:
        reference = [[b for b in r if b.class_id == only_class] for r in reference]
        candidate = [[b for b in c if b.class_id == only_class] for c in candidate]
    totals = [match(r, c) for r, c in zip(reference, candidate, strict=True)]
    return Agreement(
        frames=len(candidate), reference_detections=sum(len(r) for r in reference),
        detections=sum(len(c) for c in candidate), matched=sum(t[0] for t in totals),
        missed=sum(t[1] for t in totals), extra=sum(t[2] for t in totals),
        persons_per_frame=sum(b.class_id == person_id for c in candidate for b in c) / max(len(candidate), 1))
