"""The stub's two CURVE-encrypted DEALER connections to the home node.

`Rpc` carries syscall requests from the tracer thread, one in flight at a time (a run of
fetches: up to wire.REPLY_WINDOW), and resends on silence; the home node answers a resend
from its reply cache, so a request never executes twice. `Control` (used by the I/O
thread) carries stdio, signals and heartbeats. ZeroMQ sockets are not thread-safe, hence
one socket per thread. A stub that Slurm started first asks the daemon where its home
server is (`claim`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

import zmq
from qrun.syscalls import wire
from qrun.syscalls.wire import Frames


class HomeLost(Exception):
    """The home node stopped answering; the job must not go on without it."""


class GoLocal(Exception):
    """Home found that the path leads into a tree this host serves (a home symlink into
    /usr, a --local directory reached through `..`): run the call here, on `path`."""

    def __init__(self, index: int, path: str) -> None:
        super().__init__(path)
        self.index = index
        self.path = path


class HomeBusy(Exception):
    """The home node cannot take the call right now (its fds are held by others): the
    calling thread waits and asks again, as for a lock."""


def is_busy(rep: dict[str, Any]) -> bool:
    """Whether a reply says home could not take the call for now (see HomeBusy)."""
    return bool(rep["e"]) and bool(rep["o"].get("busy"))


@dataclass
class Credentials:
    endpoint: str
    server_key: bytes
    public: bytes
    secret: bytes
    job: str
    encrypted: bool = True   # False only on home's private Unix socket (HomeServer.encrypted)
    # A stub Slurm started (sbatch): the endpoint is the daemon's rendezvous, and `job` the
    # job's id in the records; claim() asks it where the job's home server is.
    rendezvous: bool = False
    array: bool = False   # an array's: the task is SLURM_ARRAY_TASK_ID
    lease: float = 0.0    # how long to keep asking while home does not answer


def held_ipc(endpoint: str) -> str:
    """A home socket's endpoint as reached through a descriptor of its directory (kept
    open for the stub's life): whatever is mounted over the path later (the sandbox's
    private /tmp) then does not cut the stub off when it connects again, after a drop or
    to a home server that took the job over. Other endpoints are returned as they are."""
    path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else ""
    directory, _, name = path.rpartition("/")
    if not directory.startswith("/") or not name:
        return endpoint
    try:
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return endpoint
    held = f"/proc/self/fd/{fd}/{name}"
    if not os.path.exists(held) or len(held.encode()) >= 108:   # (no /proc; sun_path's limit)
        os.close(fd)
        return endpoint
    return "ipc://" + held


def connect(ctx: zmq.Context, cred: Credentials, role: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    if cred.encrypted:
        sock.curve_serverkey = cred.server_key
        sock.curve_publickey = cred.public
        sock.curve_secretkey = cred.secret
    sock.setsockopt(zmq.ROUTING_ID, f"{cred.job}:{role}".encode())
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    # With IMMEDIATE and no live connection a send would block forever; time it out so
    # a vanished home node is noticed instead of hanging the stub.
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    for name, value in wire.liveness_options().items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(cred.endpoint)
    return sock


def try_send(sock: zmq.Socket, frame: bytes) -> bool:
    """Send unless the connection is down (then the caller's silence timer decides)."""
    try:
        sock.send(frame, zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False


PUSHES = frozenset({"drop", "list"})   # what home sends unasked: the metadata cache's
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)   # (plain ints: enum arithmetic costs a call)


class Rpc:
    def __init__(self, sock: zmq.Socket, timeout: float, resend_after: float = 2.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self.lease = 0.0   # seconds a call waits past `timeout` for home to come back
        self.resend_after = resend_after
        self.seq = 0
        self.pending_retire: list[int] = []
        self.pending_close: list[int] = []
        # Messages home sends unasked on this connection (the metadata cache's drops and listings).
        self.on_push: Callable[[dict[str, Any]], None] = lambda msg: None
        # Every reply, whoever asked (the metadata cache counts the drops it says went first).
        self.on_reply: Callable[[dict[str, Any]], None] = lambda msg: None

    def call(self, op: str, args: list[Any], tid: int = 0, umask: int = 0o022) -> dict[str, Any]:
        self.seq += 1
        flight = {self.seq: self._frames(op, args, tid, umask)}
        self._send_all(flight)
        return self._wait_for(self.seq, flight, {})

    def pipeline(self, op: str, argss: Iterable[list[Any]], tid: int = 0,
                 umask: int = 0o022) -> Generator[dict[str, Any], None, None]:
        """The replies to a run of requests, in order, with up to wire.REPLY_WINDOW in
        flight so that home works on the next while this end uses the last (home keeps that
        many replies, so a resend is still answered from its cache). The consumer may stop
        early: what is still in flight is then awaited, and its replies dropped."""
        todo = iter(argss)
        flight: dict[int, Frames] = {}   # seq -> request, oldest first
        got: dict[int, dict[str, Any]] = {}
        try:
            while True:
                fresh: dict[int, Frames] = {}
                while len(flight) < wire.REPLY_WINDOW and (args := next(todo, None)) is not None:
                    self.seq += 1
                    fresh[self.seq] = flight[self.seq] = self._frames(op, args, tid, umask)
                self._send_all(fresh)
                if not flight:
                    return
                yield self._oldest(flight, got)
        except HomeLost:
            flight.clear()   # (nothing more to wait for)
            raise
        finally:
            # (a consumer that stopped early: what is in flight must have run at home before
            # the next request, or home would wait for a lost one forever)
            while flight:
                self._oldest(flight, got)

    def _oldest(self, flight: dict[int, Frames], got: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """The reply to the oldest request in flight, which then leaves the flight."""
        first = next(iter(flight))
        rep = self._wait_for(first, flight, got)
        del flight[first]
        return rep

    def _frames(self, op: str, args: list[Any], tid: int, umask: int) -> Frames:
        extra: dict[str, Any] = {}
        if self.pending_retire:
            extra["retire"], self.pending_retire = self.pending_retire, []
        if self.pending_close:
            extra["close"], self.pending_close = self.pending_close, []
        bulk = None
        if op in wire.REQUEST_DATA_OPS:
            args, bulk = args[:-1], args[-1]
        return wire.encode_frames("req", bulk, seq=self.seq, tid=tid, op=op, a=args, umask=umask, **extra)

    @property
    def owes_closes(self) -> bool:
        """Whether handles wait to be closed at home (their locks go with the next request)."""
        return bool(self.pending_close or self.pending_retire)

    def take_pushes(self) -> None:
        """Handle what home sent unasked and has arrived (no request is in flight)."""
        # (EVENTS, not poll(): a poll costs a Poller, ten times the check itself)
        while self.sock.get(_EVENTS) & _POLLIN:  # type: ignore[operator]
            try:
                msg = self._recv_message()
            except wire.ProtocolError:
                continue
            if msg["t"] in PUSHES:
                self.on_push(msg)
            elif msg["t"] == "error":
                raise HomeLost(msg["msg"])

    def _send_all(self, flight: dict[int, Frames]) -> None:
        for frames in flight.values():
            try:
                if len(frames) == 1:
                    self.sock.send(frames[0], copy=False)
                else:
                    self.sock.send_multipart(frames, copy=False)
            except zmq.Again:
                return  # not connected right now: the silence timer resends, up to the deadline

    def _wait_for(self, want: int, flight: dict[int, Frames],
                  got: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """Home's reply to request `want`, keeping in `got` the replies to the others in
        flight as they come; on silence the whole flight is sent again. Home may be away
        for the job's lease (the caller just waits, as on a slow disk): only after that is
        it counted as lost."""
        deadline = time.monotonic() + self.timeout + self.lease
        while True:
            wait_until = min(deadline, time.monotonic() + self.resend_after)
            while want not in got:
                left = wait_until - time.monotonic()
                if left <= 0:
                    break
                if self.sock.poll(int(left * 1000) + 1):
                    self._receive(flight, got)
            if want in got:
                return got.pop(want)
            if time.monotonic() >= deadline:
                raise HomeLost(f"no reply from the home node for {self.timeout + self.lease:.0f} s")
            self._send_all({seq: frame for seq, frame in flight.items() if seq not in got})

    def _recv_message(self) -> dict[str, Any]:
        """The next message, a reply's data frame as a view of it (no copy). (Frame by
        frame: recv_multipart(copy=False) costs a small reply twice what recv does.)"""
        head = self.sock.recv(copy=False)
        data = []
        more = head.more
        while more:
            frame = self.sock.recv(copy=False)
            data.append(frame.buffer)
            more = frame.more
        return wire.decode_frames(head.bytes, data)

    def _receive(self, flight: dict[int, Frames], got: dict[int, dict[str, Any]]) -> None:
        msg = self._recv_message()
        if msg["t"] == "rep" and msg["seq"] in flight and msg["seq"] not in got:
            self.on_reply(msg)
            got[msg["seq"]] = msg
        elif msg["t"] == "error":
            raise HomeLost(msg["msg"])
        elif msg["t"] in PUSHES:
            self.on_push(msg)
        # (anything else: a late duplicate of an earlier reply)


def claim(ctx: zmq.Context, cred: Credentials, say: Callable[[str], None]) -> Credentials:
    """For a stub Slurm started: ask the daemon's rendezvous which home server serves this
    job (the daemon starts it now), asking again while it answers "later" or not at all,
    for up to the lease; the credentials for that server. SystemExit with the daemon's
    word if it refuses the job (cancelled meanwhile, unknown)."""
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "") if cred.array else ""
    if cred.array and not task.isdigit():
        raise SystemExit("qrun-stub: an array job's stub needs SLURM_ARRAY_TASK_ID")
    who = f"{cred.job}_{task}" if task else cred.job
    sock = connect(ctx, Credentials(cred.endpoint, cred.server_key, cred.public, cred.secret,
                                    f"claim-{who}-{os.getpid()}"), "claim")
    ask = wire.encode("claim", job=int(cred.job), task=int(task) if task else None,
                      slurm=os.environ.get("SLURM_JOB_ID", ""))
    deadline = time.monotonic() + max(cred.lease, 60.0)
    quiet_since, said = time.monotonic(), False
    refusals = Refusals(sock)
    try:
        while time.monotonic() < deadline:
            if refusals.for_long():
                raise SystemExit(f"qrun-stub: the qrun daemon at {cred.endpoint} does not admit job {who}'s "
                                 f"key (the job is no longer in its records)")
            if not sock.poll(500, zmq.POLLOUT) or not try_send(sock, ask):
                if not said and time.monotonic() - quiet_since > 30:
                    say(f"the qrun daemon at {cred.endpoint} does not answer yet; still trying")
                    said = True
                continue
            if not sock.poll(5000):
                continue
            msg = wire.decode(sock.recv())
            quiet_since = time.monotonic()
            if msg["t"] == "serve":
                return Credentials(msg["endpoint"], msg["server_key"].encode(), cred.public, cred.secret,
                                   msg["job"])
            if msg["t"] == "error":
                raise SystemExit(f"qrun-stub: the qrun daemon refused job {who}: {msg['msg']}")
            time.sleep(0.2)   # ("later": its shepherd is starting)
    finally:
        refusals.close()
        sock.close(linger=0)
    raise HomeLost(f"the qrun daemon at {cred.endpoint} did not take job {who} within the lease")


class Refusals:
    """Whether the daemon has refused this stub's key (ZAP's 400) for REFUSED_FOR seconds
    on end: it admits a job's key from the moment sbatch is run, so a refusal that lasts
    means a job it no longer knows, and asking on until the lease would only hold a Slurm
    allocation."""
    REFUSED_FOR = 15.0

    def __init__(self, sock: zmq.Socket) -> None:
        events = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED
        self.monitor = sock.get_monitor_socket(events)
        self.since: float | None = None

    def for_long(self) -> bool:
        from zmq.utils.monitor import recv_monitor_message
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.since = None
            elif self.since is None:
                self.since = time.monotonic()
        return self.since is not None and time.monotonic() - self.since > self.REFUSED_FOR

    def close(self) -> None:
        self.monitor.close(linger=0)
