"""The robot's decision per frame: detections → tracks → target → follow state → chassis command.

No I/O and no clock of its own: the caller passes results, frames and the
time, so that ``run``, ``replay`` and ``sim`` share exactly this logic and
tests can drive it frame by frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from robotclient.runtime.carry import VisualCarrier
from robotclient.runtime.controller import ControlParams, FollowController
from robotclient.runtime.limits import SpeedLimits
from robotclient.runtime.model import STOP, CapturedFrame, Command, DetectionResult, HitEvent
from robotclient.runtime.statemachine import (
    FollowStateMachine,
    Observation,
    State,
    StateTimings,
    TargetView,
    Transition,
)
from robotclient.runtime.tracker import MultiObjectTracker, TargetSelector, Track, TrackerParams


@dataclass(frozen=True)
class SessionConfig:
    wanted_class: str = "person"
    carry: str | None = None
    control: bool = True
    tracker: TrackerParams = field(default_factory=TrackerParams)
    timings: StateTimings = field(default_factory=StateTimings)
    control_params: ControlParams = field(default_factory=ControlParams)
    limits: SpeedLimits = field(default_factory=SpeedLimits)


@dataclass(frozen=True)
class Decision:
    """What the robot does for one frame, and why (for the log, the overlay and the LEDs)."""

    now: float
    state: State
    transition: Transition | None
    command: Command
    tracks: tuple[Track, ...]
    target: Track | None
    view: TargetView | None
    carried: bool
    announce: str | None


CUT_OFF_MARGIN = 0.02
"""A box within this fraction of the frame height from the top or bottom edge counts as cut off by it."""


def target_view(track: Track, width: int, height: int) -> TargetView:
    box = track.box
    margin = CUT_OFF_MARGIN * height
    cut_off = box.y <= margin or box.y + box.h >= height - margin
    return TargetView(offset=2.0 * box.cx / width - 1.0, size=box.h / height, portrait=box.h > box.w,
                      cut_off=cut_off)


class FollowSession:
    """Tracker, target selection, optional visual carry-forward, state machine and controller, wired once."""

    def __init__(self, config: SessionConfig, start: float) -> None:
        self.config = config
        self.tracker = MultiObjectTracker(config.tracker)
        self.selector = TargetSelector(config.wanted_class)
        self.machine = FollowStateMachine(start, config.timings)
        self.controller = FollowController(config.control_params, config.limits)
        self.carrier = VisualCarrier(config.carry) if config.carry else None
        self._last_result_number = -1
        self._fresh = False

    def on_result(self, result: DetectionResult) -> None:
        """A reply arrived: update the tracks and restart the carry-forward on that reply's frame."""
        # Detections describe the frame at its capture time, not at arrival: velocities and the
        # predicted positions stay free of network jitter.
        # The reply's own frame goes along: the tracker tells people apart by their colours too.
        self.tracker.update(result.detections, result.frame.captured_at, image=result.frame.image)
        self._last_result_number = result.frame.number
        self._fresh = True
        if self.carrier is not None:
            target = self.selector.select(self.tracker.tracks)
            if target is not None and target.missed == 0:
                self.carrier.start(result.frame.image, target.box)
            else:
                self.carrier.stop()

    def on_frame(
        self,
        frame: CapturedFrame,
        now: float,
        *,
        hit: HitEvent | None = None,
        key: str | None = None,
        manual: Command | None = None,
    ) -> Decision:
        """Decide for the newest camera frame (which may be newer than the last reply)."""
        carried = False
        if self.carrier is not None and self.carrier.active and frame.number > self._last_result_number:
            target_id = self.selector.target_id
            box = self.carrier.update(frame.image)
            if box is not None and target_id is not None:
                self.tracker.replace_box(target_id, box, frame.captured_at)
                carried = True
        tracks = self.tracker.tracks
        target = self.selector.select(tracks)
        view = target_view(target, frame.width, frame.height) if target is not None else None
        fresh, self._fresh = self._fresh, False
        transition = self.machine.step(Observation(now=now, result_fresh=fresh, target=view, hit=hit, key=key))
        state = self.machine.state
        command = STOP
        if self.config.control:
            command = self.controller.command(
                state, view, now, search_side=self.machine.last_seen_side, hit_side=self.machine.hit_side,
                manual=manual,
            )
        announce = None
        if transition is not None and transition.target is State.FOLLOW:
            announce = "acquired"
        elif transition is not None and transition.source is State.FOLLOW:
            announce = "lost"
        return Decision(now, state, transition, command, tracks, target, view, carried, announce)
