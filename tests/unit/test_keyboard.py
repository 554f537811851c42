"""Single-key reading on a real pseudo-terminal, and the headless no-op."""

from __future__ import annotations

import io
import os
import pty
import select
import termios
from collections.abc import Iterator

import pytest

from robotclient.runtime.keyboard import KeyReader


@pytest.fixture()
def terminal() -> Iterator[tuple[int, io.TextIOWrapper]]:
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "r")
    try:
        yield master, stream
    finally:
        stream.close()
        os.close(master)


def test_keys_arrive_one_at_a_time_without_echo(terminal: tuple[int, io.TextIOWrapper]) -> None:
    master, stream = terminal
    with KeyReader(stream) as keys:
        assert keys.interactive
        assert keys.read() is None  # nothing typed: returns at once
        os.write(master, "qé ".encode())
        assert [keys.read(timeout=2), keys.read(timeout=2), keys.read(timeout=2)] == ["q", "é", " "]
        assert keys.read() is None
        assert select.select([master], [], [], 0.1)[0] == []  # nothing was echoed back


def test_terminal_is_restored_after_close_and_on_errors(terminal: tuple[int, io.TextIOWrapper]) -> None:
    _master, stream = terminal
    before = termios.tcgetattr(stream.fileno())
    assert before[3] & termios.ICANON and before[3] & termios.ECHO
    keys = KeyReader(stream)
    during = termios.tcgetattr(stream.fileno())
    assert not during[3] & termios.ICANON and not during[3] & termios.ECHO
    keys.close()
    keys.close()
    assert termios.tcgetattr(stream.fileno()) == before
    assert keys.read() is None

    with pytest.raises(RuntimeError), KeyReader(stream):
        raise RuntimeError("control loop failed")
    assert termios.tcgetattr(stream.fileno()) == before


def test_not_a_terminal_is_a_no_op() -> None:
    with KeyReader(io.StringIO("q")) as keys:
        assert not keys.interactive
        assert keys.read(timeout=1) is None
    read_end, write_end = os.pipe()
    os.write(write_end, b"q")
    with os.fdopen(read_end, "r") as pipe, KeyReader(pipe) as keys:
        assert not keys.interactive
        assert keys.read() is None  # a pipe is not a keyboard: its bytes are left alone
    os.close(write_end)
