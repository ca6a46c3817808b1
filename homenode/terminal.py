"""qrun's own terminal while a --pty job runs: raw mode, restored on every way out, and
its size, which the job's pty follows."""

from __future__ import annotations

import fcntl
import os
import termios
import tty
from typing import Any

from qrun.syscalls import structs
from qrun.syscalls.abi import ARCH


def size(fd: int) -> tuple[int, int]:
    try:
        lay = structs.layout(ARCH, "winsize")
        ws = lay.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * lay.size))
        rows, cols = ws["rows"], ws["cols"]
        return rows, cols
    except OSError:
        return 24, 80


def describe(fd: int) -> dict[str, Any]:
    """What the stub needs to make the job's pty like this terminal."""
    rows, cols = size(fd)
    return {"rows": rows, "cols": cols, "term": os.environ.get("TERM", "")}


class RawMode:
    """Keys go to the job as typed (Ctrl-C, Ctrl-Z and Ctrl-\\ included: the job's own line
    discipline acts on them); `restore` puts the terminal back exactly as it was."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None

    def enter(self) -> None:
        try:
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSANOW)
        except termios.error:
            self.saved = None  # not a terminal (any more): nothing to restore

    def restore(self) -> None:
        if self.saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            except termios.error:
                pass
