"""The wrapper every caller drives the robot through: one clamp, a watchdog, and a guaranteed stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from robotclient.runtime.drivers.base import RobotDriver
from robotclient.runtime.limits import SpeedLimits
from robotclient.runtime.model import STOP, Command, HitEvent

logger = logging.getLogger(__name__)


class SafeRobot:
    """Make a driver safe to use from a control loop that may stall, crash or be interrupted.

    - ``drive`` clamps through ``limits.clamp`` (the one place commands are clamped) and forwards.
    - A watchdog thread stops the robot once when a moving command was not followed by another
      ``drive``/``stop`` within ``watchdog_s``: a stalled loop never leaves the robot driving.
      The next command resumes normally. It checks every ``tick_s`` (default ``watchdog_s / 5``);
      tests inject a fake clock and a short tick, or call ``check_watchdog()`` themselves.
    - As a context manager it stops and closes the driver on exit, also on an exception or Ctrl-C.
    - After ``close()`` nothing reaches the driver any more; ``stop()`` and ``close()`` are idempotent.
    """

    def __init__(
        self,
        driver: RobotDriver,
        limits: SpeedLimits = SpeedLimits(),  # noqa: B008 - frozen dataclass, a shared default is safe
        watchdog_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        *,
        tick_s: float | None = None,
        start_watchdog: bool = True,
    ) -> None:
        if watchdog_s <= 0:
            raise ValueError("watchdog_s must be positive")
        self.driver = driver
        self.name = driver.name
        self.limits = limits
        self.watchdog_s = watchdog_s
        self._clock = clock
        self._tick_s = tick_s if tick_s is not None else min(watchdog_s / 5.0, 0.1)
        self._lock = threading.RLock()
        self._closed = False
        self._closing = threading.Event()
        self._last_activity = clock()
        self._moving = False
        self._last_command = STOP
        self.watchdog_stops = 0
        self._thread: threading.Thread | None = None
        if start_watchdog:
            self._thread = threading.Thread(target=self._watch, name=f"watchdog-{driver.name}", daemon=True)
            self._thread.start()

    @property
    def closed(self) -> bool:
        """True once closed: from then on nothing reaches the driver."""
        return self._closed

    @property
    def last_command(self) -> Command:
        """The last command forwarded to the driver, after clamping (STOP after a stop)."""
        return self._last_command

    def drive(self, cmd: Command) -> None:
        """Clamp and forward; ignored (with a debug log) once closed."""
        clamped = self.limits.clamp(cmd)
        with self._lock:
            if self._closed:
                logger.debug("safe robot: drive after close ignored: %s", cmd)
                return
            self._last_activity = self._clock()
            self._moving = True  # armed before forwarding: a drive that fails half-way still gets a watchdog stop
            self.driver.drive(clamped)
            self._last_command = clamped
            self._moving = not clamped.is_stop

    def stop(self) -> None:
        """Stop now. Always forwarded while open (a repeated stop is harmless and may be the one that arrives)."""
        with self._lock:
            if self._closed:
                return
            self._last_activity = self._clock()
            self._moving = False
            self._last_command = STOP
            self.driver.stop()

    def check_watchdog(self) -> bool:
        """One watchdog check; True when it stopped the robot. The watchdog thread calls this every tick."""
        with self._lock:
            if self._closed or not self._moving:
                return False
            idle = self._clock() - self._last_activity
            if idle < self.watchdog_s:
                return False
            self._moving = False
            self._last_command = STOP
            self.watchdog_stops += 1
            logger.warning("safe robot: no command for %.2f s (limit %.2f s): stopping", idle, self.watchdog_s)
            self.driver.stop()
            return True

    def _watch(self) -> None:
        while not self._closing.wait(self._tick_s):
            try:
                self.check_watchdog()
            except Exception:
                logger.exception("safe robot: watchdog stop failed; retrying next tick")
                with self._lock:
                    self._moving = True

    # --- pass-through -------------------------------------------------------------------------

    def show_state(self, state: str) -> None:
        """Forwarded while open (LEDs are not safety-relevant, but a closed robot must stay untouched)."""
        with self._lock:
            if not self._closed:
                self.driver.show_state(state)

    def show_edge(self, edge: str) -> None:
        """Forwarded while open."""
        with self._lock:
            if not self._closed:
                self.driver.show_edge(edge)

    def announce(self, event: str) -> None:
        """Forwarded while open."""
        with self._lock:
            if not self._closed:
                self.driver.announce(event)

    def take_hits(self) -> list[HitEvent]:
        """Forwarded while open; no hits after close."""
        with self._lock:
            return [] if self._closed else self.driver.take_hits()

    def telemetry(self) -> dict[str, float]:
        """Forwarded while open; empty after close."""
        with self._lock:
            return {} if self._closed else self.driver.telemetry()

    # --- shutdown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop, end the watchdog, close the driver; idempotent, and the driver is closed even if stop fails."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closing.set()
            try:
                self.driver.stop()
            finally:
                self.driver.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def __enter__(self) -> SafeRobot:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        logger.warning("safe robot: stopping on %s", exc_type.__name__)
        try:
            self.close()
        except Exception:
            logger.exception("safe robot: stop/close failed while handling %s", exc_type.__name__)
