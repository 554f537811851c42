"""Scoring against distractors: whom the followed track is on, and how often its id changed with the target in view."""

from __future__ import annotations

from robotclient.runtime.model import Box
from robotclient.sim.identity import TARGET, IdentityScore, who

TARGET_BOX = Box(100, 100, 40, 80)
OTHER_BOX = Box(300, 100, 40, 80)


def test_the_followed_box_is_attributed_to_the_person_it_overlaps_most() -> None:
    assert who(TARGET_BOX, TARGET_BOX, [OTHER_BOX]) == TARGET
    assert who(OTHER_BOX, TARGET_BOX, [OTHER_BOX]) == 1
    assert who(Box(110, 100, 40, 80), TARGET_BOX, [Box(120, 100, 40, 80)]) == TARGET  # overlaps both, target more
    assert who(Box(500, 100, 40, 80), TARGET_BOX, [OTHER_BOX]) is None
    assert who(TARGET_BOX, None, [None]) is None
    # A small box on the target (e.g. a head) has little IoU but its centre is inside: still the target.
    assert who(Box(115, 100, 10, 10), TARGET_BOX, []) == TARGET


def test_id_switches_count_only_changes_while_the_target_stayed_in_view() -> None:
    score = IdentityScore()
    score.observe(1, TARGET_BOX, True, TARGET_BOX, [OTHER_BOX])
    score.observe(1, TARGET_BOX, True, TARGET_BOX, [OTHER_BOX])
    score.observe(2, OTHER_BOX, True, TARGET_BOX, [OTHER_BOX])  # jumped to the distractor: a switch
    score.observe(None, None, False, TARGET_BOX, [OTHER_BOX])  # no target track for a while, target in view
    score.observe(3, TARGET_BOX, True, TARGET_BOX, [OTHER_BOX])  # a new id on the target, still in view: a switch
    assert score.id_switches == 2
    # The target leaves the view; a new id when it comes back is a re-acquisition, not a switch.
    score.observe(3, TARGET_BOX, False, None, [OTHER_BOX])
    score.observe(4, TARGET_BOX, True, TARGET_BOX, [OTHER_BOX])
    assert score.id_switches == 2
    report = score.report()
    assert report["id_switches"] == 2
    # Following: 5 decisions with a box, one of them on the distractor.
    assert report["wrong_target_fraction"] == round(1 / 5, 3)
    assert report["on_target_fraction"] == round(4 / 5, 3)


def test_an_empty_score_reports_zeros() -> None:
    assert IdentityScore().report() == {"id_switches": 0, "wrong_target_fraction": 0.0, "on_target_fraction": 0.0}
