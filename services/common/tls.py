"""Optional TLS and mutual TLS for direct (non-mesh) gRPC: credentials from PEM files named by flags.

Inside the Istio mesh the sidecars provide mTLS and these flags stay off. Outside it (a robot
talking straight to a server, or detectors on another host) a server may present a certificate
(``--tls-cert``/``--tls-key``) and, with ``--tls-client-ca``, require and verify client
certificates. Every file is read and checked at start-up, so that a missing file or a certificate
that does not match its key stops the process with a message naming the flag and the path,
instead of failing every handshake later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """A TLS flag names a file that is missing, unreadable, not PEM, or does not fit its partner."""


def read_pem(path: str | Path, flag: str, kind: str) -> bytes:
    """The file's bytes; ``kind`` is ``CERTIFICATE`` or ``PRIVATE KEY``, checked by its PEM marker."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise TlsConfigError(f"{flag} {path}: cannot read: {err.strerror or err}") from err
    marker = b"-----BEGIN CERTIFICATE-----" if kind == "CERTIFICATE" else b"PRIVATE KEY-----"
    if marker not in data:
        raise TlsConfigError(f"{flag} {path}: no PEM {kind} in this file")
    return data


def check_pair(cert_pem: bytes, key_pem: bytes, cert_flag: str, cert_path: str, key_flag: str, key_path: str) -> None:
    """Certificate and key must belong together; checked with ``cryptography`` when it is installed.

    gRPC itself only notices a mismatch at the first handshake, and then only as an opaque
    handshake failure on the peer's side. Runtime images need not carry ``cryptography``: without
    it the check is skipped and the PEM marker check above is all there is.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        return
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as err:
        raise TlsConfigError(f"{cert_flag} {cert_path}: not a valid PEM certificate: {err}") from err
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise TlsConfigError(f"{key_flag} {key_path}: not an unencrypted PEM private key: {err}") from err
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise TlsConfigError(f"{key_flag} {key_path} is not the private key of {cert_flag} {cert_path}")


def _pair(cert: str | None, key: str | None, cert_flag: str, key_flag: str) -> tuple[bytes, bytes] | None:
    """Both or neither: a certificate without its key (or the reverse) is a configuration error."""
    if not cert and not key:
        return None
    if not cert or not key:
        given, missing = (cert_flag, key_flag) if cert else (key_flag, cert_flag)
        raise TlsConfigError(f"{given} needs {missing} as well")
    cert_pem = read_pem(cert, cert_flag, "CERTIFICATE")
    key_pem = read_pem(key, key_flag, "PRIVATE KEY")
    check_pair(cert_pem, key_pem, cert_flag, cert, key_flag, key)
    return cert_pem, key_pem


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate chain and key, and the CA its clients must be signed by (mTLS) if any."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None = None

    @classmethod
    def from_files(cls, cert: str | None, key: str | None, client_ca: str | None = None,
                   flags: Sequence[str] = ("--tls-cert", "--tls-key", "--tls-client-ca")) -> ServerTls | None:
        """None when no certificate is given (plaintext); raises :class:`TlsConfigError` on bad files."""
        cert_flag, key_flag, ca_flag = flags
        pair = _pair(cert, key, cert_flag, key_flag)
        if pair is None:
            if client_ca:
                raise TlsConfigError(f"{ca_flag} needs {cert_flag} and {key_flag}: mutual TLS is TLS first")
            return None
        ca = read_pem(client_ca, ca_flag, "CERTIFICATE") if client_ca else None
        return cls(*pair, ca)

    @property
    def mutual(self) -> bool:
        return self.client_ca_pem is not None

    def credentials(self) -> grpc.ServerCredentials:
        """With a client CA, a client without a certificate from that CA fails the handshake."""
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.client_ca_pem,
            require_client_auth=self.mutual,
        )


@dataclass(frozen=True)
class ClientTls:
    """What a client needs to verify a server and, for mTLS, to present its own certificate."""

    ca_pem: bytes | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_files(cls, ca: str | None, cert: str | None = None, key: str | None = None,
                   server_name: str | None = None,
                   flags: Sequence[str] = ("--tls-ca", "--tls-cert", "--tls-key", "--tls-server-name"),
                   ) -> ClientTls | None:
        """None when no TLS flag is given (plaintext). Without a CA, the system's trust store verifies."""
        ca_flag, cert_flag, key_flag, name_flag = flags
        pair = _pair(cert, key, cert_flag, key_flag)
        if not ca and pair is None:
            if server_name:
                raise TlsConfigError(f"{name_flag} needs {ca_flag}: it only matters when TLS is on")
            return None
        ca_pem = read_pem(ca, ca_flag, "CERTIFICATE") if ca else None
        cert_pem, key_pem = pair if pair else (None, None)
        return cls(ca_pem, cert_pem, key_pem, server_name or None)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)

    def channel_options(self) -> list[tuple[str, str]]:
        """Verify the server against this name instead of the target's host (for targets given as IPs)."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def channel(self, target: str, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
        return grpc.secure_channel(target, self.credentials(), options=[*options, *self.channel_options()])


def channel(target: str, tls: ClientTls | None, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
    """A secure channel when ``tls`` is given, else a plaintext one, with the same options."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    return tls.channel(target, options)
