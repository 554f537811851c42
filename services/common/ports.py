"""A port that cannot be listened on, as a one-line start-up error naming the flag and variable to change."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from services.common.errors import StartupError


@dataclass(frozen=True)
class PortSetting:
    """What the operator changes: the flag and the environment variable of a port, e.g. --metrics-port."""

    what: str  # "gRPC", "metrics", "the live view"
    flag: str
    env: str
    host_flag: str = ""  # where the address comes from, when it can be set
    host_env: str = ""
    can_disable: bool = False  # -1 turns it off


GRPC = PortSetting("gRPC", "--port", "PORT", "--host", "HOST")
METRICS = PortSetting("metrics", "--metrics-port", "METRICS_PORT", can_disable=True)
WEB = PortSetting("the live view", "--web-port", "WEB_PORT", "--web-host", "WEB_HOST", can_disable=True)


def why_not_bound(err: BaseException | None) -> str:
    """The reason, in words; gRPC gives none (``None``): it fails only with "Failed to bind"."""
    if isinstance(err, socket.gaierror):
        return "the address is not known"
    code = err.errno if isinstance(err, OSError) else None
    if code == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if code == errno.EADDRNOTAVAIL:
        return "the address is not one of this machine's"
    if code in (errno.EADDRINUSE, None):
        return "the port is taken (another server?)"
    return str(err.strerror or err) if isinstance(err, OSError) else str(err)


def _address_problem(err: BaseException | None) -> bool:
    return isinstance(err, socket.gaierror) or (isinstance(err, OSError) and err.errno == errno.EADDRNOTAVAIL)


def port_error(setting: PortSetting, host: str, port: int, err: BaseException | None) -> StartupError:
    """E.g. ``cannot serve metrics on 0.0.0.0:9093: the port is taken (another server?); choose another
    port with --metrics-port or METRICS_PORT (-1 turns it off)``."""
    host = host.strip("[]")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if _address_problem(err) and setting.host_flag:
        change = f"choose another address with {setting.host_flag} or {setting.host_env}"
    else:
        off = " (-1 turns it off)" if setting.can_disable else ""
        change = f"choose another port with {setting.flag} or {setting.env}{off}"
    return StartupError(f"cannot serve {setting.what} on {address}: {why_not_bound(err)}; {change}")


def probe(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be listened on now (taken, privileged, not an address of this machine), or None.

    For gRPC, which logs an error of its own and then says only "Failed to bind": asking first gives the
    reason in one line. A wildcard address this machine cannot open (no IPv6) is left for the server to
    judge (gRPC falls back to IPv4).
    """
    try:
        found = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        return err
    for family, kind, proto, _name, address in found:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "[::]" takes IPv4 too
            try:
                sock.bind(address)
            except OSError as err:
                wildcard = address[0] in ("::", "0.0.0.0")
                if err.errno in (errno.EADDRINUSE, errno.EACCES) or (err.errno == errno.EADDRNOTAVAIL and not wildcard):
                    return err
    return None
