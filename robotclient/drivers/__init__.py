"""Robot drivers behind one interface (``RobotDriver``), opened by name; wrap them in ``SafeRobot``.

The RoboMaster SDK is imported only when a ``RoboMasterRobot`` is created, so the rest of the
client runs (and is tested) on any Python without it.
"""

from __future__ import annotations

from typing import Any

from robotclient.drivers.base import RobotDriver, RobotUnavailable, edge_color
from robotclient.drivers.null import NullRobot
from robotclient.drivers.robomaster_driver import RoboMasterRobot
from robotclient.drivers.safety import SafeRobot
from robotclient.drivers.sim import SimulatedRobot

DRIVER_NAMES = ("null", "robomaster", "sim")

__all__ = [
    "DRIVER_NAMES",
    "NullRobot",
    "RoboMasterRobot",
    "RobotDriver",
    "RobotUnavailable",
    "SafeRobot",
    "SimulatedRobot",
    "edge_color",
    "open_driver",
]


def open_driver(name: str, **options: Any) -> RobotDriver:
    """Open a driver by its command-line name, passing ``options`` to its constructor."""
    if name == "robomaster":
        return RoboMasterRobot(**options)
    if name == "sim":
        return SimulatedRobot(**options)
    if name == "null":
        return NullRobot(**options)
    raise ValueError(f"unknown robot driver {name!r}; valid names: {', '.join(DRIVER_NAMES)}")
