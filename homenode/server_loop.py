"""The home server's main loop for one job: the socket, signals, deputies' reports, stdin
and the launcher's stderr, until the job's outcome arrives or the job counts as failed."""

from __future__ import annotations

import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq
from qrun.homenode.jobhooks import JobHooks
from qrun.homenode.server_outcome import JobFailed, Outcome
from qrun.homenode.server_stdio import LauncherStderr
from qrun.homenode.terminal import RawMode

if TYPE_CHECKING:
    from qrun.homenode.forkedstub import LauncherProcess
    from qrun.homenode.server import HomeServer

WAIT_NOTICE = 2.0      # seconds without a stub before qrun says what it waits for
PLACE_AFTER = 0.1      # seconds without a stub before the job's record is told where it went

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT,
             signal.SIGTSTP)


@dataclass
class ServeLoop:
    """Run the job to its end. The launcher's stderr (ssh's or srun's complaints, the
    stub's warnings) is passed through, and its tail explains a failed start. While
    the stub has not connected, `waiting_for` says what we wait for, and giving up
    (time out, Ctrl-C) runs `cancel`, so a queued job does not start later."""

    server: HomeServer
    launcher: LauncherProcess
    describe: str
    classify: Callable[[str], tuple[str, int]] | None = None
    waiting_for: str = ""
    cancel: list[str] | None = None
    hooks: JobHooks | None = None
    launch_kind: str = ""
    # Tells the job's record where it went. Not on the way to the job's start: it runs
    # once the stub has its welcome, or PLACE_AFTER seconds in if the stub is slow to call.
    placed: Callable[[], None] | None = None
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.kill_at: float | None = None
        self.away_since: float | None = None   # when the stub's silence passed the timeout
        self.contacted = False
        self.term_grace = self.hooks.term_grace if self.hooks is not None else None
        # Slurm owns a batch job's queueing: its stub may call home hours later.
        self.waits_for_slurm = self.hooks is not None and self.hooks.batch and self.launch_kind == "slurm"
        self.announced = False
        self.last_heard = self.started
        self.last_int = 0.0

    def run(self) -> Outcome:
        stderr = LauncherStderr(self.launcher.stderr, self.server.trace_fd, self.server.progress.clear)
        with self._session() as sig_r:
            if self.hooks is not None and self.hooks.cancelled:
                os.kill(os.getpid(), signal.SIGTERM)   # (handled as the daemon's cancel would be)
            try:
                while True:
                    outcome = self._turn(sig_r, stderr)
                    if outcome is not None:
                        return outcome
            finally:
                self._place(force=True)   # (a job that ended, or failed, at once was placed too)

    @contextmanager
    def _session(self) -> Iterator[int]:
        """qrun's terminal (raw with --pty), fd limit and signal handling while the job runs,
        restored on every way out: job done, failed, qrun interrupted. Yields the pipe the
        signals wake the loop through."""
        srv = self.server
        if srv.welcome["options"].get("pty"):
            srv.raw = RawMode(0)
            srv.raw.enter()
        old_limit = _raise_fd_limit()  # the launcher (and so the job) keeps the user's limit
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(sig_w)
        # SIGCHLD only wakes the loop: a deputy may have been SIGKILLed at home.
        old_handlers = {s: signal.signal(s, lambda *_: None) for s in (*FORWARDED, signal.SIGCHLD)}
        try:
            yield sig_r
        finally:
            if srv.raw is not None:
                srv.raw.restore()
            resource.setrlimit(resource.RLIMIT_NOFILE, old_limit)
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            os.close(sig_r)
            os.close(sig_w)

    def _turn(self, sig_r: int, stderr: LauncherStderr) -> Outcome | None:
        """One round of the loop: what is ready, then whether the job is still alive."""
        srv = self.server
        events = self._poll(sig_r, stderr)
        now = time.monotonic()
        srv.control.resend(now)
        if srv.sock in events:
            self.last_heard = now
            if self.away_since is not None:
                sys.stderr.write(f"qrun: contact with {self.describe} is back after "
                                 f"{now - self.away_since + srv.timeout:.0f} s\n")
                self.away_since = None
            outcome = srv.receive(self.started)
            if outcome is not None:
                self._last_words(stderr)
                return outcome
        child_exited = sig_r in events and self._signals(os.read(sig_r, 64), now)
        self._deputies(events, child_exited)
        if srv.answers.watches is not None and srv.answers.watches.fd in events:
            srv.push_drops()
        if srv.answers.mounts is not None and srv.answers.mounts in events:
            srv.push_drops(mounts=True)
        if 0 in events:
            srv.stdin.pump()
        if stderr.fd is not None and stderr.fd in events:
            stderr.relay()
        self._place(force=now - self.started > PLACE_AFTER)   # (before contact: the record's order)
        if srv.hello is None:
            self._check_start(now, stderr)
        else:
            if not self.contacted and self.hooks is not None:
                self.hooks.contact()
            self.contacted = True
            self._check_contact(now)
        if self.kill_at is not None and now > self.kill_at:
            srv.control.send("sig", pid=0, sig=signal.SIGKILL)
            self.kill_at = None
        return None

    def _place(self, force: bool) -> None:
        if self.placed is not None and (force or self.server.hello is not None):
            placed, self.placed = self.placed, None
            placed()

    def _deputies(self, events: dict[Any, int], child_exited: bool) -> None:
        """Signals the job's home deputies received, passed on to the job's processes."""
        srv = self.server
        if srv.deputies.report_fd in events:
            for home_pid, sig in srv.deputies.read_reports():
                srv.control.send("sig", pid=home_pid, sig=sig)
        if child_exited:  # not per message: that was a waitpid for every deputy
            for home_pid, sig in srv.deputies.changes():
                srv.control.send("sig", pid=home_pid, sig=sig)

    def _poll(self, sig_r: int, stderr: LauncherStderr) -> dict[Any, int]:
        srv = self.server
        poller = zmq.Poller()
        poller.register(srv.sock, zmq.POLLIN)
        poller.register(sig_r, zmq.POLLIN)
        poller.register(srv.deputies.report_fd, zmq.POLLIN)
        if srv.answers.watches is not None and srv.answers.watches.fd is not None:
            poller.register(srv.answers.watches.fd, zmq.POLLIN)
        if srv.answers.mounts is not None:
            poller.register(srv.answers.mounts, zmq.POLLPRI)
        if srv.stdin.wanted():
            poller.register(0, zmq.POLLIN)  # (flow control: the stub acknowledges)
        if stderr.fd is not None:
            poller.register(stderr.fd, zmq.POLLIN)
        return dict(poller.poll(500 if self.placed is None else int(PLACE_AFTER * 1000)))

    def _signals(self, caught: bytes, now: float) -> bool:
        """Pass the signals qrun caught on to the job; whether a child of ours exited."""
        child_exited = False
        for b in caught:
            child_exited |= b == signal.SIGCHLD
            self._signal(b, now)
        return child_exited

    def _signal(self, b: int, now: float) -> None:
        srv = self.server
        if b == signal.SIGINT and now - self.last_int < 1.0:
            # A second Ctrl-C within a second: stop at once, as srun does.
            srv.control.send("sig", pid=0, sig=signal.SIGKILL)
        elif b == signal.SIGWINCH and srv.raw is not None:
            srv.send_winch()  # the job's pty follows; its kernel says SIGWINCH
        elif b in FORWARDED:
            srv.control.send("sig", pid=0, sig=b)
        if b == signal.SIGINT:
            self.last_int = now
        if b == signal.SIGTERM and self.term_grace is not None and self.kill_at is None:
            self.kill_at = now + self.term_grace
        if b == signal.SIGCONT:
            self.last_heard = now  # qrun itself was stopped: that was no silence
        if srv.hello is None and b in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            _run_quietly(self.cancel)
            raise JobFailed(f"interrupted while waiting for "
                            f"{self.waiting_for or 'the stub on ' + self.describe}", 128 + b)

    def _check_start(self, now: float, stderr: LauncherStderr) -> None:
        """Before the stub's hello: the launcher must still run, and not for too long."""
        launcher = self.launcher
        if launcher.poll() is not None:
            stderr.relay()
            if self.classify is not None:
                raise JobFailed(*self.classify(stderr.tail.decode(errors="replace")))
            raise JobFailed(f"the stub could not be started on {self.describe} "
                            f"(launcher exited with status {launcher.returncode})", 125)
        if self.waiting_for and not self.announced and now - self.started > WAIT_NOTICE:
            sys.stderr.write(f"qrun: waiting for {self.waiting_for}\n")
            self.announced = True
        if now - self.started > self.server.connect_timeout and not self.waits_for_slurm:
            _run_quietly(self.cancel)
            raise JobFailed(f"the stub on {self.describe} did not connect back within "
                            f"{self.server.connect_timeout:.0f} s", 125)

    def _check_contact(self, now: float) -> None:
        """After the hello: the stub must be heard from. Past the silence timeout the job
        goes on there while the stub keeps reconnecting, for the job's lease; then it
        counts as lost (the stub has killed it by then). A launcher that exits while the
        stub is silent means the stub died, unless the launcher is ssh, whose connection a
        partition can end while the stub lives on."""
        srv = self.server
        silent = now - self.last_heard
        if self.launcher.poll() is not None and silent > 2.0 and self.launch_kind != "ssh":
            raise JobFailed(f"the stub on {self.describe} died before the job ended "
                            f"(launcher status {self.launcher.returncode})", 124)
        if silent <= srv.timeout:
            return
        if self.away_since is None:
            self.away_since = now
            sys.stderr.write(f"qrun: lost contact with {self.describe} (silent for {srv.timeout:.0f} s); "
                             f"the job goes on there, and qrun waits up to {srv.lease:.0f} s for it\n")
        if silent > srv.timeout + srv.lease:
            raise JobFailed(f"lost contact with the execution host {self.describe} "
                            f"(silent for {silent:.0f} s, past the job's lease); the job was killed", 124)

    def _last_words(self, stderr: LauncherStderr, wait: float = 2.0) -> None:
        """Everything the stub (or ssh, srun) still writes after the job's exit reaches the
        user: relay until the launcher has exited, then what its pipe still holds (not
        until EOF: an ssh master left in the background may keep the pipe open). A resent
        exit report (our bye was lost) is answered meanwhile."""
        deadline = time.monotonic() + wait
        exited = _exit_fd(self.launcher.pid)  # readable once the launcher has exited
        try:
            while self.launcher.poll() is None and time.monotonic() < deadline:
                fds = [fd for fd in (stderr.fd, exited) if fd is not None]
                ready, _, _ = select.select(fds, [], [], 0.05)
                if stderr.fd is not None and stderr.fd in ready:
                    stderr.relay()  # (at EOF it lets go of the pipe: the pidfd tells the end)
                self.server.receive(self.started)
        finally:
            if exited is not None:
                os.close(exited)
        while stderr.relay(drain=True):
            pass


def _exit_fd(pid: int) -> int | None:
    """A pidfd for `pid` (Linux 5.3): polling it wakes us the moment the process exits,
    rather than at the next tick of a polling loop."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def _run_quietly(argv: list[str] | None) -> None:
    if argv:
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _raise_fd_limit() -> tuple[int, int]:
    """Raise the soft fd limit to the hard one (home holds every open file of the job);
    returns the old limits."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old[1], old[1]))
    except (ValueError, OSError):
        pass
    return old
