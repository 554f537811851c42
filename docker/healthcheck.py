"""Container HEALTHCHECK: one grpc.health.v1 Check against this container's own server.

Copied into the service images as /opt/robomesh/healthcheck.py and run by Docker (exec form:
``HEALTHCHECK CMD ["/opt/venv/bin/python", "/opt/robomesh/healthcheck.py"]``); the images carry no
grpc_health_probe binary. Exit 0 when the server answers SERVING, 1 otherwise (NOT_SERVING while
the model loads or while draining, connection refused, timeout), as Docker expects.

Target ``127.0.0.1:$PORT`` (the servers bind ``[::]``, which takes IPv4 too; ``PORT`` is set in
every image and read by the server as well). Service name: ``$HEALTHCHECK_SERVICE``, else the
first argument, else ``""`` (the whole server). Kubernetes ignores Docker's HEALTHCHECK and uses
the native ``grpc:`` probes of the manifests instead; this is for ``docker run`` and compose.
"""

from __future__ import annotations

import os
import sys


def check(target: str, service: str = "", timeout_s: float = 2.0) -> tuple[bool, str]:
    """(SERVING?, why) for one Check call; never raises."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.RpcError as exc:
        return False, f"{target} {service!r}: {exc.code().name} {exc.details() or ''}".rstrip()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target} {service!r}: {status}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    port = os.environ.get("PORT", "").strip()
    if not port.isdigit():
        print(f"healthcheck: PORT must be set to the gRPC port; got {port!r}", file=sys.stderr)
        return 1
    service = os.environ.get("HEALTHCHECK_SERVICE", argv[0] if argv else "")
    timeout_s = float(os.environ.get("HEALTHCHECK_TIMEOUT_S", "2"))
    ok, why = check(f"127.0.0.1:{port}", service, timeout_s)
    print(f"healthcheck: {why}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
