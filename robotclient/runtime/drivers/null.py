"""A dry-run robot: logs and records what a real robot would have been told, moves nothing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from robotclient.runtime.drivers.base import check_event, edge_color, led_style
from robotclient.runtime.model import Command, HitEvent

logger = logging.getLogger(__name__)

Record = tuple[float, Command | str]


class NullRobot:
    """Run the whole pipeline without hardware: every call is logged and kept in ``records``.

    ``records`` holds ``(time, Command)`` for drives and ``(time, "stop")``, ``(time, "state:follow")``,
    ``(time, "edge:10.0.0.1")``, ``(time, "announce:acquired")``, ``(time, "close")`` for the rest.
    """

    name = "null"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.records: list[Record] = []

    def _record(self, what: Command | str) -> None:
        with self._lock:
            self.records.append((self._clock(), what))

    def drive(self, cmd: Command) -> None:
        """Log the command a robot would have executed."""
        logger.info("null robot: drive x=%.3f y=%.3f z=%.1f", cmd.x, cmd.y, cmd.z)
        self._record(cmd)

    def stop(self) -> None:
        """Log a stop."""
        logger.info("null robot: stop")
        self._record("stop")

    def show_state(self, state: str) -> None:
        """Log the LED style; validates the state like a real driver would."""
        style = led_style(state)
        logger.info("null robot: state %s (led %s)", state, style.effect)
        self._record(f"state:{state}")

    def show_edge(self, edge: str) -> None:
        """Log the edge and the colour the LEDs would show."""
        logger.info("null robot: edge %r colour %s", edge, edge_color(edge))
        self._record(f"edge:{edge}")

    def announce(self, event: str) -> None:
        """Log the sound that would play."""
        logger.info("null robot: announce %s", check_event(event))
        self._record(f"announce:{event}")

    def take_hits(self) -> list[HitEvent]:
        """A dry run is never hit."""
        return []

    def telemetry(self) -> dict[str, float]:
        """No sensors, no readings."""
        return {}

    def close(self) -> None:
        """Log the end of the run."""
        logger.info("null robot: close")
        self._record("close")

    def commands(self) -> list[tuple[float, Command]]:
        """Only the drive commands, for tests and reports."""
        with self._lock:
            return [(t, what) for t, what in self.records if isinstance(what, Command)]
