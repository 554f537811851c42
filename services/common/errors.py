"""A request error carries the gRPC status the client should see."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """Raised by validation and detectors; the servicer turns it into ``context.abort``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


class StartupError(Exception):
    """A mistake found while starting (a taken port...): ``main`` prints its one-line message and exits 1."""
