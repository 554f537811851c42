"""Admission in front of every detection RPC: unparseable requests and overload get precise statuses.

grpc's own ``maximum_concurrent_rpcs`` counts health checks too, so an
overloaded pod would fail its probes and be restarted; here only the detection
methods are bounded, and a request beyond the bound gets RESOURCE_EXHAUSTED at
once instead of waiting in a queue (the caller, Istio's retry or outlier
detection, can go elsewhere). A request whose bytes are not the expected
protobuf gets INVALID_ARGUMENT naming the message, not grpc's generic INTERNAL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from services.common.metrics import ServiceMetrics

log = logging.getLogger(__name__)

V1_PACKAGE = "robomesh.detection.v1."
# Health and reflection stay outside the bound: probes must answer while the service is saturated.
UNGUARDED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


@dataclass(frozen=True)
class Unparseable:
    """Stands in for a request whose bytes did not parse; the guarded handler refuses it."""

    reason: str


def method_label(full_method: str) -> str:
    """``/robomesh.detection.v1.FaceDetection/Detect`` -> ``v1.Detect``; legacy paths -> ``legacy.FaceDetect``."""
    service, _, name = full_method.lstrip("/").rpartition("/")
    return f"v1.{name}" if service.startswith(V1_PACKAGE) else f"legacy.{name}"


def lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as err:  # DecodeError, or anything a corrupt message provokes
            return Unparseable(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)

    return parse_or_mark


def message_name(parse: Callable[[bytes], Any] | None) -> str:
    owner = getattr(parse, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request message")


class InFlightLimit:
    """A non-blocking bound on concurrent requests; ``limit`` 0 means unbounded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit) if limit > 0 else None

    def try_enter(self) -> bool:
        return self._slots is None or self._slots.acquire(blocking=False)

    def leave(self) -> None:
        if self._slots is not None:
            self._slots.release()


class RequestGuard(grpc.ServerInterceptor):
    """Wraps every unary-unary detection method with lenient parsing and the in-flight bound."""

    def __init__(self, limit: InFlightLimit, metrics: ServiceMetrics) -> None:
        self.limit = limit
        self.metrics = metrics

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        path = handler_call_details.method
        if handler is None or handler.unary_unary is None or path.startswith(UNGUARDED_PREFIXES):
            return handler
        label = method_label(path)
        expected = message_name(handler.request_deserializer)
        behaviour = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, Unparseable):
                self.metrics.count_request(label, "INVALID_ARGUMENT")
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"request is not a valid {expected}: {request.reason}")
            if not self.limit.try_enter():
                self.metrics.count_request(label, "RESOURCE_EXHAUSTED")
                log.info("request refused: overloaded", extra={"method": label, "limit": self.limit.limit})
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"overloaded: {self.limit.limit} requests already in progress "
                              "(--max-in-flight); retry later or on another replica")
            try:
                return behaviour(request, context)
            finally:
                self.limit.leave()

        parse = handler.request_deserializer
        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=lenient(parse) if parse is not None else None,
            response_serializer=handler.response_serializer,
        )
