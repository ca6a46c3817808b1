"""The home node's side of one job (Condor's shadow): a CURVE-authenticated ROUTER that
executes forwarded syscalls as the user, hands out deputies for home pids, writes the
job's output, forwards stdin and signals, and learns how the job ended.

The pieces: the serve loop (server_loop), the operations run for the job (server_ops),
control messages (server_control), the job's streams (server_stdio) and how a job ends
(server_outcome)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

import zmq
from qrun.homenode import schema, servestate
from qrun.homenode.deputies import Deputies
from qrun.homenode.executor import BadRequest, Handles, Tracker
from qrun.homenode.jobhooks import JobHooks
from qrun.homenode.progress import Progress
from qrun.homenode.resolve import Local, Refused, Resolver
from qrun.homenode.server_answers import Answers
from qrun.homenode.server_control import ControlChannel
from qrun.homenode.server_loop import ServeLoop
from qrun.homenode.server_ops import HomeOps, Reply
from qrun.homenode.server_outcome import JobFailed, Outcome, exit_status, exit_usage
from qrun.homenode.server_stdio import OutputRelay, StdinRelay
from qrun.homenode.servestate import ServeState
from qrun.homenode.terminal import RawMode
from qrun.homenode.terminal import size as terminal_size
from qrun.homenode.zap import KeyGate
from qrun.syscalls import wire
from qrun.syscalls.model import DirFd
from qrun.syscalls.paths import PathPolicy
from qrun.syscalls.table import BY_NAME

if TYPE_CHECKING:
    from qrun.homenode.forkedstub import LauncherProcess

__all__ = ["HomeServer", "JobFailed", "Keys", "Outcome", "exit_status", "exit_usage"]

HANDSHAKE_MS = 5000
FORGET_EVERY, FORGET_FOR = 0.25, 10.0   # seconds: the drop-all after a takeover (_forget_all)
FD_RESERVE = 256       # fds kept free for the job's home files, whoever else connects


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


def private_ipc(endpoint: str) -> bool:
    """Whether `endpoint` is a Unix socket in a directory only this user may enter (mode
    0700, ours). The kernel then admits nobody else, so the connection needs no cipher:
    CURVE would cost most of a local data path's time. (Root could connect, but root
    could as well read this process's memory and its keys.)"""
    path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else ""
    if not path.startswith("/"):  # (not relative, not abstract "@name": no directory guards those)
        return False
    try:
        st = os.stat(os.path.dirname(path))
    except OSError:
        return False
    return st.st_uid == os.getuid() and stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o077


@dataclass
class HomeServer:
    job: str
    welcome: dict[str, Any]
    bind: str                       # e.g. tcp://10.0.0.1:0 or ipc:///run/.../sock
    connect_timeout: float = 60.0
    timeout: float = 30.0
    keys: Keys = field(default_factory=Keys.fresh)
    roots: list[str] = field(default_factory=list)   # --home-root: all the job may reach
    # A batch job's: what a successor needs if this server is killed (servestate.py), and
    # what it needs beyond this server's own settings (the launcher, how to report).
    serve_state: ServeState | None = None
    succession: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ctx = zmq.Context()
        self.auth = KeyGate(self.ctx, self.keys.client_public)
        self.auth.start()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.encrypted = not private_ipc(self.bind)
        if self.encrypted:
            self.sock.curve_server = True
            self.sock.curve_publickey = self.keys.server_public
            self.sock.curve_secretkey = self.keys.server_secret
        self.sock.setsockopt(zmq.LINGER, 1000)
        # A stub that reconnects (its old connection half-open) takes its routing id over.
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # Unauthenticated connections get a few seconds to finish the CURVE handshake.
        self.sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        if self.encrypted:
            # Without a ZAP domain, libzmq admits any CURVE client when no handler answers
            # (the handler's thread gone); enforced, it refuses them instead.
            self.sock.zap_domain = b"qrun"
            self.sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        # Drops for the stub's cache queue up while its job computes: far more than
        # libzmq's default of 1000 messages, before one would be discarded (and the gap
        # then noticed, see server_answers.py).
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        # No frame a stub of ours sends is larger than its largest request (a buffer of
        # MAX_BUF in the map): libzmq drops a connection that tries, before it has
        # allocated the frame.
        self.sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_REQUEST_FRAME)
        for name, value in wire.liveness_options().items():
            self.sock.setsockopt(getattr(zmq, name), value)
        self.sock.bind(self.bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.handles = Handles(self.serve_state)
        self.resolver = Resolver(PathPolicy.from_wire(self.welcome["policy"]), self.roots)
        self.deputies = Deputies()
        # (drawn only on a terminal, and not when the job has its own pty)
        self.progress = Progress(enabled=False if self.welcome["options"].get("pty") else None)
        self.ops = HomeOps(self.handles, self.resolver, self.deputies, self.roots, self.progress)
        self.last_seq = 0
        # The last wire.REPLY_WINDOW replies by seq, oldest first (their frames: _reply_frames).
        self.replies: dict[int, wire.Frames] = {}
        # What the stub's kept answers depend on (nothing is kept with home roots).
        self.answers = Answers(enabled=not self.roots, tree_is_home=self.resolver.tree_is_home)
        # handle -> the kept answers that live as long as it is open: its open's, and those
        # about its own file (fstat as newfstatat(handle, "", AT_EMPTY_PATH))
        self.handle_answers: dict[int, list[int]] = {}
        self.rpc_ident: bytes | None = None
        self.hello: dict[str, Any] | None = None
        self.control = ControlChannel(self.sock)
        self.stdin = StdinRelay(self.control)
        self.output = OutputRelay(self.control, self.progress.clear)
        self.progress.may_draw = lambda: self.output.at_line_start
        self.out_seen = 0    # the job's output chunks written, in order (acknowledged to the stub)
        self._out_acked = 0
        lease = self.welcome["options"].get("lease", 0)
        self.lease = float(lease) if isinstance(lease, (int, float)) else 0.0
        self.rejected: set[str] = set()
        self.refused = 0   # calls the home roots did not allow
        self.raw: RawMode | None = None   # qrun's terminal, with --pty
        self.trace_fd: int | None = None  # --trace-file: where the stub's trace lines go
        # After a takeover: the predecessor's last journaled request (see _take_request),
        # and whether the stub's cache must still be told to forget everything.
        self.redo: set[int] = set()   # requests a predecessor ran unjournaled, which may run again
        # After a takeover: the stub's kept answers must go (see _forget_all).
        self.forget_all = False
        self.forget_sent = 0.0
        self.forget_until: float | None = None

    @property
    def tee(self) -> BinaryIO | None:
        """-o FILE: a copy of all job output."""
        return self.output.tee

    @tee.setter
    def tee(self, f: BinaryIO | None) -> None:
        self.output.tee = f

    # ---- bootstrap --------------------------------------------------------------------
    def bootstrap_line(self, endpoint: str | None = None) -> bytes:
        import json
        return (json.dumps({"endpoint": endpoint or self.endpoint, "job": self.job,
                            "encrypted": self.encrypted,
                            "server_key": self.keys.server_public.decode(),
                            "public": self.keys.client_public.decode(),
                            "secret": self.keys.client_secret.decode()}) + "\n").encode()

    # ---- main loop --------------------------------------------------------------------
    def serve(self, launcher: LauncherProcess, describe: str,
              classify: Callable[[str], tuple[str, int]] | None = None,
              waiting_for: str = "", cancel: list[str] | None = None,
              hooks: JobHooks | None = None, launch_kind: str = "",
              placed: Callable[[], None] | None = None) -> Outcome:
        """Run the job to its end (see ServeLoop)."""
        return ServeLoop(self, launcher, describe, classify, waiting_for, cancel, hooks, launch_kind,
                         placed=placed).run()

    def receive(self, started: float) -> Outcome | None:
        """Handle every message waiting on the socket; the job's outcome once it ended."""
        while self.sock.poll(0):
            frames = self._frames()
            if frames is None:
                continue  # not from a DEALER of ours
            outcome = self._message(*frames, started)
            if outcome is not None:
                return outcome
        if self.out_seen != self._out_acked and self.control.ident is not None:
            self._send(self.control.ident, "ack", out=self.out_seen)   # (one for all read here)
            self._out_acked = self.out_seen
        return None

    def _frames(self) -> tuple[bytes, bytes, list[memoryview]] | None:
        """The next message: its sender, its map, and the data frames after it (views of
        ZeroMQ's buffers: a write-back is written from them without a copy); None for a
        message of another shape, which is read and dropped whole."""
        ident = self.sock.recv()
        if not self.sock.get(zmq.RCVMORE):
            return None
        head = self.sock.recv()
        data: list[memoryview] = []
        more = self.sock.get(zmq.RCVMORE)
        while more:
            frame = self.sock.recv(copy=False)
            if len(data) <= wire.MAX_DATA_FRAMES:
                data.append(frame.buffer)
            more = frame.more
        return ident, head, data

    def close(self) -> None:
        self.progress.clear()
        if self.refused > 1:
            sys.stderr.write(f"qrun: {self.refused} calls in all were refused (outside the home roots)\n")
        self.handles.close_all()
        if self.serve_state is not None:   # (served to the end: no successor needs it)
            self.serve_state.close(remove=True)
        self.resolver.close()
        self.deputies.close_all()
        self.answers.close()
        # The socket goes before the key gate: without a ZAP handler, libzmq would let
        # any CURVE client through in between.
        self.sock.close(linger=200)
        self.auth.stop()
        if self.trace_fd is not None:
            os.close(self.trace_fd)
            self.trace_fd = None
        # destroy, not term: term waits forever for any socket of the context still open.
        self.ctx.destroy(linger=0)

    # ---- messages ---------------------------------------------------------------------
    def _send(self, ident: bytes, kind: str, **fields: Any) -> None:
        self.sock.send_multipart([ident, wire.encode(kind, **fields)])

    def send_winch(self) -> None:
        rows, cols = terminal_size(0)
        self.control.send("winch", rows=rows, cols=cols)

    def _message(self, ident: bytes, payload: bytes, data: list[memoryview],
                 started: float) -> Outcome | None:
        job, _, role = ident.decode(errors="replace").partition(":")
        if job != self.job:
            return None
        if self.forget_all:
            self._forget_all(rpc_heard=role == "rpc")
        try:
            msg = wire.decode_frames(payload, data)
        except wire.ProtocolError as exc:
            self._send(ident, "error", msg=f"protocol error: {exc}", code=0)
            return None
        kind = msg["t"]
        if kind == "hello":
            self._hello(ident, msg)
        elif kind == "req":
            self._request(ident, msg)
        elif kind == "ping":
            self._ping(ident, msg)
        elif kind == "out":
            self._output(msg)
        elif kind == "state" and msg["stopped"]:
            self._stopped()
        elif kind == "exit":
            if self.serve_state is not None:   # (a successor of a server killed now records it)
                self.serve_state.ended({k: msg[k] for k in ("status", "usage", "host")})
            self._send(ident, "bye")
            return Outcome(exit_status(msg["status"]), exit_usage(msg["usage"]), msg["host"][:255],
                           time.monotonic() - started)
        return None

    def _forget_all(self, rpc_heard: bool) -> None:
        """Tell the stub to forget every kept answer (after a takeover: nothing here watched
        their paths meanwhile). A message to a connection not back yet is lost unseen, and
        a job answered from its cache may not ask home anything for long: so it is sent
        again every FORGET_EVERY seconds for FORGET_FOR seconds after the stub is first
        heard from, or until its rpc connection has spoken (then the drop went before any
        reply on it)."""
        now = time.monotonic()
        if self.forget_until is None:
            self.forget_until = now + FORGET_FOR
        if rpc_heard or now > self.forget_until:
            self.forget_all = False
        elif now - self.forget_sent < FORGET_EVERY:
            return
        self.forget_sent = now
        self.answers.drops += 1
        # (with the handles that could not be opened again: their files may be gone, and a
        # new file may get a gone one's inode number, which the stub must not take for it)
        self.sock.send_multipart([f"{self.job}:rpc".encode(),
                                  wire.encode("drop", c=[], all=True, n=self.answers.drops,
                                              lost=sorted(self.handles.lost))])

    def _output(self, msg: dict[str, Any]) -> None:
        """A chunk of the job's output: written once, in order. One sent again (after a
        reconnect) is dropped, and one after a lost one waits for the stub's resend."""
        n = msg.get("n")
        if not isinstance(n, int) or n != self.out_seen + 1:
            return
        fd = 2 if msg["fd"] == 2 else 1
        if self.serve_state is not None:   # (a successor then knows whether it got there)
            self.serve_state.writing(self.out_seen, fd, _size(fd), len(msg["d"]))
        self.output.write(fd, msg["d"])
        self.out_seen = n
        if self.serve_state is not None:   # (before home acknowledges it)
            self.serve_state.written(n)

    def _ping(self, ident: bytes, msg: dict[str, Any]) -> None:
        self.control.acked(msg.get("ack"))
        if self.control.ident is None:
            self.control.attach(ident, msg.get("ack"))
            self.stdin.close_if_unusable()
        self._send(ident, "pong", out=self.out_seen)

    def _stopped(self) -> None:
        # The job stopped (Ctrl-Z, SIGTSTP, SIGSTOP): so does qrun, and its shell takes
        # over; `fg` (SIGCONT) wakes qrun, which passes SIGCONT on to the job.
        if self.raw is not None:
            self.raw.restore()
        os.kill(os.getpid(), signal.SIGSTOP)  # (its SIGCONT resets the silence timer)
        if self.raw is not None:
            self.raw.enter()
            self.send_winch()  # the job redraws its screen

    def _hello(self, ident: bytes, msg: dict[str, Any]) -> None:
        if msg["version"] != wire.PROTOCOL_VERSION or msg["digest"] != wire.table_digest():
            text = (f"the stub on {msg['host']} runs another qrun version (protocol {msg['version']}, "
                    f"table {msg['digest']}; here protocol {wire.PROTOCOL_VERSION}, table "
                    f"{wire.table_digest()})")
            self._send(ident, "error", code=123, msg=text)
            raise JobFailed(text, 123)
        self.hello = msg
        self._send(ident, "welcome", **self.welcome)
        if self.serve_state is not None:
            self.serve_state.start({"job": self.job, "endpoint": self.endpoint, "welcome": self.welcome,
                                    "hello": msg, "roots": self.roots, "timeout": self.timeout,
                                    "keys": {k: getattr(self.keys, k).decode() for k in
                                             ("server_public", "server_secret", "client_public")},
                                    **self.succession})

    def _request(self, ident: bytes, msg: dict[str, Any]) -> None:
        """Exactly once: the stub numbers its requests 1, 2, ... and has at most
        wire.REPLY_WINDOW in flight; a resend of one of those is answered from the cache,
        one that came ahead of a lost one waits for the stub's resend of them all, in order,
        and anything else out of order is refused without running."""
        seq = msg["seq"]
        cached = self.replies.get(seq)
        if cached is not None:
            self.sock.send_multipart([ident, *cached], copy=False)  # a resend: never run twice
            return
        if seq in self.redo:
            # (ran before a takeover, not journaled, its reply lost: a fetch or a cached
            # call, which may run again)
            self.redo.discard(seq)
        elif self.last_seq + 1 < seq <= self.last_seq + wire.REPLY_WINDOW:
            return  # (ahead of a lost request: running it now would break the order)
        elif seq != self.last_seq + 1:
            self._send(ident, "rep", seq=seq, r=-1, e="EINVAL", o={"why": "request out of sequence"})
            return
        self.rpc_ident = ident
        journaled = self.serve_state is not None and servestate.journaled(msg["op"])
        if self.serve_state is not None and seq > self.last_seq:
            self.serve_state.began(seq)
        if journaled:
            self.serve_state.running(seq)  # type: ignore[union-attr]
        track, tracked = self.answers.tracker(seq)
        r, e, o = self._answer(msg, track)
        # What changed while the call ran is dropped before its reply leaves, and the
        # answer itself is kept only if nothing it depends on changed meanwhile. An open's
        # is kept only for a read-only copy, the one kind the stub may reuse, and only as
        # long as its handle is open here.
        is_open = msg["op"] == "open"
        keepable = not is_open or (e is None and o.get("kind") == "copy" and not o.get("writable"))
        for drop in self.answers.settle(seq, tracked, e, o, keepable):
            self.sock.send_multipart([ident, drop])
        if "c" in o:  # (a kept answer: its request was checked and ran)
            held = o.get("handle") if is_open else held_file(msg["op"], msg["a"])
            if isinstance(held, int):
                self.handle_answers.setdefault(held, []).append(seq)
        reply = self._reply_frames(msg["op"], seq, r, e, o)
        if journaled:
            self.serve_state.replied(seq, reply)  # type: ignore[union-attr]
        self.last_seq, self.replies[seq] = max(self.last_seq, seq), reply
        self.replies.pop(seq - wire.REPLY_WINDOW, None)
        self.sock.send_multipart([ident, *reply], copy=False)
        if "c" in o or is_open and e == "ENOENT":
            for frame in self.answers.listing_after(msg["op"], msg["a"], e):
                self.sock.send_multipart([ident, frame])

    def take_over(self, taken: servestate.Taken) -> list[str]:
        """Serve on a job whose home server was killed, from what it left (`taken`): its
        handles opened again, output and requests numbered on from where it left off, the
        stub's kept answers forgotten (nothing here watched their paths meanwhile). Returns
        what could not be carried over, one line each."""
        assert self.serve_state is not None
        takeovers = int(taken.server.get("takeovers", 0)) + 1
        lines = [f"the job's home server was killed; a new one serves the job on (takeover {takeovers})"]
        for h, entry in taken.handles.items():
            try:
                fd = servestate.reopen(entry)
            except OSError as exc:
                lines.append(f"{os.fsdecode(entry.path)} cannot be opened again ({exc.strerror}): "
                             f"the job's calls on it fail with ESTALE")
                self.handles.restore(h, None, entry.path)
                continue
            trouble = servestate.relock(fd, entry)
            if trouble:
                lines.append(f"{os.fsdecode(entry.path)}: {trouble}")
            self.handles.restore(h, fd, entry.path)
        self.handles.numbered_from(taken.next_handle)
        self.hello = taken.server["hello"]
        self.out_seen = self._out_acked = taken.out_seen
        self.answers.drops = takeovers << 40   # (beyond any drop a predecessor numbered)
        self._carry_requests(taken, lines)
        self.control.n = None
        self.succession["takeovers"] = taken.server["takeovers"] = takeovers
        self.forget_all = True
        self.serve_state.start(taken.server, taken)
        return lines

    def _carry_requests(self, taken: servestate.Taken, lines: list[str]) -> None:
        """Request numbering goes on from the predecessor's last. The journaled requests of
        the window are answered with their replies (without their kept-answer marks: the
        stub forgets those), one it was killed during with EIO (it may have taken effect:
        it must not run twice); the others of the window ran unjournaled (they may run
        again, should the stub ask)."""
        self.last_seq = taken.last
        window = range(max(1, taken.last - wire.REPLY_WINDOW + 1), taken.last + 1)
        for seq in window:
            entry = taken.journal.get(seq)
            if entry is None:
                self.redo.add(seq)
                continue
            old = _decoded(entry[1]) if entry[0] else None
            if old is None:
                lines.append("the job's home server was killed while it ran a call for the job; whether it "
                             "took effect is not known, and the call failed with EIO")
                r, e, o = -1, "EIO", {"why": "the home server was restarted while this call ran"}
            else:
                r, e, o = old["r"], old["e"], {k: v for k, v in old["o"].items() if k != "c"}
            self.replies[seq] = wire.encode_frames("rep", None, seq=seq, r=r, e=e, o=o, dn=self.answers.drops)

    def _reply_frames(self, op: str, seq: int, r: int, e: str | None, o: dict[str, Any]) -> wire.Frames:
        """A reply's frames. A fetch's data travels as a frame of its own after the map,
        never packed into it, so neither end copies it in Python (wire.REPLY_DATA_OPS)."""
        data = o.pop("data", None) if op in wire.REPLY_DATA_OPS else None
        return wire.encode_frames("rep", data, seq=seq, r=r, e=e, o=o, dn=self.answers.drops)

    def push_drops(self, mounts: bool = False) -> None:
        """Changes at home while the stub is not asking: its stale answers go at once."""
        drops = self.answers.changed(mounts)
        if mounts and self.answers.mounts is not None:
            os.lseek(self.answers.mounts, 0, os.SEEK_SET)  # (re-arms the mount table's poll)
            os.read(self.answers.mounts, 1 << 20)
        for drop in drops:
            if self.rpc_ident is not None:
                self.sock.send_multipart([self.rpc_ident, drop])

    def _answer(self, msg: dict[str, Any], track: Tracker | None = None) -> Reply:
        """Run one request; whatever goes wrong fails that call, with the errno it gets."""
        try:
            for h in schema.each("close", schema.HANDLE, msg.get("close", [])):
                self.handles.close(h)
                for answer in self.handle_answers.pop(h, []):
                    self.answers.forget(answer)
            for hp in schema.each("retire", schema.I32, msg.get("retire", [])):
                self.deputies.retire(hp)
            schema.integer(0, 0o777, "umask")(msg["umask"])
            os.umask(msg["umask"])
            r, e, o = self.dispatch(msg["op"], msg["a"], track)
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
        return r, e, o

    def _job_uses_the_fds(self) -> bool:
        """Whether the job's own open files are what exhausted the fd limit (then EMFILE is
        the job's, as natively) rather than connections nobody authenticated yet."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        held = len(self.handles) + len(self.deputies.live) + self.answers.fds_held()
        return held + FD_RESERVE >= limit

    def _reject(self, line: str) -> None:
        """One line per kind of problem, not a flood from a misbehaving stub."""
        key = line.split(":", 2)[:2]
        if len(self.rejected) < 20 and str(key) not in self.rejected:
            self.rejected.add(str(key))
            self.progress.clear()
            sys.stderr.write(f"qrun: {line}\n")

    # ---- operations -------------------------------------------------------------------
    def dispatch(self, op: str, a: list[Any], track: Tracker | None = None) -> Reply:
        return self.ops.dispatch(op, a, track)


def _size(fd: int) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError:
        return 0


def _decoded(frames: list[bytes]) -> dict[str, Any] | None:
    """A journaled reply as it was sent; None if it cannot be read back."""
    try:
        msg = wire.decode_frames(frames[0], [memoryview(f) for f in frames[1:]])
    except (wire.ProtocolError, IndexError, ValueError, TypeError):
        return None
    return msg if msg.get("t") == "rep" else None


def held_file(op: str, a: list[Any]) -> int | None:
    """The handle a cached call asks about with an empty path (its own file), if it does:
    home forgets that answer when the handle closes, as the stub can no longer ask it."""
    sc = BY_NAME.get(op)
    if sc is None or not sc.cached:
        return None
    for i, _ in sc.path_args:
        if 0 < i < len(a) and isinstance(sc.args[i - 1], DirFd) and a[i] == b"" and isinstance(a[i - 1], int):
            return int(a[i - 1])
    return None
