"""Robot drivers behind one interface (``RobotDriver``), opened by name; wrap them in ``SafeRobot``.

The RoboMaster SDK is imported only when a ``RoboMasterRobot`` is created, so the rest of the
client runs (and is tested) on any Python without it.
"""

from __future__ import annotations

from typing import Any

from robotclient.runtime.drivers.base import RobotDriver, RobotUnavailable, edge_color
from robotclient.runtime.drivers.null import NullRobot
from robotclient.runtime.drivers.robomaster_driver import RoboMasterRobot
from robotclient.runtime.drivers.safety import SafeRobot

# The simulator's driver (robotclient.sim.robot.SimulatedRobot) lives with the simulator: the runtime
# does not import it (runtime <- sim <- lab); `robotclient run --robot sim` opens it from the CLI.
DRIVER_NAMES = ("null", "robomaster")

__all__ = [
    "DRIVER_NAMES",
    "NullRobot",
    "RoboMasterRobot",
    "RobotDriver",
    "RobotUnavailable",
    "SafeRobot",
    "edge_color",
    "open_driver",
]


def open_driver(name: str, **options: Any) -> RobotDriver:
    """Open a driver by its command-line name, passing ``options`` to its constructor."""
    if name == "robomaster":
        return RoboMasterRobot(**options)
    if name == "null":
        return NullRobot(**options)
    raise ValueError(f"unknown robot driver {name!r}; valid names: {', '.join(DRIVER_NAMES)}")
