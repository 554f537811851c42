"""Single-key commands from the terminal (pause, quit, next target) without blocking the control loop.

The terminal goes into cbreak/no-echo mode so that one key arrives at once and
does not scribble over the log; it is always restored, also when the loop
fails. When stdin is not a terminal (a pipe, a service, CI), reading is a
no-op, so the same loop runs headless.
"""

from __future__ import annotations

import codecs
import os
import select
import sys
import termios
from types import TracebackType
from typing import Self, TextIO

_LFLAG = 3
_CC = 6


class KeyReader:
    """Non-blocking single-key reader on a TTY; always ``None`` elsewhere."""

    def __init__(self, stream: TextIO = sys.stdin) -> None:
        self._fd: int | None = None
        self._saved: list | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            fd = stream.fileno()
            is_tty = os.isatty(fd)
        except (AttributeError, OSError, ValueError):  # no real file behind it (pytest capture, StringIO)
            return
        if not is_tty:
            return
        self._saved = termios.tcgetattr(fd)
        attrs = termios.tcgetattr(fd)
        attrs[_LFLAG] &= ~(termios.ICANON | termios.ECHO)
        attrs[_CC][termios.VMIN] = 1
        attrs[_CC][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSADRAIN, attrs)
        self._fd = fd

    @property
    def interactive(self) -> bool:
        """True while a terminal is in single-key mode."""
        return self._fd is not None

    def read(self, timeout: float = 0.0) -> str | None:
        """One key if one was typed (waiting at most ``timeout`` seconds), else ``None``."""
        if self._fd is None:
            return None
        wait = timeout
        while select.select([self._fd], [], [], wait)[0]:
            data = os.read(self._fd, 1)
            if not data:  # the terminal went away
                return None
            key = self._decoder.decode(data)
            if key:
                return key
            wait = 0.05  # the rest of a multi-byte character is on its way
        return None

    def close(self) -> None:
        """Give the terminal back as it was; safe to call twice."""
        fd, saved = self._fd, self._saved
        self._fd, self._saved = None, None
        if fd is not None and saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
