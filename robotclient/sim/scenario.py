"""``robotclient sim``: closed loop with a simulated robot, a rendered camera and the real mesh.

The camera view is rendered from the simulated robot's pose (about 62° field
of view, as the Raspicam v2), sent through the detection mesh, and the same
session and control loop as on the robot steer the simulated robot. The
world knows where the person really is, so the run is scored against ground
truth: the fraction of frames with the target in the central band, the time
to first acquisition, and the time to re-acquire after the target leaves the
view.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from robotclient.runtime.loop import RateSchedule
from robotclient.runtime.model import CapturedFrame
from robotclient.runtime.session import Decision
from robotclient.runtime.statemachine import State
from robotclient.sim.identity import IdentityScore
from robotclient.sim.robot import SimulatedRobot
from robotclient.sim.world import SimWorld


class SimCamera:
    """A frame source that renders the world from the robot's current pose at a fixed frame rate.

    Read on the frame loop's thread (``loop.paced``), it closes the loop: each
    frame is rendered after the previous decision drove the simulated robot.
    """

    name = "sim-camera"

    def __init__(
        self,
        world: SimWorld,
        robot: SimulatedRobot,
        *,
        fps: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        start: float | None = None,
    ) -> None:
        self.world, self.robot, self.fps = world, robot, fps
        self._clock, self._sleep = clock, sleep
        self.start = clock() if start is None else start
        self._number = 0
        self._schedule = RateSchedule(fps, self.start)

    def read(self) -> CapturedFrame | None:
        due = self._schedule.due(self._clock())
        delay = due - self._clock()
        if delay > 0:
            self._sleep(delay)
        self._schedule.take(due)
        now = self._clock()
        image = self.world.render(self.robot.pose(), now - self.start)
        self._number += 1
        return CapturedFrame(self._number, now, image)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> SimCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SimScore:
    """Ground-truth scoring of a closed-loop run, fed once per decision."""

    world: SimWorld
    robot: SimulatedRobot
    start: float
    central_band_deg: float
    frames: int = 0
    in_view: int = 0
    centred: int = 0
    following: int = 0
    first_acquired_s: float | None = None
    reacquire_s: list[float] = field(default_factory=list)
    _left_view_at: float | None = None
    _was_following: bool = False
    # Distractors: whom the followed track is on (id switches, frames on a distractor); see sim/identity.py.
    identity: IdentityScore = field(default_factory=IdentityScore)

    def observe(self, frame: CapturedFrame, decision: Decision) -> None:
        t = frame.captured_at - self.start
        pose = self.robot.pose()
        visible = self.world.target_in_view(pose, t)
        bearing, _ = self.world.target_bearing(pose, t)
        self.frames += 1
        self.in_view += visible
        self.centred += visible and abs(bearing) <= self.central_band_deg
        following = decision.state is State.FOLLOW
        self.following += following
        if following and self.first_acquired_s is None:
            self.first_acquired_s = t
        if not visible and self._was_following and self._left_view_at is None:
            self._left_view_at = t
        if self._left_view_at is not None and visible and following:
            self.reacquire_s.append(t - self._left_view_at)
            self._left_view_at = None
        self._was_following = self._was_following or following
        # Distractors (identity) begin
        followed = decision.target
        self.identity.observe(
            None if followed is None else followed.track_id, None if followed is None else followed.box, following,
            self.world.target_box(pose, t), self.world.distractor_boxes(pose, t),
        )
        # Distractors (identity) end

    def report(self) -> dict[str, Any]:
        return {
            "sim_frames": self.frames,
            "target_in_view_fraction": round(self.in_view / self.frames, 3) if self.frames else 0.0,
            "target_centred_fraction": round(self.centred / self.frames, 3) if self.frames else 0.0,
            "central_band_deg": round(self.central_band_deg, 2),
            "following_fraction": round(self.following / self.frames, 3) if self.frames else 0.0,
            "time_to_first_acquisition_s": None if self.first_acquired_s is None else round(self.first_acquired_s, 2),
            "reacquire_s": [round(s, 2) for s in self.reacquire_s],
            "lost_at_end": self._left_view_at is not None,
            "target_centred_in_view_fraction": round(self.centred / self.in_view, 3) if self.in_view else 0.0,
            **self.identity.report(),
        }
