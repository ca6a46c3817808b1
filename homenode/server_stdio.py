"""The job's standard streams at home: its output written here (and to -o FILE), qrun's
stdin sent on, and the launcher's stderr passed through."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import IO, BinaryIO

from qrun.homenode.server_control import ControlChannel


class OutputRelay:
    """The job's stdout and stderr, as the stub sends them."""

    def __init__(self, control: ControlChannel, before_write: Callable[[], None] = lambda: None) -> None:
        self.control = control
        self.tee: BinaryIO | None = None   # -o FILE: a copy of all job output
        self.closed_streams: set[int] = set()
        self.before_write = before_write   # (clears a progress line off the terminal)
        self.at_line_start = True          # the last byte written to the terminal was "\n"

    def write(self, fd: int, data: bytes) -> None:
        if self.tee is not None:
            self.tee.write(data)
            self.tee.flush()
        if fd in self.closed_streams:
            return
        self.before_write()
        if data:
            self.at_line_start = data.endswith(b"\n")
        if not write_all(fd, data):
            # The reader went away (`qrun ... | head`): the job's next write to this stream
            # must fail with EPIPE/SIGPIPE as it would at home, so the stub closes its end.
            self.closed_streams.add(fd)
            self.control.send("closed", fd=fd)


class StdinRelay:
    """qrun's stdin, sent on as control messages until its end."""

    def __init__(self, control: ControlChannel) -> None:
        self.control = control
        self.open = True

    def wanted(self) -> bool:
        """Whether to read stdin now: the stub is connected, and acknowledges what it got."""
        return self.open and self.control.has_room()

    def pump(self) -> None:
        try:
            data = os.read(0, 1 << 16)
        except OSError:
            data = b""
        self.control.send("in", d=data)
        if not data:
            self.open = False

    def close_if_unusable(self) -> None:
        """No stdin at all (fd 0 closed): the job's is at its end from the start."""
        if not stdin_usable():
            self.open = False
            self.control.send("in", d=b"")


TRACE_MARK = b"\x1eqrun-trace "   # a stub's trace line, with --trace-file


class LauncherStderr:
    """The launcher's stderr (ssh's or srun's complaints, the stub's warnings), passed
    through; its tail explains a failed start."""

    def __init__(self, pipe: IO[bytes] | None, trace_fd: int | None = None,
                 before_write: Callable[[], None] = lambda: None) -> None:
        self.fd = pipe.fileno() if pipe is not None else None   # None once it is done
        self.before_write = before_write   # (clears a progress line off the terminal)
        self.tail = b""
        self.trace_fd = trace_fd  # --trace-file: the stub marks its trace lines (TRACE_MARK)
        self.partial = b""
        if self.fd is not None:
            os.set_blocking(self.fd, False)

    def relay(self, drain: bool = False) -> bool:
        """Pass on what the pipe holds; False at its end (then done with the pipe) or, with
        `drain`, once it holds nothing more."""
        if self.fd is None:
            return False
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return not drain
        if not data:
            self.fd = None
            return False
        self._route(data)
        return True

    def _route(self, data: bytes) -> None:
        if self.trace_fd is None:
            self.before_write()
            write_all(2, data)
            self.tail = (self.tail + data)[-4096:]
            return
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            if line.startswith(TRACE_MARK):
                write_all(self.trace_fd, line[len(TRACE_MARK):] + b"\n")
            else:
                write_all(2, line + b"\n")
                self.tail = (self.tail + line + b"\n")[-4096:]


def stdin_usable() -> bool:
    try:
        os.fstat(0)
        return True
    except OSError:
        return False


def write_all(fd: int, data: bytes) -> bool:
    """Write everything; False if the reader has gone (EPIPE) or the fd is unusable."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            time.sleep(0.001)
        except OSError:
            return False
    return True
