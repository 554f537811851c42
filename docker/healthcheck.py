"""Container HEALTHCHECK: one grpc.health.v1 Check against this container's own server.

Copied into the service images as /opt/robomesh/healthcheck.py and run by Docker (exec form:
``HEALTHCHECK CMD ["/opt/venv/bin/python", "/opt/robomesh/healthcheck.py"]``); the images carry no
grpc_health_probe binary. Exit 0 when the server answers SERVING, 1 otherwise (NOT_SERVING while
the model loads or while draining, connection refused, timeout), as Docker expects.

Target ``127.0.0.1:$PORT`` (the servers bind ``[::]``, which takes IPv4 too; ``PORT`` is set in
every image and read by the server as well). Service name: ``$HEALTHCHECK_SERVICE``, else the
first argument, else ``""`` (the whole server). Kubernetes ignores Docker's HEALTHCHECK and uses
the native ``grpc:`` probes of the manifests instead; this is for ``docker run`` and compose.

A server started with ``TLS_CERT`` (direct TLS, outside the mesh) needs a TLS check: ``--tls-ca``
(or ``HEALTHCHECK_TLS_CA``), plus ``--tls-cert``/``--tls-key`` (``HEALTHCHECK_TLS_CERT``/``_KEY``)
when it requires client certificates, and ``--tls-server-name`` (``HEALTHCHECK_TLS_SERVER_NAME``)
when its certificate does not name 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def check(target: str, service: str = "", timeout_s: float = 2.0, tls: argparse.Namespace | None = None,
          ) -> tuple[bool, str]:
    """(SERVING?, why) for one Check call; never raises. ``tls``: parsed ``--tls-*`` flags, or None for plaintext."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        if tls is not None and (tls.tls_ca or tls.tls_cert):
            try:
                pems = [Path(p).read_bytes() if p else None for p in (tls.tls_ca, tls.tls_key, tls.tls_cert)]
            except OSError as exc:
                return False, f"TLS file: {exc}"
            name = [("grpc.ssl_target_name_override", tls.tls_server_name)] if tls.tls_server_name else []
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(*pems), options=name)
        else:
            channel = grpc.insecure_channel(target)
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.RpcError as exc:
        return False, f"{target} {service!r}: {exc.code().name} {exc.details() or ''}".rstrip()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target} {service!r}: {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="grpc.health.v1 check of 127.0.0.1:$PORT")
    parser.add_argument("service", nargs="?", default="", help="service name (HEALTHCHECK_SERVICE wins)")
    for flag, what in (("ca", "CA to verify the server"), ("cert", "client certificate"),
                       ("key", "client key"), ("server-name", "name in the server certificate")):
        env = f"HEALTHCHECK_TLS_{flag.upper().replace('-', '_')}"
        parser.add_argument(f"--tls-{flag}", default=os.environ.get(env), help=f"{what} [{env}]")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    port = os.environ.get("PORT", "").strip()
    if not port.isdigit():
        print(f"healthcheck: PORT must be set to the gRPC port; got {port!r}", file=sys.stderr)
        return 1
    service = os.environ.get("HEALTHCHECK_SERVICE", args.service)
    timeout_s = float(os.environ.get("HEALTHCHECK_TIMEOUT_S", "2"))
    ok, why = check(f"127.0.0.1:{port}", service, timeout_s, args)
    print(f"healthcheck: {why}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
