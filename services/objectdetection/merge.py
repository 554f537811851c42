"""Pure rules of the aggregator: which users, which engines, how replies merge."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

from protos import detection_v1_pb2 as v1
from services.common.errors import RequestError, invalid

# Incoming headers copied to the detector calls so that traces join up across the mesh, and the
# robot's id so that Istio's header routes (istio/steps/yolodetection-by-robot-id.yaml) apply to the
# detector hop too.
TRACE_HEADERS = frozenset({"x-request-id", "traceparent", "tracestate", "b3", "x-ot-span-context", "x-robot-id"})
TRACE_HEADER_PREFIXES = ("x-b3-",)


@dataclass(frozen=True)
class UserIdRule:
    """The original aggregator served user ids 0-5 only (NOT_FOUND otherwise); ``None`` bounds allow all."""

    low: int | None = 0
    high: int | None = 5

    @classmethod
    def parse(cls, text: str) -> UserIdRule:
        """``"0-5"``, ``"3"`` or ``"any"``."""
        text = text.strip().lower()
        if text in ("any", "all", "*", ""):
            return cls(None, None)
        low, sep, high = text.partition("-")
        try:
            lo = int(low)
            hi = int(high) if sep else lo
        except ValueError as err:
            raise ValueError(f"user id range must look like 0-5, 3 or any; got {text!r}") from err
        if hi < lo:
            raise ValueError(f"user id range is empty: {text!r}")
        return cls(lo, hi)

    def check(self, user_id: int) -> None:
        if self.low is None or self.high is None:
            return
        if not self.low <= user_id <= self.high:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"unknown user_id {user_id}; this service serves user ids {self.low}-{self.high}")

    def __str__(self) -> str:
        return "any" if self.low is None else f"{self.low}-{self.high}"


def wanted_engines(requested: Iterable[int], available: Sequence[int]) -> list[int]:
    """Empty request: every available engine. Unknown or unavailable engines are refused by name."""
    requested = list(dict.fromkeys(requested))
    if not requested:
        return list(available)
    for engine in requested:
        if engine not in available:
            name = v1.Engine.Name(engine) if engine in v1.Engine.values() else str(engine)
            served = ", ".join(v1.Engine.Name(e) for e in available) or "none"
            raise invalid(f"engine {name} is not served here (available: {served})")
    return requested


def tracing_metadata(incoming: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str | bytes]]:
    return [(k, v) for k, v in incoming if k in TRACE_HEADERS or k.startswith(TRACE_HEADER_PREFIXES)]


def merge_detections(per_engine: Iterable[Sequence[v1.Detection]], max_results: int) -> list[v1.Detection]:
    """Highest confidence first over all engines, then capped."""
    merged = [d for detections in per_engine for d in detections]
    merged.sort(key=lambda d: d.confidence, reverse=True)
    return merged[:max_results]


def frame_error(statuses: Iterable[v1.DetectorStatus]) -> RequestError | None:
    """A frame every detector refuses as malformed is the caller's error, not a partial reply.

    So is a frame every detector refuses as overloaded: an empty reply would read as "nothing
    seen", while RESOURCE_EXHAUSTED lets the robot (or Istio's retry) try again or elsewhere.
    """
    statuses = list(statuses)
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        refused = [s for s in statuses if s.code == code.value[0]]
        if statuses and len(refused) == len(statuses):
            return RequestError(code, refused[0].message if code is grpc.StatusCode.INVALID_ARGUMENT
                                else "every detector is overloaded: " + "; ".join(s.message for s in refused))
    return None
