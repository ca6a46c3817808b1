"""A stub on this machine, forked from qrun rather than executed.

The local launcher's command is this interpreter's own stub. Forking it skips a second
interpreter's start-up and the imports both sides share (about a fifth of the start of
`qrun --host local true`); from its `main` on it is the same stub, with the same pipes,
session, environment and command line (`ps`, `pgrep -f`) a started one would have. Only
interactive qrun forks, and only while it runs one thread and has not loaded ZeroMQ: a
fork copies one thread and whatever locks the others held, and a shepherd's database
connection is no business of its stub's.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO, NoReturn, Protocol

from qrun.homenode import launchers


class LauncherProcess(Protocol):
    """What the home server asks of a started launcher (the part of Popen it uses)."""
    pid: int
    returncode: int | None
    stdin: IO[bytes] | None
    stderr: IO[bytes] | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def can_fork(argv: list[str], interactive: bool) -> bool:
    """Whether `argv` is this interpreter's stub, and this process may fork it."""
    return (interactive and argv[:len(launchers.STUB_COMMAND)] == launchers.STUB_COMMAND
            and threading.active_count() == 1 and "zmq" not in sys.modules)


class ForkedStub:
    """The stub, forked: stdin and stderr are pipes, stdout /dev/null, in a new session
    (as subprocess.Popen(argv, stdin=PIPE, stdout=DEVNULL, stderr=PIPE, start_new_session=True))."""

    def __init__(self, argv: list[str]) -> None:
        self.args = argv
        self.returncode: int | None = None
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        for f in (sys.stdout, sys.stderr):   # (or the child would write what is buffered a second time)
            if f is not None:
                f.flush()
        # Signals wait until the child has its own session and handlers (a Ctrl-C meanwhile
        # would raise KeyboardInterrupt in it, on qrun's terminal).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self.pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for fd in (in_r, in_w, err_r, err_w, ready_r, ready_w):
                os.close(fd)
            raise
        if self.pid == 0:
            os.close(ready_r)
            _become_stub(argv, in_r, err_w, ready_w, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for fd in (in_r, err_w, ready_w):
            os.close(fd)
        # Back once the child leads its own session (or died): as with Popen, the process
        # group qrun may end is there from the start.
        os.read(ready_r, 1)
        os.close(ready_r)
        self.stdin: IO[bytes] | None = os.fdopen(in_w, "wb")
        self.stderr: IO[bytes] | None = os.fdopen(err_r, "rb")

    def poll(self) -> int | None:
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if deadline is None:
                self._reap(0)
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            delay = min(delay * 2, left, 0.05)
            time.sleep(delay)
        assert self.returncode is not None
        return self.returncode

    def _reap(self, options: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, options)
        except ChildProcessError:   # (reaped by someone else: its status is lost, as Popen has it)
            self.returncode = 0
            return
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)


def _become_stub(argv: list[str], stdin: int, stderr: int, ready: int,
                 mask: set[int | signal.Signals]) -> NoReturn:
    """In the child: become what a freshly started stub would be, then run it."""
    code = 125
    try:
        os.setsid()
        os.close(ready)
        # Nothing inherited from qrun is collected here: a finalizer closing an fd number
        # the stub has since reused would close the stub's file.
        gc.freeze()
        # (each end moved above 2 first: with qrun's own stdio closed, a pipe may be fd 0-2)
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in
                (stdin, os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC), stderr)]
        for target, fd in enumerate(ends):
            os.dup2(fd, target)
        for fd in [int(f) for f in os.listdir("/proc/self/fd")]:   # (all of them, whatever the limit)
            if fd > 2:
                with contextlib.suppress(OSError):
                    os.close(fd)
        for sig in signal.valid_signals():   # (handlers qrun installed; ignored ones stay so, as across exec)
            handler = signal.getsignal(sig)
            if callable(handler) and handler is not signal.default_int_handler:
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _retitle(argv)
        from qrun.remote import stub
        stub.entry(argv[len(launchers.STUB_COMMAND):])
    except BaseException:   # (an interpreter would print it and exit with status 1)
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _retitle(argv: list[str]) -> None:
    """Write `argv` over this process's command line (/proc/self/cmdline, what ps and
    pgrep -f read), cut to the room qrun's own took: the kernel shows the memory between
    the arg_start and arg_end of /proc/self/stat, and the interpreter keeps its own copy."""
    from qrun.native import ffi
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])   # (fields 48 and 49; the split began at 3)
    room = end - start
    if room <= 0:
        return
    title = b"".join(os.fsencode(a) + b"\0" for a in argv)[:room - 1]
    ffi.memmove(ffi.cast("char *", start), title + b"\0" * (room - len(title)), room)
