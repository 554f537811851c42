"""The boundary between gRPC and the pure code: errors become precise statuses, metrics are counted."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import grpc

from services.common.errors import RequestError, invalid
from services.common.metrics import ServiceMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class Loaded(Generic[T]):
    """Holds what is loaded after the port opens (a model); calls before that get UNAVAILABLE."""

    def __init__(self) -> None:
        self._value: T | None = None
        self._lock = threading.Lock()

    def set(self, value: T) -> None:
        with self._lock:
            self._value = value

    def get(self) -> T:
        value = self._value
        if value is None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry shortly")
        return value


def checked_max_results(requested: int, limit: int) -> int:
    """0 means the server's default (the limit); negative or above the limit is refused."""
    if requested < 0:
        raise invalid(f"max_results must be >= 0; got {requested}")
    if requested > limit:
        raise invalid(f"max_results must be <= {limit}; got {requested}")
    return requested or limit


def handle_rpc(
    method: str,
    context: grpc.ServicerContext,
    metrics: ServiceMetrics,
    work: Callable[[], T],
) -> T:
    """Runs ``work``; a RequestError aborts with its status, anything else with INTERNAL (logged)."""
    with metrics.track_in_flight():
        try:
            reply = work()
        except RequestError as err:
            metrics.count_request(method, err.code.name)
            log.info("request refused", extra={"method": method, "code": err.code.name, "reason": err.message})
            context.abort(err.code, err.message)
        except Exception as err:  # the service keeps serving whatever one frame does
            metrics.count_request(method, "INTERNAL")
            log.exception("request failed", extra={"method": method})
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}")
        metrics.count_request(method, "OK")
        return reply
