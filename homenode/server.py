"""The home node's side of one job (Condor's shadow): a CURVE-authenticated ROUTER that
executes forwarded syscalls as the user, hands out deputies for home pids, writes the
job's output, forwards stdin and signals, and learns how the job ended.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import resource
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import zmq
import zmq.auth.thread
from qrun.homenode import schema
from qrun.homenode.deputies import Deputies
from qrun.homenode.executor import ARCH as HOME_ARCH
from qrun.homenode.executor import (
    FORWARDABLE,
    BadRequest,
    Handles,
    execute,
    is_copyable,
    stat_to_wire,
    wire_path,
)
from qrun.homenode.resolve import Local, Refused, Resolver
from qrun.homenode.terminal import RawMode
from qrun.homenode.terminal import size as terminal_size
from qrun.syscalls import flags as wflags
from qrun.syscalls import wire
from qrun.syscalls.paths import PathPolicy

INLINE_MAX = 1 << 20   # files up to this size travel inside the open reply
HANDSHAKE_MS = 5000
CTL_RESEND = 1.0       # seconds before an unacknowledged control message is sent again
CTL_WINDOW = 64        # control messages (stdin chunks of 64 KiB) in flight at most
WAIT_NOTICE = 2.0      # seconds without a stub before qrun says what it waits for
FD_RESERVE = 256       # fds kept free for the job's home files, whoever else connects


class JobFailed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Outcome:
    status: dict[str, Any]
    usage: dict[str, Any]
    host: str
    wall: float


@dataclass
class Keys:
    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def fresh(cls) -> Keys:
        sp, ss = zmq.curve_keypair()
        cp, cs = zmq.curve_keypair()
        return cls(sp, ss, cp, cs)


class _OnlyThisJob:
    """ZAP credentials check: the only client key accepted is the job's own."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.key


@dataclass
class HomeServer:
    job: str
    welcome: dict[str, Any]
    bind: str                       # e.g. tcp://10.0.0.1:0 or ipc:///run/.../sock
    connect_timeout: float = 60.0
    timeout: float = 30.0
    keys: Keys = field(default_factory=Keys.fresh)
    roots: list[str] = field(default_factory=list)   # --home-root: all the job may reach

    def __post_init__(self) -> None:
        self.ctx = zmq.Context()
        self.auth = zmq.auth.thread.ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve_callback(domain="*",
                                           credentials_provider=_OnlyThisJob(self.keys.client_public))
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.curve_server = True
        self.sock.curve_publickey = self.keys.server_public
        self.sock.curve_secretkey = self.keys.server_secret
        self.sock.setsockopt(zmq.LINGER, 1000)
        # A stub that reconnects (its old connection half-open) takes its routing id over.
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # Unauthenticated connections get a few seconds to finish the CURVE handshake.
        self.sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        for name, value in wire.liveness_options().items():
            self.sock.setsockopt(getattr(zmq, name), value)
        self.sock.bind(self.bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.handles = Handles()
        self.resolver = Resolver(PathPolicy.from_wire(self.welcome["policy"]), self.roots)
        self.deputies = Deputies()
        self.last_seq = 0
        self.last_reply: bytes | None = None
        self.ctl_id: bytes | None = None
        self.hello: dict[str, Any] | None = None
        self.stdin_open = True
        self.ctl_n = 0                                    # control messages sent so far
        self.unacked: dict[int, list[Any]] = {}           # n -> [frame, last sent]
        self.launcher_tail = b""
        self.tee: BinaryIO | None = None   # -o FILE: a copy of all job output
        self.closed_streams: set[int] = set()
        self.rejected: set[str] = set()
        self.refused = 0   # calls the home roots did not allow
        self.raw: RawMode | None = None   # qrun's terminal, with --pty


    # ---- bootstrap --------------------------------------------------------------------
    def bootstrap_line(self, endpoint: str | None = None) -> bytes:
        import json
        return (json.dumps({"endpoint": endpoint or self.endpoint, "job": self.job,
                            "server_key": self.keys.server_public.decode(),
                            "public": self.keys.client_public.decode(),
                            "secret": self.keys.client_secret.decode()}) + "\n").encode()

    # ---- main loop --------------------------------------------------------------------
    def serve(self, launcher: subprocess.Popen[bytes], describe: str,
              classify: Callable[[str], tuple[str, int]] | None = None,
              waiting_for: str = "", cancel: list[str] | None = None) -> Outcome:
        """Run the job to its end. The launcher's stderr (ssh's or srun's complaints, the
        stub's warnings) is passed through, and its tail explains a failed start. While
        the stub has not connected, `waiting_for` says what we wait for, and giving up
        (time out, Ctrl-C) runs `cancel`, so a queued job does not start later."""
        started = time.monotonic()
        announced = False
        if self.welcome["options"].get("pty"):
            self.raw = RawMode(0)
            self.raw.enter()
        old_limit = _raise_fd_limit()  # the launcher (and so the job) keeps the user's limit
        err_fd = launcher.stderr.fileno() if launcher.stderr is not None else None
        if err_fd is not None:
            os.set_blocking(err_fd, False)
        last_heard = started
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(sig_w)
        forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT,
                     signal.SIGTSTP)
        # SIGCHLD only wakes the loop: a deputy may have been SIGKILLed at home.
        old_handlers = {s: signal.signal(s, lambda *_: None) for s in (*forwarded, signal.SIGCHLD)}
        last_int = 0.0
        try:
            while True:
                poller = zmq.Poller()
                poller.register(self.sock, zmq.POLLIN)
                poller.register(sig_r, zmq.POLLIN)
                poller.register(self.deputies.report_fd, zmq.POLLIN)
                if self.ctl_id is not None and self.stdin_open and len(self.unacked) < CTL_WINDOW:
                    poller.register(0, zmq.POLLIN)  # (flow control: the stub acknowledges)
                if err_fd is not None:
                    poller.register(err_fd, zmq.POLLIN)
                events = dict(poller.poll(500))
                now = time.monotonic()
                self._resend_ctl(now)
                if self.sock in events:
                    last_heard = now
                    outcome = self.receive(started)
                    if outcome is not None:
                        self._last_words(launcher, err_fd, started)
                        return outcome
                child_exited = False
                if sig_r in events:
                    for b in os.read(sig_r, 64):
                        child_exited |= b == signal.SIGCHLD
                        if b == signal.SIGINT and now - last_int < 1.0:
                            # A second Ctrl-C within a second: stop at once, as srun does.
                            self._send_ctl("sig", pid=0, sig=signal.SIGKILL)
                        elif b == signal.SIGWINCH and self.raw is not None:
                            self._send_winch()  # the job's pty follows; its kernel says SIGWINCH
                        elif b in forwarded:
                            self._send_ctl("sig", pid=0, sig=b)
                        if b == signal.SIGINT:
                            last_int = now
                        if b == signal.SIGCONT:
                            last_heard = now  # qrun itself was stopped: that was no silence
                        if self.hello is None and b in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                            _run_quietly(cancel)
                            raise JobFailed(f"interrupted while waiting for "
                                            f"{waiting_for or 'the stub on ' + describe}", 128 + b)
                if self.deputies.report_fd in events:
                    for home_pid, sig in self.deputies.read_reports():
                        self._send_ctl("sig", pid=home_pid, sig=sig)
                if child_exited:  # not per message: that was a waitpid for every deputy
                    for home_pid, sig in self.deputies.changes():
                        self._send_ctl("sig", pid=home_pid, sig=sig)
                if 0 in events:
                    self._pump_stdin()
                if err_fd is not None and err_fd in events and not self._relay_stderr(err_fd):
                    err_fd = None
                if self.hello is None:
                    if launcher.poll() is not None:
                        if err_fd is not None:
                            self._relay_stderr(err_fd)
                        if classify is not None:
                            raise JobFailed(*classify(self.launcher_tail.decode(errors="replace")))
                        raise JobFailed(f"the stub could not be started on {describe} "
                                        f"(launcher exited with status {launcher.returncode})", 125)
                    if waiting_for and not announced and now - started > WAIT_NOTICE:
                        sys.stderr.write(f"qrun: waiting for {waiting_for}\n")
                        announced = True
                    if now - started > self.connect_timeout:
                        _run_quietly(cancel)
                        raise JobFailed(f"the stub on {describe} did not connect back within "
                                        f"{self.connect_timeout:.0f} s", 125)
                elif now - last_heard > self.timeout:
                    raise JobFailed(f"lost contact with the execution host {describe} "
                                    f"(silent for {self.timeout:.0f} s); the job was killed", 124)
                elif launcher.poll() is not None and now - last_heard > 2.0:
                    raise JobFailed(f"the stub on {describe} died before the job ended "
                                    f"(launcher status {launcher.returncode})", 124)
        finally:
            if self.raw is not None:
                self.raw.restore()  # on every way out: job done, failed, qrun interrupted
            resource.setrlimit(resource.RLIMIT_NOFILE, old_limit)
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            os.close(sig_r)
            os.close(sig_w)

    def _last_words(self, launcher: subprocess.Popen[bytes], fd: int | None, started: float,
                    wait: float = 2.0) -> None:
        """Everything the stub (or ssh, srun) still writes after the job's exit reaches the
        user: relay until the launcher has exited, then what its pipe still holds (not
        until EOF: an ssh master left in the background may keep the pipe open). A resent
        exit report (our bye was lost) is answered meanwhile."""
        deadline = time.monotonic() + wait
        while launcher.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([] if fd is None else [fd], [], [], 0.05)
            if ready and fd is not None and not self._relay_stderr(fd):
                fd = None
            self.receive(started)
        while fd is not None and self._relay_stderr(fd, drain=True):
            pass

    def _relay_stderr(self, fd: int, drain: bool = False) -> bool:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return not drain
        if not data:
            return False
        _write_all(2, data)
        self.launcher_tail = (self.launcher_tail + data)[-4096:]
        return True

    def receive(self, started: float) -> Outcome | None:
        """Handle every message waiting on the socket; the job's outcome once it ended."""
        while self.sock.poll(0):
            frames = self.sock.recv_multipart()
            if len(frames) != 2:
                continue  # not from a DEALER of ours
            outcome = self._message(frames[0], frames[1], started)
            if outcome is not None:
                return outcome
        return None

    def close(self) -> None:
        if self.refused > 1:
            sys.stderr.write(f"qrun: {self.refused} calls in all were refused (outside the home roots)\n")
        self.handles.close_all()
        self.resolver.close()
        self.deputies.close_all()
        self.auth.stop()
        self.sock.close(linger=200)
        # destroy, not term: term waits forever for any socket of the context still open.
        self.ctx.destroy(linger=0)

    # ---- messages ---------------------------------------------------------------------
    def _send(self, ident: bytes, kind: str, **fields: Any) -> None:
        self.sock.send_multipart([ident, wire.encode(kind, **fields)])

    def _send_ctl(self, kind: str, **fields: Any) -> None:
        """Signals, stdin and stream closes reach the stub exactly once and in order: each is
        numbered and resent every second until the stub's ping acknowledges it (a message
        on a connection that dies, e.g. while qrun was stopped, would be lost)."""
        self.ctl_n += 1
        frame = wire.encode(kind, n=self.ctl_n, **fields)
        self.unacked[self.ctl_n] = [frame, time.monotonic()]
        if self.ctl_id is not None:
            self.sock.send_multipart([self.ctl_id, frame])

    def _send_winch(self) -> None:
        rows, cols = terminal_size(0)
        self._send_ctl("winch", rows=rows, cols=cols)

    def _resend_ctl(self, now: float) -> None:
        if self.ctl_id is None:
            return
        for entry in self.unacked.values():
            if now - entry[1] >= CTL_RESEND:
                self.sock.send_multipart([self.ctl_id, entry[0]])
                entry[1] = now

    def _acked(self, ack: object) -> None:
        if isinstance(ack, int) and not isinstance(ack, bool):
            for n in [n for n in self.unacked if n <= ack]:
                del self.unacked[n]

    def _message(self, ident: bytes, payload: bytes, started: float) -> Outcome | None:
        job, _, role = ident.decode(errors="replace").partition(":")
        if job != self.job:
            return None
        try:
            msg = wire.decode(payload)
        except wire.ProtocolError as exc:
            self._send(ident, "error", msg=f"protocol error: {exc}", code=0)
            return None
        kind = msg["t"]
        if kind == "hello":
            self._hello(ident, msg)
        elif kind == "req":
            self._request(ident, msg)
        elif kind == "ping":
            self._acked(msg.get("ack"))
            if self.ctl_id is None:
                self.ctl_id = ident
                for frame, _ in self.unacked.values():
                    self.sock.send_multipart([ident, frame])
                if not _stdin_usable():
                    self.stdin_open = False
                    self._send_ctl("in", d=b"")
            self._send(ident, "pong")
        elif kind == "out":
            self._output(2 if msg["fd"] == 2 else 1, msg["d"])
        elif kind == "state" and msg["stopped"]:
            # The job stopped (Ctrl-Z, SIGTSTP, SIGSTOP): so does qrun, and its shell takes
            # over; `fg` (SIGCONT) wakes qrun, which passes SIGCONT on to the job.
            if self.raw is not None:
                self.raw.restore()
            os.kill(os.getpid(), signal.SIGSTOP)  # (its SIGCONT resets the silence timer)
            if self.raw is not None:
                self.raw.enter()
                self._send_winch()  # the job redraws its screen
        elif kind == "exit":
            self._send(ident, "bye")
            return Outcome(exit_status(msg["status"]), exit_usage(msg["usage"]), msg["host"][:255],
                           time.monotonic() - started)
        return None

    def _output(self, fd: int, data: bytes) -> None:
        if self.tee is not None:
            self.tee.write(data)
            self.tee.flush()
        if fd in self.closed_streams:
            return
        if not _write_all(fd, data):
            # The reader went away (`qrun ... | head`): the job's next write to this stream
            # must fail with EPIPE/SIGPIPE as it would at home, so the stub closes its end.
            self.closed_streams.add(fd)
            self._send_ctl("closed", fd=fd)

    def _hello(self, ident: bytes, msg: dict[str, Any]) -> None:
        if msg["version"] != wire.PROTOCOL_VERSION or msg["digest"] != wire.table_digest():
            text = (f"the stub on {msg['host']} runs another qrun version (protocol {msg['version']}, "
                    f"table {msg['digest']}; here protocol {wire.PROTOCOL_VERSION}, table "
                    f"{wire.table_digest()})")
            self._send(ident, "error", code=123, msg=text)
            raise JobFailed(text, 123)
        self.hello = msg
        self._send(ident, "welcome", **self.welcome)

    def _request(self, ident: bytes, msg: dict[str, Any]) -> None:
        """Exactly once: the stub has one request in flight and numbers them 1, 2, ...; a
        resend of the last one is answered from the cache, anything else out of order is
        refused without running."""
        seq = msg["seq"]
        if seq == self.last_seq and self.last_reply is not None:
            self.sock.send_multipart([ident, self.last_reply])  # a resend: never run twice
            return
        if seq != self.last_seq + 1:
            self._send(ident, "rep", seq=seq, r=-1, e="EINVAL", o={"why": "request out of sequence"})
            return
        try:
            for h in schema.each("close", schema.HANDLE, msg.get("close", [])):
                self.handles.close(h)
            for hp in schema.each("retire", schema.I32, msg.get("retire", [])):
                self.deputies.retire(hp)
            schema.integer(0, 0o777, "umask")(msg["umask"])
            os.umask(msg["umask"])
            r, e, o = self.dispatch(msg["op"], msg["a"])
        except (BadRequest, TypeError) as exc:
            self._reject(f"rejected a request from the stub: {exc}")
            r, e, o = -1, "EINVAL", {}
        except Local as exc:  # the path leads into a tree the execution host serves
            r, e, o = -1, "EXDEV", {"local": [exc.index, exc.path]}
        except Refused as exc:
            self.refused += 1
            if self.refused == 1:
                sys.stderr.write(f"qrun: refused: {exc} (further refusals are counted at the end)\n")
            r, e, o = -1, errno.errorcode.get(exc.errno, "EACCES"), {}
        except OSError as exc:
            r, e, o = -1, errno.errorcode.get(exc.errno or errno.EIO, "EIO"), {}
            if exc.errno in (errno.EMFILE, errno.ENFILE) and not self._job_uses_the_fds():
                o = {"busy": True}  # others hold them (a flood of connections): the call waits
        except Exception as exc:  # a bug must fail the one call, never the home node
            self._reject(f"internal error executing {msg['op']!r}: {type(exc).__name__}: {exc}")
            r, e, o = -1, "EIO", {}
        reply = wire.encode("rep", seq=seq, r=r, e=e, o=o)
        self.last_seq, self.last_reply = seq, reply
        self.sock.send_multipart([ident, reply])

    def _job_uses_the_fds(self) -> bool:
        """Whether the job's own open files are what exhausted the fd limit (then EMFILE is
        the job's, as natively) rather than connections nobody authenticated yet."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return len(self.handles) + len(self.deputies.live) + FD_RESERVE >= limit

    def _reject(self, line: str) -> None:
        """One line per kind of problem, not a flood from a misbehaving stub."""
        key = line.split(":", 2)[:2]
        if len(self.rejected) < 20 and str(key) not in self.rejected:
            self.rejected.add(str(key))
            sys.stderr.write(f"qrun: {line}\n")

    # ---- operations -------------------------------------------------------------------
    def dispatch(self, op: str, a: list[Any]) -> tuple[int, str | None, dict[str, Any]]:
        sc = FORWARDABLE.get(op)
        if sc is not None:
            r, e, o = execute(sc, a, self.handles, self.resolver)
            if op == "write" and e is None:
                # Where the bytes landed, so the stub can mirror them into a local copy.
                o["pos"] = os.lseek(self.handles.fd(a[0]), 0, os.SEEK_CUR)
            return r, e, o
        checks = schema.OPS.get(op)
        if checks is None:
            raise BadRequest(f"unknown operation {op!r}")
        fn = getattr(self, "op_" + op)
        return fn(*schema.check(op, checks, a))  # type: ignore[no-any-return]

    def op_open(self, handle: int | None, path: bytes, wflags_: int, mode: int, exec_: bool,
                known: list[int] | None,
                resolve: int | None = None) -> tuple[int, str | None, dict[str, Any]]:
        """Open as the job asked. Read-only regular files (and exec'd ones) come back as data
        for a local copy; everything else stays open here as a handle. Either way the home
        fd is kept, so fstat, locks and metadata calls on the job's fd stay exact."""
        dirfd = None if handle is None else self.handles.fd(handle)
        path_arg = path
        path = wire_path(path, dirfd is not None, self.handles) if path != b"" else path
        if resolve is None and wflags_ >= 2**32:
            raise BadRequest("open: flags wider than 32 bits")
        fl = wflags.open_from_wire(HOME_ARCH, wflags_) | os.O_CLOEXEC
        if resolve is None:
            fl = ctypes.c_int(fl).value  # open(2) takes a C int
        if exec_:
            fl = os.O_RDONLY | os.O_CLOEXEC
        # Opened non-blocking: opening a FIFO must never stall the one thread serving the
        # job. Named pipes at home are refused below; for files O_NONBLOCK means nothing.
        asked_nonblock = fl & os.O_NONBLOCK
        fl |= os.O_NONBLOCK
        if isinstance(path_arg, list) or (exec_ and not path and dirfd is not None):
            # a file the job already holds ([handle], or execveat of a handle)
            fd = os.open(path or f"/proc/self/fd/{dirfd}".encode(), fl, int(mode) & 0o7777)
        else:
            if resolve is None:  # open(2)'s leniency, which openat2 does not have
                fl &= O_PATH_FLAGS if fl & O_PATH else VALID_OPEN_FLAGS
                mode = int(mode) & 0o7777 if fl & (os.O_CREAT | O_TMPFILE) == os.O_CREAT or \
                    fl & O_TMPFILE == O_TMPFILE else 0
            fd = self.resolver.open_file(dirfd, path, fl, int(mode), int(resolve or 0))
        try:
            st = os.fstat(fd)
            o_path = fl & getattr(os, "O_PATH", 0o10000000)
            if stat.S_ISFIFO(st.st_mode) and not o_path:
                return -1, "EOPNOTSUPP", {"why": "named pipes at home are not supported"}
            if not asked_nonblock and not o_path:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            real = os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))
            if exec_ and (not stat.S_ISREG(st.st_mode) or not os.access(f"/proc/self/fd/{fd}", os.X_OK)):
                return -1, "EACCES", {}
            if exec_ or is_copyable(st, fl):
                o: dict[str, Any] = {"kind": "copy", "path": real, "stat": stat_to_wire(st)}
                if known == [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]:
                    o["fresh"] = True
                elif st.st_size <= INLINE_MAX:
                    # Read to EOF, not st_size: /proc and /sys files report size 0.
                    o["data"] = _read_all(fd, INLINE_MAX if st.st_size == 0 else st.st_size)
            else:
                o = {"kind": "placeholder", "path": real}
            o["handle"] = self.handles.add(fd, real)
            fd = -1
            return 0, None, o
        finally:
            if fd >= 0:
                os.close(fd)

    def op_chdir(self, handle: int | None, path: bytes) -> tuple[int, str | None, dict[str, Any]]:
        dirfd = None if handle is None else self.handles.fd(handle)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        if isinstance(path, list):
            fd = os.open(wire_path(path, False, self.handles), flags)
        elif path == b"" and dirfd is not None:
            fd = os.open(f"/proc/self/fd/{dirfd}", flags)  # fchdir
        else:
            fd = self.resolver.open_file(dirfd, path, flags, 0, 0)
        try:
            if not os.access(f"/proc/self/fd/{fd}", os.X_OK):
                return -1, "EACCES", {}
            return 0, None, {"path": os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))}
        finally:
            os.close(fd)

    def op_fetch(self, handle: int, offset: int, size: int) -> tuple[int, str | None, dict[str, Any]]:
        """A chunk of a file being copied to the execution host (one pread, one copy)."""
        if not isinstance(offset, int) or not isinstance(size, int) or offset < 0 or size < 0:
            raise BadRequest("fetch: malformed arguments")
        data = os.pread(self.handles.fd(handle), min(size, 64 << 20), offset)
        return len(data), None, {"data": data}

    def op_deputy(self, name: str) -> tuple[int, str | None, dict[str, Any]]:
        return self.deputies.spawn(str(name)[:15]), None, {}

    def op_kill(self, pid: int, sig: int) -> tuple[int, str | None, dict[str, Any]]:
        if self.roots:
            raise Refused(errno.EPERM, "with home roots, the job may signal only its own processes")
        os.kill(pid, sig)
        return 0, None, {}

    def op_fcntl(self, handle: int, cmd: int, arg: int) -> tuple[int, str | None, dict[str, Any]]:
        fd = self.handles.fd(handle)
        if cmd == fcntl.F_GETFL:
            return wflags.open_to_wire(HOME_ARCH, fcntl.fcntl(fd, cmd)), None, {}
        if cmd == fcntl.F_SETFL:
            return fcntl.fcntl(fd, cmd, wflags.open_from_wire(HOME_ARCH, int(arg))), None, {}
        raise BadRequest(f"fcntl: command {cmd} is not forwarded")

    def op_flock(self, handle: int, op: int) -> tuple[int, str | None, dict[str, Any]]:
        """Never waits: the stub asks with LOCK_NB and waits on its side."""
        fd = self.handles.fd(handle)
        if not isinstance(op, int) or op & ~(fcntl.LOCK_SH | fcntl.LOCK_EX | fcntl.LOCK_UN) != fcntl.LOCK_NB:
            raise BadRequest("flock: malformed operation")
        fcntl.flock(fd, op)
        return 0, None, {}

    def op_fcntl_lock(self, handle: int, cmd: int,
                      lock: bytes) -> tuple[int, str | None, dict[str, Any]]:
        fd = self.handles.fd(handle)
        if cmd not in (fcntl.F_GETLK, fcntl.F_SETLK, 36, 37) or not isinstance(lock, bytes) \
                or len(lock) != 32:
            raise BadRequest("fcntl: malformed lock request")
        buf = ctypes.create_string_buffer(lock, 32)
        r = _libc.fcntl(fd, cmd, buf)
        if r < 0:
            return -1, errno.errorcode.get(ctypes.get_errno(), "EIO"), {}
        return r, None, {"2": buf.raw}

    # ---- stdin ------------------------------------------------------------------------
    def _pump_stdin(self) -> None:
        try:
            data = os.read(0, 1 << 16)
        except OSError:
            data = b""
        self._send_ctl("in", d=data)
        if not data:
            self.stdin_open = False


_libc = ctypes.CDLL(None, use_errno=True)
O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)
O_PATH = getattr(os, "O_PATH", 0o10000000)
O_PATH_FLAGS = O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # all O_PATH keeps
# What open(2) takes and openat2(2) insists on (include/linux/fcntl.h VALID_OPEN_FLAGS).
VALID_OPEN_FLAGS = (os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND
                    | os.O_NONBLOCK | os.O_DSYNC | 0o20000 | os.O_DIRECT | 0o100000 | os.O_DIRECTORY
                    | os.O_NOFOLLOW | os.O_NOATIME | os.O_CLOEXEC | O_PATH | O_TMPFILE | os.O_SYNC)


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


def exit_status(st: dict[str, Any]) -> dict[str, Any]:
    """How the job ended, as the stub reported it, reduced to fields of the right types: a
    malformed report is a failed job with a message, not a crash of qrun."""
    try:
        if "signal" in st:
            schema.integer(1, 64, "signal")(st["signal"])
            out: dict[str, Any] = {"signal": st["signal"], "core": bool(st.get("core"))}
        else:
            schema.integer(0, 255, "exit code")(st.get("code"))
            out = {"code": st["code"]}
        if "spawn_errno" in st:
            schema.integer(1, 4095, "errno")(st["spawn_errno"])
            out["spawn_errno"] = st["spawn_errno"]
        for key in ("error", "error_kind"):
            if key in st:
                if not isinstance(st[key], str) or len(st[key]) > 1000:
                    raise BadRequest(f"{key}: a short string expected")
                out[key] = st[key]
    except BadRequest as exc:
        return {"code": 1, "error": f"the stub sent a malformed exit report ({exc})", "error_kind": "launch"}
    return out


def exit_usage(u: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in u.items() if k in ("utime", "stime", "maxrss_kb")
            and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 2**53}


def _stdin_usable() -> bool:
    try:
        os.fstat(0)
        return True
    except OSError:
        return False


def _read_all(fd: int, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        b = os.pread(fd, size - got, got)
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> bool:
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
