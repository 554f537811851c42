"""The deadline of one frame, from the robot's capture to the detector's engine: part of the call contract.

A deadline is a point on the monotonic clock of the process holding it. It crosses a process boundary
only as the gRPC timeout of a call (``for_call``: what is left, less a margin, capped) and is rebuilt on
the far side from the call (``from_grpc_context``) on that process's clock. The path of one frame:

- robot: capture time + the per-frame budget (``Deadline.after``); a frame too close to it is not sent;
  the call's timeout is what is left;
- aggregator: the caller's deadline; refused when no more than the reply margin is left on arrival;
  each detector is called with what is left less that margin, never longer than ``--detector-timeout``;
- detector: the caller's deadline, down to the YOLO batcher, which drops a frame still queued when it
  passes (never computed).

Pure: no clock is read here, the current time is always passed in (``now``), so the same code serves the
robot's injected clocks and the servers' ``time.monotonic``. ``NO_DEADLINE`` stands for a call without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, overload


class HasTimeRemaining(Protocol):
    """What a deadline is read from: ``grpc.ServicerContext`` (None or a huge value: no deadline)."""

    def time_remaining(self) -> float | None: ...


@dataclass(frozen=True)
class Deadline:
    """``at``: seconds on the holder's monotonic clock (``math.inf``: none)."""

    at: float

    def __post_init__(self) -> None:
        if math.isnan(self.at):
            raise ValueError("a deadline cannot be NaN")

    @classmethod
    def after(cls, budget_s: float, start: float) -> Deadline:
        """``budget_s`` after ``start`` (the robot: after the frame's capture)."""
        return cls(start + budget_s)

    @classmethod
    def from_timeout(cls, timeout_s: float | None, now: float) -> Deadline:
        """A call's timeout seen at ``now`` (None: no deadline)."""
        return NO_DEADLINE if timeout_s is None else cls(now + timeout_s)

    @classmethod
    def from_grpc_context(cls, context: HasTimeRemaining, now: float) -> Deadline:
        """The caller's deadline of the call being served, on the clock that gave ``now``."""
        return cls.from_timeout(context.time_remaining(), now)

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.at)

    def remaining(self, now: float) -> float:
        """Seconds left at ``now`` (negative once passed; ``math.inf`` without a deadline)."""
        return self.at - now

    def expired(self, now: float, margin: float = 0.0) -> bool:
        """Whether no more than ``margin`` seconds are left at ``now``."""
        return self.remaining(now) <= margin

    @overload
    def for_call(self, now: float, margin: float = 0.0, *, cap: float) -> float: ...

    @overload
    def for_call(self, now: float, margin: float = 0.0, cap: None = None) -> float | None: ...

    def for_call(self, now: float, margin: float = 0.0, cap: float | None = None) -> float | None:
        """The gRPC timeout of a call made at ``now``: what is left less ``margin`` (never below 0),
        at most ``cap``; None (no timeout) only when there is neither a deadline nor a cap."""
        timeout = max(0.0, self.remaining(now) - margin)
        if cap is not None:
            timeout = min(timeout, cap)
        return None if math.isinf(timeout) else timeout


NO_DEADLINE = Deadline(math.inf)
