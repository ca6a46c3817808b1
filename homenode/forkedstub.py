"""A stub on this machine, forked from qrun rather than executed.

The local launcher's command is this interpreter's own stub. Forking it skips a second
interpreter's start-up and the imports both sides share (about a third of the start of
`qrun --host local true`); from its `main` on it is the same stub, with the same pipes,
session and environment a started one would have. A process that runs threads or has
loaded ZeroMQ (a daemon, a shepherd) still executes it: a fork copies one thread and
whatever locks the others held.
"""

from __future__ import annotations

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


def can_fork(argv: list[str]) -> bool:
    """Whether `argv` is this interpreter's stub, and this process may fork it."""
    return (argv[:len(launchers.STUB_COMMAND)] == launchers.STUB_COMMAND
            and threading.active_count() == 1 and "zmq" not in sys.modules)


class ForkedStub:
    """The stub, forked: stdin and stderr are pipes, stdout /dev/null, in a new session
    (as subprocess.Popen(argv, stdin=PIPE, stdout=DEVNULL, stderr=PIPE, start_new_session=True))."""

    def __init__(self, argv: list[str]) -> None:
        self.args = argv
        self.returncode: int | None = None
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for f in (sys.stdout, sys.stderr):   # (or the child would write what is buffered a second time)
            if f is not None:
                f.flush()
        try:
            self.pid = os.fork()
        except OSError:
            for fd in (in_r, in_w, err_r, err_w):
                os.close(fd)
            raise
        if self.pid == 0:
            _become_stub(argv[len(launchers.STUB_COMMAND):], in_r, err_w)
        os.close(in_r)
        os.close(err_w)
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


def _become_stub(args: list[str], stdin: int, stderr: int) -> NoReturn:
    """In the child: become what a freshly started stub would be, then run it."""
    code = 125
    try:
        # Nothing inherited from qrun is collected here: a finalizer closing an fd number
        # the stub has since reused would close the stub's file.
        gc.freeze()
        os.setsid()
        # (each end moved above 2 first: with qrun's own stdio closed, a pipe may be fd 0-2)
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in
                (stdin, os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC), stderr)]
        for target, fd in enumerate(ends):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        for sig in signal.valid_signals():   # (handlers qrun installed; ignored ones stay so, as across exec)
            handler = signal.getsignal(sig)
            if callable(handler) and handler is not signal.default_int_handler:
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        from qrun.remote import stub
        stub.entry(args)
    except BaseException:   # (an interpreter would print it and exit with status 1)
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)
