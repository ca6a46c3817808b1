"""The stub's stdio thread: moves the job's stdio, home's signals and stdin, heartbeats
and the exit report over the control connection, while the tracer thread serves calls."""

from __future__ import annotations

import fcntl
import os
import struct
import sys
import tempfile
import termios
import threading
import time
from typing import Any, Protocol

import zmq
from qrun.remote.channel import try_send
from qrun.remote.outqueue import OutQueue
from qrun.syscalls import structs, wire
from qrun.syscalls.abi import ARCH

EXIT_RESEND = 0.3   # seconds between resends of the job's exit report until home acknowledges
OUT_RESEND = 2.0    # seconds without an acknowledgement of output in flight before it is resent
LEASE = 1200.0      # seconds the job outlives contact with home (after the silence timeout)


class JobControl(Protocol):
    """What the pump needs of the job: the tracer's, or a plain job's."""
    main_pid: int

    @property
    def job_stopped(self) -> bool: ...
    def kill_all(self) -> None: ...
    def remote_pid(self, home_pid: int) -> int | None: ...


def eprint(msg: str) -> None:
    """A line for qrun's user (through the launcher's stderr). Home may be gone, and its
    end of that pipe with it: the job must not fail for a message nobody can read."""
    try:
        sys.stderr.write(f"qrun-stub: {msg}\n")
        sys.stderr.flush()
    except OSError:
        pass


class StdioPump(threading.Thread):
    """Moves the job's stdio and home's signals over the control connection.

    Contact with home may be lost (a partition, home stopped or restarted): after
    `timeout` seconds of silence the job goes on and the stub keeps reconnecting (ZeroMQ
    does, with backoff) for up to `lease` more seconds, its output kept meanwhile
    (outqueue.py); only when the lease runs out is the job killed."""

    def __init__(self, sock: zmq.Socket, timeout: float, out_fds: dict[int, int], in_fd: int,
                 tracer: JobControl, lease: float = LEASE, spill_dir: str | None = None) -> None:
        super().__init__(daemon=True, name="qrun-stdio")
        self.sock = sock
        self.timeout = timeout
        self.lease = lease
        self.out = OutQueue(spill_dir or tempfile.gettempdir(), self._send_out)
        self.last_out_ack = time.monotonic()
        self.reconnects = 0
        self.away_since: float | None = None   # when the silence passed `timeout`, if it has
        self.out_fds = dict(out_fds)  # pipe read end -> stream number
        self.in_fd: int | None = in_fd
        self.in_buf = bytearray()
        self.in_eof = False
        self.tracer = tracer
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.final: dict[str, Any] | None = None
        self.home_lost = threading.Event()
        self.told_stopped = False
        self.pty: int | None = None   # the pty master, when the job has a terminal
        self.ctl_seen = 0   # home's control messages handled, in order (acknowledged in pings)
        self.last_heard = time.monotonic()
        self.done = threading.Event()
        self.last_ping = 0.0
        self.last_exit = 0.0
        self.bye_deadline: float | None = None
        self.dropped = False   # the control connection went down (and not up again yet)
        self._polled: set[int] = set(out_fds)
        self._polled_in: int | None = None
        self._early_signals: list[int] = []   # what home sent the job before it existed
        self._signal_lock = threading.Lock()

    def wake(self) -> None:
        os.write(self.wake_w, b"x")

    def finish(self, exit_msg: dict[str, Any]) -> None:
        self.final = exit_msg
        os.write(self.wake_w, b"x")

    def run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # never die silently: the job would hang on a full pipe
            eprint(f"stdio relay failed: {exc}")
            self.home_lost.set()
            self.tracer.kill_all()
        finally:
            self.done.set()

    def _loop(self) -> None:
        self.last_heard = time.monotonic()
        # A home node that dies closes its connection: notice that within seconds rather
        # than after the silence timeout (which still covers a network that drops packets).
        monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED)
        for fd in self.out_fds:
            os.set_blocking(fd, False)
        poller = zmq.Poller()   # built once; fds leave it as they close
        for item in (self.sock, monitor, self.wake_r, *self.out_fds):
            poller.register(item, zmq.POLLIN)
        try_send(self.sock, wire.encode("ping", ack=self.ctl_seen))
        while True:
            self._sync(poller)
            events = dict(poller.poll(500 if self.final is None else int(EXIT_RESEND * 1000)))
            now = time.monotonic()
            if monitor in events:
                self._connection_events(monitor, now)
            if self.sock in events and self._receive(now):
                return
            self._move_stdio(events)
            self._resend_output(now)
            if self._exit_report(now):
                return
            self._keep_alive(now)
            if self._silent_too_long(now):
                return

    def _sync(self, poller: zmq.Poller) -> None:
        """Keep the poller in step with the fds still open and whether stdin has data.
        The job's pipes are not read while its output in flight fills the window and home
        answers (flow control), nor while the spill for an absent home is full."""
        answering = time.monotonic() - self.last_heard < 2.0
        wanted = set() if self.out.full or (self.out.window_full and answering) else set(self.out_fds)
        for fd in self._polled - wanted:
            poller.unregister(fd)
        for fd in wanted - self._polled:
            poller.register(fd, zmq.POLLIN)
        self._polled = wanted
        want_in = self.in_fd if self.in_fd is not None and (self.in_buf or self.in_eof) else None
        if want_in != self._polled_in:
            if self._polled_in is not None:
                poller.unregister(self._polled_in)
            if want_in is not None:
                poller.register(want_in, zmq.POLLOUT)
            self._polled_in = want_in

    def _connection_events(self, monitor: zmq.Socket, now: float) -> None:
        while monitor.poll(0):
            event = monitor_event(monitor.recv_multipart())
            if event == zmq.EVENT_DISCONNECTED:
                self.dropped = True
            elif event == zmq.EVENT_CONNECTED and self.dropped:
                self.dropped = False
                self.reconnects += 1
                self.out.resend()   # (what was in flight on the old connection is lost)
                self.last_out_ack = now

    def _resend_output(self, now: float) -> None:
        self.out.flush()
        if self.out.sent > self.out.acked and now - self.last_out_ack > OUT_RESEND:
            self.out.resend()
            self.last_out_ack = now

    def _send_out(self, n: int, stream: int, data: bytes) -> bool:
        return try_send(self.sock, wire.encode("out", fd=stream, d=data, n=n))

    def _receive(self, now: float) -> bool:
        """Handle home's messages; True once home said bye."""
        seen = self.ctl_seen
        while self.sock.poll(0):
            msg = wire.decode(self.sock.recv())
            self.last_heard = now
            if self.away_since is not None:
                eprint(f"contact with the home node is back after "
                       f"{now - self.away_since + self.timeout:.0f} s")
                self.away_since = None
            self._control(msg)
            if msg["t"] == "bye":
                return True
        if self.ctl_seen != seen:  # acknowledge at once: home holds them until then
            try_send(self.sock, wire.encode("ping", ack=self.ctl_seen))
        return False

    def _move_stdio(self, events: dict[Any, int]) -> None:
        for fd in list(self.out_fds):
            if fd in events:
                self._drain(fd)
        if self.in_fd is not None and self.in_fd in events:
            self._feed()
        if self.wake_r in events:
            os.read(self.wake_r, 64)

    def _exit_report(self, now: float) -> bool:
        """Resend how the job ended until home says bye (one lost message must not change
        the outcome); True when home stays silent past the deadline."""
        if self.final is not None and not self.out_fds and self.out.empty:
            if self.bye_deadline is None:   # (home may be away: it gets the lease to come back)
                self.bye_deadline, self.last_exit = now + 10 + self.timeout + self.lease, 0.0
            if now - self.last_exit >= EXIT_RESEND:
                try_send(self.sock, wire.encode("exit", **self.final))
                self.last_exit = now
        return self.bye_deadline is not None and now > self.bye_deadline

    def _keep_alive(self, now: float) -> None:
        if now - self.last_ping >= 1.0:
            try_send(self.sock, wire.encode("ping", ack=self.ctl_seen))
            self.last_ping = now
        stopped = self.tracer.job_stopped
        if stopped != self.told_stopped:
            # Home stops too (its shell gets the prompt back) and says nothing meanwhile.
            try_send(self.sock, wire.encode("state", stopped=stopped))
            self.told_stopped = stopped
        if stopped:
            self.last_heard = now  # a stopped job does not miss its stopped home node

    def _silent_too_long(self, now: float) -> bool:
        silent = now - self.last_heard
        if silent <= self.timeout:
            return False
        if self.away_since is None:
            self.away_since = now
            eprint(f"lost contact with the home node (silent for {self.timeout:.0f} s); the job goes on, "
                   f"and the stub keeps trying to reach home for up to {self.lease:.0f} s (its lease)")
        if silent <= self.timeout + self.lease:
            return False
        eprint(f"the job's lease ran out (home silent for {silent:.0f} s); killing the job")
        self._give_up()
        return True

    def _give_up(self) -> None:
        self.home_lost.set()
        self.tracer.kill_all()

    def _control(self, msg: dict[str, Any]) -> None:
        t = msg["t"]
        if t in ("ack", "pong") and "out" in msg:
            before = self.out.acked
            self.out.ack(msg["out"])
            if self.out.acked != before:
                self.last_out_ack = time.monotonic()
        n = msg.get("n")
        if isinstance(n, int):
            if n != self.ctl_seen + 1:
                return  # a resend of one we had, or one after a lost one: it comes again
            self.ctl_seen = n
        if t == "in":
            if msg["d"]:
                self.in_buf += msg["d"]
            else:
                self.in_eof = True
        elif t == "sig":
            self._signal(msg["pid"], msg["sig"])
        elif t == "winch" and self.pty is not None:
            set_winsize(self.pty, msg["rows"], msg["cols"])  # the kernel tells the job (SIGWINCH)
        elif t == "closed":
            # Home's reader of this stream has gone: close our end of the job's pipe, so
            # its next write fails with EPIPE (SIGPIPE) as it would at home.
            for fd, stream in list(self.out_fds.items()):
                if stream == msg["fd"]:
                    os.close(fd)
                    del self.out_fds[fd]

    def job_started(self) -> None:
        """The job exists now: the signals home sent before it did reach it, as they would
        have reached a job already running (a Ctrl-C while it started ends it)."""
        with self._signal_lock:
            early, self._early_signals = self._early_signals, []
        for sig in early:
            self._signal(0, sig)

    def _signal(self, home_pid: int, sig: int) -> None:
        try:
            if home_pid == 0:
                with self._signal_lock:
                    if not self.tracer.main_pid:   # (killpg(0) would signal this stub itself)
                        self._early_signals.append(sig)
                        return
                os.killpg(self.tracer.main_pid, sig)
            else:
                remote = self.tracer.remote_pid(home_pid)
                if remote is not None:
                    os.kill(remote, sig)
        except (ProcessLookupError, PermissionError, ValueError):
            pass

    def _drain(self, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:  # EIO: a pty whose every slave end is closed (the job is gone)
            data = b""
        if data:
            self.out.add(self.out_fds[fd], data)
        else:
            os.close(fd)
            del self.out_fds[fd]

    def _feed(self) -> None:
        fd = self.in_fd
        assert fd is not None
        try:
            if self.in_buf:
                n = os.write(fd, self.in_buf[:1 << 16])
                del self.in_buf[:n]
            if not self.in_buf and self.in_eof:
                os.close(fd)
                self.in_fd = None
        except BrokenPipeError:  # the job closed its stdin: drop the rest, as a pipe would
            os.close(fd)
            self.in_fd = None
        except BlockingIOError:
            pass


def set_winsize(fd: int, rows: int, cols: int) -> None:
    lay = structs.layout(ARCH, "winsize")
    fcntl.ioctl(fd, termios.TIOCSWINSZ,
                lay.pack(rows=max(0, min(rows, 65535)), cols=max(0, min(cols, 65535))))


def monitor_event(frames: list[bytes]) -> int:
    """The event number of a ZeroMQ socket-monitor message (its first frame starts with
    the 16-bit event, then the 32-bit value). Parsed here because pyzmq's helper pulls
    in asyncio, a sixth of the stub's start-up."""
    return int(struct.unpack_from("=H", frames[0])[0])
