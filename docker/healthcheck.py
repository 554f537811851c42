"""Container HEALTHCHECK: one grpc.health.v1 Check against this container's own server.

Copied into the service images as /opt/robomesh/healthcheck.py and run by Docker (exec form:
``HEALTHCHECK CMD ["/opt/venv/bin/python", "/opt/robomesh/healthcheck.py"]``); the images carry no
grpc_health_probe binary. Exit 0 when the server answers SERVING, 1 otherwise (NOT_SERVING while
the model loads or while draining, connection refused, timeout), as Docker expects.

Target: the address the server in this container was really started on. The server is PID 1
(the images' exec-form ENTRYPOINT; under ``--init`` PID 1 is tini/catatonit, whose command line
holds the server's): its ``--port`` and ``--host`` flags win, as they do in the server, else the
``PORT`` and ``HOST`` environment variables (set in every image; Docker runs the check with the
container's environment). A wildcard host (``[::]``, ``0.0.0.0``) is checked on ``127.0.0.1``.
``--port N`` (or ``HEALTHCHECK_PORT``) here overrides all that, e.g. for a server started with
``--port 0``. So ``docker run IMAGE --port 50100`` reports healthy without also setting ``PORT``.
Service name: ``$HEALTHCHECK_SERVICE``, else the first argument, else ``""`` (the whole server).
Kubernetes ignores Docker's HEALTHCHECK and uses the native ``grpc:`` probes of the manifests
instead; this is for ``docker run``, podman and compose.

A server started with ``TLS_CERT`` (direct TLS, outside the mesh) needs a TLS check: ``--tls-ca``
(or ``HEALTHCHECK_TLS_CA``), plus ``--tls-cert``/``--tls-key`` (``HEALTHCHECK_TLS_CERT``/``_KEY``)
when it requires client certificates, and ``--tls-server-name`` (``HEALTHCHECK_TLS_SERVER_NAME``)
when its certificate does not name 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

# How a detection server appears in PID 1's command line: `python -m services.<name>` or a console script.
SERVER_MODULES = frozenset({"services.facedetection", "services.yolodetection", "services.objectdetection"})
SERVER_SCRIPTS = frozenset({"facedetection", "yolodetection", "objectdetection"})
WILDCARD_HOSTS = frozenset({"", "[::]", "::", "0.0.0.0", "*"})


def server_args(cmdline: list[str]) -> list[str] | None:
    """The arguments given to a detection server in ``cmdline`` (after its module or script), or None if none runs.

    Finds the server also behind an init (``tini -- python -m services.x ...``) and in ``sh -c "..."``.
    """
    for index, word in enumerate(cmdline):
        if word == "-m" and index + 1 < len(cmdline) and cmdline[index + 1] in SERVER_MODULES:
            return cmdline[index + 2:]
        if word.startswith("-m") and word[2:] in SERVER_MODULES:
            return cmdline[index + 1:]
        if os.path.basename(word) in SERVER_SCRIPTS:
            return cmdline[index + 1:]
        if word == "-c" and index + 1 < len(cmdline):
            try:
                inner = server_args(shlex.split(cmdline[index + 1]))
            except ValueError:
                inner = None
            if inner is not None:
                return inner
    return None


def option_value(args: list[str], option: str) -> str | None:
    """The last value of ``option`` (``--port``) in ``args`` as argparse reads it: ``--port N``, ``--port=N``,
    or an abbreviation the server accepted (``--po N``). None when absent."""
    value = None
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--":
            break
        flag, equals, inline = word.partition("=")
        if len(flag) > 2 and flag.startswith("--") and option.startswith(flag):
            if equals:
                value = inline
            elif index + 1 < len(args):
                value = args[index + 1]
                index += 1
        index += 1
    return value


def pid1_cmdline(proc: Path = Path("/proc")) -> list[str]:
    try:
        raw = (proc / "1" / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.removesuffix(b"\0").split(b"\0")] if raw else []


def server_target(environ: Mapping[str, str] = os.environ, proc: Path = Path("/proc"),
                  port_override: str | None = None) -> tuple[str | None, str]:
    """(``host:port`` to check or None, where the port came from) for the server this container runs."""
    args = server_args(pid1_cmdline(proc))
    flags = {} if args is None else {name: option_value(args, f"--{name}") for name in ("host", "port")}
    if port_override:
        port, source = port_override, "--port/HEALTHCHECK_PORT"
    elif flags.get("port") is not None:
        port, source = flags["port"], "the server's --port (PID 1)"
    else:
        port, source = environ.get("PORT", ""), "PORT"
    port = port.strip()
    if not port.isdigit() or int(port) == 0:
        return None, f"no gRPC port to check: {source} gives {port!r} (set HEALTHCHECK_PORT)"
    host = (flags.get("host") if flags.get("host") is not None else environ.get("HOST", "")).strip()
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address
    return f"{host}:{port}", source


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


def main(argv: list[str] | None = None, proc: Path = Path("/proc")) -> int:
    parser = argparse.ArgumentParser(description="grpc.health.v1 check of this container's server")
    parser.add_argument("service", nargs="?", default="", help="service name (HEALTHCHECK_SERVICE wins)")
    parser.add_argument("--port", default=os.environ.get("HEALTHCHECK_PORT"),
                        help="check this port, not the server's --port or PORT [HEALTHCHECK_PORT]")
    for flag, what in (("ca", "CA to verify the server"), ("cert", "client certificate"),
                       ("key", "client key"), ("server-name", "name in the server certificate")):
        env = f"HEALTHCHECK_TLS_{flag.upper().replace('-', '_')}"
        parser.add_argument(f"--tls-{flag}", default=os.environ.get(env), help=f"{what} [{env}]")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    target, source = server_target(os.environ, proc, args.port)
    if target is None:
        print(f"healthcheck: {source}", file=sys.stderr)
        return 1
    service = os.environ.get("HEALTHCHECK_SERVICE", args.service)
    timeout_s = float(os.environ.get("HEALTHCHECK_TIMEOUT_S", "2"))
    ok, why = check(target, service, timeout_s, args)
    print(f"healthcheck: {why}" + ("" if ok else f" (port from {source})"), file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
