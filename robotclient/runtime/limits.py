"""Speed limits: the one place where every chassis command is clamped before it reaches a robot."""

from __future__ import annotations

import math
from dataclasses import dataclass

from robotclient.runtime.model import Command


@dataclass(frozen=True)
class SpeedLimits:
    """Hard bounds for the chassis (RoboMaster EP tops out at 3.5 m/s and 600 deg/s; these are for following indoors).

    Values with a magnitude below the ``min_*`` floors are sent as zero: the
    motors cannot produce them and would only hum (the original used 0.09 m/s
    and 1 deg/s).
    """

    max_forward: float = 0.6
    max_backward: float = 0.3
    max_lateral: float = 0.4
    max_yaw: float = 45.0
    min_linear: float = 0.02
    min_yaw: float = 1.0

    def clamp(self, command: Command) -> Command:
        x = _bounded(command.x, -self.max_backward, self.max_forward, self.min_linear)
        y = _bounded(command.y, -self.max_lateral, self.max_lateral, self.min_linear)
        z = _bounded(command.z, -self.max_yaw, self.max_yaw, self.min_yaw)
        return Command(x, y, z)


def _bounded(value: float, low: float, high: float, floor: float) -> float:
    if not math.isfinite(value) or abs(value) < floor:
        return 0.0
    return max(low, min(high, value))
