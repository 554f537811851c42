"""Client TLS for a robot talking straight to a server (no mesh): verify it, optionally present a certificate.

The robot client never imports ``services/`` (the two sides share only the protocol), so this is
the robot's own small copy of the client half of ``services/common/tls.py``. It needs no
``cryptography`` package on the Pi: files are checked for presence and their PEM markers at
start-up, which catches the usual mistakes (wrong path, key and certificate swapped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """A ``--tls-*`` flag names a missing or unreadable file, or one without the PEM block expected."""


def read_pem(path: str, flag: str, kind: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise TlsConfigError(f"{flag} {path}: cannot read: {err.strerror or err}") from err
    marker = b"-----BEGIN CERTIFICATE-----" if kind == "CERTIFICATE" else b"PRIVATE KEY-----"
    if marker not in data:
        raise TlsConfigError(f"{flag} {path}: no PEM {kind} in this file")
    return data


@dataclass(frozen=True)
class ClientTls:
    """Credentials for the robot's channel, and the name the server certificate must carry (if not the host)."""

    credentials: grpc.ChannelCredentials
    server_name: str | None = None

    @classmethod
    def from_files(cls, ca: str | None, cert: str | None = None, key: str | None = None,
                   server_name: str | None = None) -> ClientTls | None:
        """None when no TLS flag is set (plaintext, as in the mesh); without ``ca`` the system's roots verify."""
        if bool(cert) != bool(key):
            raise TlsConfigError("--tls-cert and --tls-key go together: give both or neither")
        if not ca and not cert:
            if server_name:
                raise TlsConfigError("--tls-server-name needs --tls-ca (or --tls-cert): it only matters with TLS")
            return None
        ca_pem = read_pem(ca, "--tls-ca", "CERTIFICATE") if ca else None
        cert_pem = read_pem(cert, "--tls-cert", "CERTIFICATE") if cert else None
        key_pem = read_pem(key, "--tls-key", "PRIVATE KEY") if key else None
        return cls(grpc.ssl_channel_credentials(ca_pem, key_pem, cert_pem), server_name or None)

    def channel_options(self) -> tuple[tuple[str, str], ...]:
        """Check the certificate against this name rather than the target's host (servers reached by IP)."""
        return (("grpc.ssl_target_name_override", self.server_name),) if self.server_name else ()
