"""Whom the robot follows: the followed track judged against the ground truth of the target and the distractors.

Pure bookkeeping, fed once per decision with the followed track (id and box) and the true boxes of the target
and of each distractor in the same image (None when out of view):

- ``id_switches``: how often the followed track id changed while the true target stayed in view the whole time
  since the previous followed id (a new id after the target left the view and came back is a re-acquisition,
  not a switch).
- ``wrong_target_fraction``: of the decisions that follow someone (state FOLLOW), the share whose followed box
  is a distractor's rather than the target's.

The followed box is attributed to the person whose true box it overlaps most (IoU); a person whose true box
contains the followed box's centre counts as an overlap of at least ``min_iou``. Below ``min_iou`` for everyone
it is attributed to nobody (e.g. a stale box during a search).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from robotclient.runtime.model import Box

TARGET = 0  # who(): the target; distractor i is i + 1; None is nobody


def _contains(box: Box, x: float, y: float) -> bool:
    return box.x <= x <= box.x + box.w and box.y <= y <= box.y + box.h


def who(followed: Box, target: Box | None, distractors: Sequence[Box | None], min_iou: float = 0.1) -> int | None:
    """``TARGET`` (0), ``i + 1`` for distractor ``i``, or None: the true person the followed box is on."""
    best, best_score = None, 0.0
    for index, truth in enumerate([target, *distractors]):
        if truth is None:
            continue
        score = followed.iou(truth)
        if _contains(truth, followed.cx, followed.cy):
            score = max(score, min_iou)
        if score >= min_iou and score > best_score:
            best, best_score = index, score
    return best


@dataclass
class IdentityScore:
    """Counts id switches and decisions spent following a distractor."""

    min_iou: float = 0.1
    id_switches: int = 0
    following: int = 0
    on_target: int = 0
    on_distractor: int = 0
    _last_id: int | None = None
    _target_stayed: bool = False

    def observe(
        self,
        followed_id: int | None,
        followed_box: Box | None,
        following: bool,
        target: Box | None,
        distractors: Sequence[Box | None] = (),
    ) -> None:
        """One decision: the followed track (None when there is none) and the true boxes in that image."""
        visible = target is not None
        self._target_stayed = self._target_stayed and visible
        if followed_id is not None:
            if self._last_id is not None and followed_id != self._last_id and self._target_stayed:
                self.id_switches += 1
            self._last_id = followed_id
            self._target_stayed = visible
        if following and followed_box is not None:
            self.following += 1
            person = who(followed_box, target, distractors, self.min_iou)
            self.on_target += person == TARGET
            self.on_distractor += person is not None and person != TARGET

    def report(self) -> dict[str, Any]:
        return {
            "id_switches": self.id_switches,
            "wrong_target_fraction": round(self.on_distractor / self.following, 3) if self.following else 0.0,
            "on_target_fraction": round(self.on_target / self.following, 3) if self.following else 0.0,
        }
