"""TLS configuration: files checked at start-up with messages naming flag and path; credentials built from them."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import grpc
import pytest

from robotclient.runtime import tls as robot_tls
from services.common import tls
from services.common.config import ServerConfig, add_server_arguments
from tests.tlscerts import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_no_flags_means_plaintext() -> None:
    assert tls.ServerTls.from_files(None, None, None) is None
    assert tls.ClientTls.from_files(None) is None
    assert robot_tls.ClientTls.from_files(None) is None


def test_server_tls_reads_the_files(pki: Pki) -> None:
    server = tls.ServerTls.from_files(str(pki.server.cert), str(pki.server.key))
    assert server is not None and not server.mutual
    assert isinstance(server.credentials(), grpc.ServerCredentials)
    mutual = tls.ServerTls.from_files(str(pki.server.cert), str(pki.server.key), str(pki.ca))
    assert mutual is not None and mutual.mutual and mutual.client_ca_pem == pki.ca.read_bytes()


def test_missing_file_names_flag_and_path(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(tls.TlsConfigError, match=re.escape(f"--tls-cert {missing}: cannot read")):
        tls.ServerTls.from_files(str(missing), str(pki.server.key))
    with pytest.raises(tls.TlsConfigError, match=re.escape(f"--tls-client-ca {missing}: cannot read")):
        tls.ServerTls.from_files(str(pki.server.cert), str(pki.server.key), str(missing))
    with pytest.raises(tls.TlsConfigError, match=re.escape(f"--detector-tls-ca {missing}")):
        tls.ClientTls.from_files(str(missing), flags=("--detector-tls-ca", "c", "k", "n"))


def test_key_and_certificate_swapped(pki: Pki) -> None:
    with pytest.raises(tls.TlsConfigError, match=re.escape(f"--tls-cert {pki.server.key}: no PEM CERTIFICATE")):
        tls.ServerTls.from_files(str(pki.server.key), str(pki.server.cert))


def test_certificate_and_key_of_different_pairs(pki: Pki) -> None:
    wrong = re.escape(f"--tls-key {pki.client.key} is not the private key of --tls-cert {pki.server.cert}")
    with pytest.raises(tls.TlsConfigError, match=wrong):
        tls.ServerTls.from_files(str(pki.server.cert), str(pki.client.key))
    with pytest.raises(tls.TlsConfigError, match="is not the private key"):
        tls.ClientTls.from_files(str(pki.ca), str(pki.client.cert), str(pki.rogue_client.key))


def test_half_configurations_are_refused(pki: Pki) -> None:
    with pytest.raises(tls.TlsConfigError, match="--tls-cert needs --tls-key"):
        tls.ServerTls.from_files(str(pki.server.cert), None)
    with pytest.raises(tls.TlsConfigError, match="--tls-client-ca needs --tls-cert"):
        tls.ServerTls.from_files(None, None, str(pki.ca))
    with pytest.raises(tls.TlsConfigError, match="--tls-key needs --tls-cert"):
        tls.ClientTls.from_files(str(pki.ca), None, str(pki.client.key))
    with pytest.raises(tls.TlsConfigError, match="--tls-server-name needs --tls-ca"):
        tls.ClientTls.from_files(None, server_name="localhost")


def test_client_tls_server_name_override(pki: Pki) -> None:
    client = tls.ClientTls.from_files(str(pki.ca), str(pki.client.cert), str(pki.client.key), "localhost")
    assert client is not None
    assert client.channel_options() == [("grpc.ssl_target_name_override", "localhost")]
    assert isinstance(client.credentials(), grpc.ChannelCredentials)
    assert tls.ClientTls.from_files(str(pki.ca)).channel_options() == []  # type: ignore[union-attr]


def test_robot_client_tls(pki: Pki, tmp_path: Path) -> None:
    robot = robot_tls.ClientTls.from_files(str(pki.ca), str(pki.client.cert), str(pki.client.key), "localhost")
    assert robot is not None and robot.channel_options() == (("grpc.ssl_target_name_override", "localhost"),)
    with pytest.raises(robot_tls.TlsConfigError, match=re.escape(f"--tls-ca {tmp_path / 'x'}: cannot read")):
        robot_tls.ClientTls.from_files(str(tmp_path / "x"))
    with pytest.raises(robot_tls.TlsConfigError, match="--tls-cert and --tls-key go together"):
        robot_tls.ClientTls.from_files(str(pki.ca), str(pki.client.cert))
    with pytest.raises(robot_tls.TlsConfigError, match=re.escape(f"--tls-key {pki.client.cert}: no PEM PRIVATE KEY")):
        robot_tls.ClientTls.from_files(str(pki.ca), str(pki.client.cert), str(pki.client.cert))


def _server_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser, 50099, -1)
    return parser.parse_args(argv)


def test_server_flags_and_environment(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerConfig.from_args(_server_args([])).tls is None
    monkeypatch.setenv("TLS_CERT", str(pki.server.cert))
    monkeypatch.setenv("TLS_KEY", str(pki.server.key))
    monkeypatch.setenv("TLS_CLIENT_CA", str(pki.ca))
    config = ServerConfig.from_args(_server_args([]))
    assert config.tls is not None and config.tls.mutual
    with pytest.raises(SystemExit, match=re.escape("TLS: --tls-key /nonexistent.key: cannot read")):
        ServerConfig.from_args(_server_args(["--tls-key", "/nonexistent.key"]))


def test_robot_cli_checks_files_before_starting(pki: Pki, tmp_path: Path) -> None:
    from robotclient.__main__ import main

    with pytest.raises(SystemExit, match=re.escape(f"--tls-cert {tmp_path / 'c.pem'}: cannot read")):
        main(["replay", "--server", "127.0.0.1:1", "--tls-ca", str(pki.ca), "--tls-cert", str(tmp_path / "c.pem"),
              "--tls-key", str(pki.client.key)])
    with pytest.raises(SystemExit, match="need --server"):
        main(["replay", "--tls-ca", str(pki.ca)])


def test_mismatched_pair_without_the_cryptography_check_still_fails_clearly(pki: Pki) -> None:
    """Where `cryptography` is not installed (runtime images), gRPC's bind failure is explained."""
    from services.common.errors import StartupError
    from services.common.metrics import ServiceMetrics
    from services.common.server import ManagedServer

    config = ServerConfig.from_args(_server_args(["--host", "127.0.0.1", "--port", "0"]))
    wrong = tls.ServerTls(pki.server.cert.read_bytes(), pki.client.key.read_bytes())
    with pytest.raises(StartupError, match="--tls-key is not the key of --tls-cert"):
        ManagedServer(dataclasses.replace(config, tls=wrong), [], ServiceMetrics("facedetection", "t", "t"))
    right = tls.ServerTls.from_files(str(pki.server.cert), str(pki.server.key))
    server = ManagedServer(dataclasses.replace(config, tls=right), [], ServiceMetrics("facedetection", "t", "t"))
    assert server.port > 0
    server.server.stop(0)
