"""Start-up errors for ports that cannot be listened on: the reason and what to change, in one line."""

from __future__ import annotations

import errno
import socket

from services.common.ports import GRPC, METRICS, WEB, port_error, probe


def test_the_probe_finds_a_taken_port_on_any_address_form(taken_port: int) -> None:
    for host in ("127.0.0.1", "0.0.0.0", "[::]", ""):
        found = probe(host, taken_port)
        assert found is not None and found.errno == errno.EADDRINUSE, host
    assert probe("127.0.0.1", 0) is None


def test_the_probe_finds_addresses_that_are_not_this_machines() -> None:
    assert isinstance(probe("no-such-host.invalid", 50051), socket.gaierror)
    found = probe("192.0.2.1", 50051)  # TEST-NET-1: on no interface here
    assert found is not None and found.errno == errno.EADDRNOTAVAIL


def test_messages_name_the_port_and_the_flag_and_variable_to_change() -> None:
    taken = OSError(errno.EADDRINUSE, "Address already in use")
    assert str(port_error(METRICS, "0.0.0.0", 9093, taken)) == (
        "cannot serve metrics on 0.0.0.0:9093: the port is taken (another server?); choose another port with "
        "--metrics-port or METRICS_PORT (-1 turns it off)")
    assert str(port_error(GRPC, "[::]", 50051, None)) == (
        "cannot serve gRPC on [::]:50051: the port is taken (another server?); choose another port with --port or PORT")
    privileged = OSError(errno.EACCES, "Permission denied")
    assert "permission denied (ports below 1024 need privileges)" in str(port_error(WEB, "127.0.0.1", 80, privileged))
    elsewhere = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    assert str(port_error(WEB, "192.0.2.1", 8088, elsewhere)).endswith(
        "the address is not one of this machine's; choose another address with --web-host or WEB_HOST")
    assert "\n" not in str(port_error(GRPC, "::1", 1, socket.gaierror("x")))
