"""Who is serving: read once at start-up from the Downward API environment."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ServedByInfo:
    service: str
    hostname: str
    ipv4: str
    pod: str = ""
    node: str = ""
    zone: str = ""
    site: str = ""
    version: str = ""
    device: str = "cpu"

    def with_device(self, device: str) -> ServedByInfo:
        return replace(self, device=device)

    @property
    def ipv4_as_int(self) -> int:
        """The legacy ``fixed32 ipv4``: the address in network byte order as an unsigned integer."""
        try:
            return int(ipaddress.IPv4Address(self.ipv4))
        except ValueError:
            return 0


def _local_ipv4(hostname: str) -> str:
    try:
        return socket.gethostbyname(hostname)
    except OSError:
        return "127.0.0.1"


def served_by_from_env(service: str, env: Mapping[str, str] | None = None) -> ServedByInfo:
    """Kubernetes sets POD_NAME, POD_IP, NODE_NAME via the Downward API; SITE/ZONE/VERSION via labels."""
    env = os.environ if env is None else env
    hostname = env.get("HOSTNAME") or socket.gethostname()
    return ServedByInfo(
        service=service,
        hostname=hostname,
        ipv4=env.get("POD_IP") or _local_ipv4(hostname),
        pod=env.get("POD_NAME", ""),
        node=env.get("NODE_NAME", ""),
        zone=env.get("ZONE", ""),
        site=env.get("SITE", ""),
        version=env.get("SERVICE_VERSION", ""),
    )
