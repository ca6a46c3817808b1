"""The per-user home node daemon (`qrun daemon`): it starts batch jobs as slots free up and
cancels them; the job records (jobstore) are what it works from.

Each batch job is served at home by a shepherd of its own (`homenode/shepherd.py`, a child
of the daemon, as HTCondor's schedd starts a shadow per job): the job's home server, with
its own CURVE keys, in its own process. A shepherd records the job's start and end itself,
so the daemon can die and be restarted while jobs run: it re-adopts each running job whose
shepherd still lives (by pid and start time), and marks FAILED one whose shepherd died
without recording an end.

One daemon per user: it holds an exclusive lock on `daemon.lock` in its runtime directory
($XDG_RUNTIME_DIR/qrun, else /tmp/qrun-UID; mode 0700, refused if another user owns it)
and listens on the Unix socket `daemon.sock` there, to which only its own user can connect
(the directory's mode, and each peer's uid checked with SO_PEERCRED). A request is one JSON
line, its reply one JSON line; nothing is ever unpickled. `qrun submit` starts the daemon
when none answers; started that way, it exits after IDLE_EXIT seconds with nothing to do.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrun.homenode import config
from qrun.homenode.jobstore import FINAL, PENDING, RUNNING, Store, StoreError, alive, expand
from qrun.homenode.queueing import READY, WAIT, dependency

IDLE_EXIT = 600.0       # seconds with no job before an on-demand daemon exits
TERM_GRACE = 10.0       # seconds between a cancel's SIGTERM and SIGKILL to the job's processes
SHEPHERD_GRACE = 30.0   # further seconds before a shepherd that does not end is killed itself
MAX_LINE = 1 << 16      # longest request line
TICK = 1.0


class DaemonError(Exception):
    pass


def runtime_dir() -> Path:
    """The daemon's private directory: created 0700, and refused unless it is ours and
    nobody else's to enter (the socket in it runs jobs as us)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "qrun" if base else Path(f"/tmp/qrun-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, parents=bool(base), exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise DaemonError(f"cannot use {path} for the daemon's socket: {exc.strerror}") from None
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or not os.path.isdir(path) or os.path.islink(path):
        raise DaemonError(f"{path} is not a private directory of this user (mode {st.st_mode & 0o777:o}, "
                          f"owner {st.st_uid}): refusing to use it for the daemon's socket")
    return path


def socket_path() -> Path:
    return runtime_dir() / "daemon.sock"


# ---- the client side: what `qrun submit`, `cancel` and friends use ------------------------
def request(op: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    """One request to the running daemon; DaemonError if none answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(str(socket_path()))
        s.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(MAX_LINE)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise DaemonError(f"the qrun daemon does not answer ({exc.strerror or exc})") from None
    finally:
        s.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise DaemonError("the qrun daemon sent a malformed reply") from None
    if not isinstance(reply, dict):
        raise DaemonError("the qrun daemon sent a malformed reply")
    return reply


def ensure_running(wait: float = 10.0) -> None:
    """Start the daemon if none answers, detached from this terminal and session."""
    try:
        request("ping", timeout=2.0)
        return
    except DaemonError:
        pass
    log = Store().path.parent / "daemon.log"
    with open(log, "ab") as out:
        subprocess.Popen([sys.executable, "-P", "-m", "qrun.homenode.daemon", "--on-demand"],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                         close_fds=True, cwd="/")
    deadline = time.monotonic() + wait
    while True:
        try:
            request("ping", timeout=2.0)
            return
        except DaemonError:
            if time.monotonic() > deadline:
                raise DaemonError(f"the qrun daemon did not start (see {log})") from None
            time.sleep(0.05)


# ---- the daemon -------------------------------------------------------------------------
@dataclass
class Daemon:
    store: Store
    on_demand: bool = False
    children: dict[int, tuple[int, subprocess.Popen[bytes]]] = field(default_factory=dict)  # pid -> job
    adopted: dict[int, tuple[int, str]] = field(default_factory=dict)  # job -> (pid, start)
    cancels: dict[int, float] = field(default_factory=dict)   # job -> when its shepherd is killed
    idle_since: float = field(default_factory=time.monotonic)

    def serve(self, listener: socket.socket) -> None:
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(sig_w)
        for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, lambda *_: None)
        self._adopt()
        while True:
            ready, _, _ = select.select([listener.fileno(), sig_r], [], [], TICK)
            if sig_r in ready:
                caught = os.read(sig_r, 256)
                if {signal.SIGTERM, signal.SIGINT} & set(caught):
                    return   # (shepherds go on: a restarted daemon adopts them)
            if listener.fileno() in ready:
                self._accept(listener)
            self._reap()
            self._escalate()
            self.schedule()
            if self.children or self.adopted or self.store.waiting():
                self.idle_since = time.monotonic()
            elif self.on_demand and time.monotonic() - self.idle_since > IDLE_EXIT:
                return

    # ---- jobs ---------------------------------------------------------------------------
    def _adopt(self) -> None:
        """After a restart: the jobs whose shepherds still run are ours again; one whose
        shepherd is gone without a word failed."""
        for job_id, pid, start in self.store.served():
            if alive(pid, start):
                self.adopted[job_id] = (pid, start)
            else:
                self._lost_shepherd(job_id)

    def _lost_shepherd(self, job_id: int) -> None:
        self.store.settle([job_id])

    def running_count(self) -> int:
        """Shepherds serving jobs qrun queues (not those waiting in Slurm's queue)."""
        slurm = {j["id"] for j in self.store.jobs([PENDING, RUNNING]) if j["launcher"] == "slurm"}
        return sum(1 for job_id, _ in self.children.values() if job_id not in slurm) + \
            sum(1 for job_id in self.adopted if job_id not in slurm)

    def schedule(self) -> None:
        """Start the waiting jobs whose dependencies are met, oldest first, while the
        user's cap (max_jobs_per_user, of the job's cluster file) and each array's limit
        allow."""
        caps: dict[str, int] = {}
        for w in self.store.waiting():
            if w["config"] not in caps:
                caps[w["config"]] = _cap(w["config"])
            cap = caps[w["config"]] if w["launcher"] != "slurm" else 0   # (Slurm queues those)
            if cap and self.running_count() >= cap:
                if w["reason"] != (why := f"{cap} of your jobs are running (max_jobs_per_user)"):
                    self.store.set_reason(w["id"], why)
                continue
            state, why = dependency(w["depends"], self.store.members)
            if state == READY and w["array_limit"] and \
                    self.store.running_tasks(w["array_job"]) >= w["array_limit"]:
                state, why = WAIT, f"{w['array_limit']} tasks of its array are running (array limit)"
            if state == READY:
                self._start(w["id"])
            elif why != w["reason"]:
                self.store.set_reason(w["id"], why)

    def _start(self, job_id: int) -> None:
        spec = self.store.spec(job_id)
        if spec is None or spec["state"] != PENDING:
            return
        try:
            out_path = expand(spec["out_path"], spec)
            err_path = expand(spec["err_path"], spec) if spec["err_path"] else out_path
            self.store.set_paths(job_id, out_path, err_path)
            out = _open_output(out_path)
            err = out if err_path == out_path else _open_output(err_path)
        except (OSError, ValueError) as exc:
            self.store.ended(job_id, "FAILED", None, reason=f"cannot open its output file: {exc}")
            return
        try:
            proc = subprocess.Popen([sys.executable, "-P", "-m", "qrun.homenode.shepherd", str(job_id)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=spec["env"],
                                    cwd=spec["cwd"], close_fds=True)
        except OSError as exc:
            self.store.ended(job_id, "FAILED", None, reason=f"cannot start its shepherd: {exc.strerror}")
            return
        finally:
            out.close()
            if err is not out:
                err.close()
        if self.store.handed(job_id, proc.pid):
            self.children[proc.pid] = (job_id, proc)
        else:  # cancelled meanwhile
            proc.kill()
            proc.wait()

    def _reap(self) -> None:
        for pid, (job_id, proc) in list(self.children.items()):
            if proc.poll() is not None:
                del self.children[pid]
                self.cancels.pop(job_id, None)
                self._lost_shepherd(job_id)
        for job_id, (pid, start) in list(self.adopted.items()):
            if not alive(pid, start):
                del self.adopted[job_id]
                self.cancels.pop(job_id, None)
                self._lost_shepherd(job_id)

    def cancel(self, job_id: int) -> str:
        rec = self.store.get(job_id)
        if rec is None:
            return "unknown job"
        if rec["state"] in FINAL:
            return f"already {rec['state']}"
        self.store.cancel_asked(job_id)
        pid = self._shepherd_of(job_id)
        if pid is None:
            if rec["state"] == PENDING:
                self.store.ended(job_id, "CANCELLED", None, reason="cancelled before it started")
                return "cancelled"
            return "not served by this daemon"
        os.kill(pid, signal.SIGTERM)   # its home server passes it on, then SIGKILL after TERM_GRACE
        self.cancels.setdefault(job_id, time.monotonic() + TERM_GRACE + SHEPHERD_GRACE)
        return "cancelling"

    def _shepherd_of(self, job_id: int) -> int | None:
        for pid, (j, _) in self.children.items():
            if j == job_id:
                return pid
        if job_id in self.adopted:
            return self.adopted[job_id][0]
        return None

    def _escalate(self) -> None:
        now = time.monotonic()
        for job_id, deadline in list(self.cancels.items()):
            pid = self._shepherd_of(job_id)
            if pid is not None and now > deadline:
                os.kill(pid, signal.SIGKILL)
                del self.cancels[job_id]

    # ---- the control socket -------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
                if uid != os.getuid():
                    return
                line = _read_line(conn)
                reply = self.answer(line)
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except (OSError, ValueError):
                return   # (a client that went away, or sent too much, or too slowly)

    def answer(self, line: bytes) -> dict[str, Any]:
        try:
            msg = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "malformed request"}
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            return {"ok": False, "error": "malformed request"}
        op = msg["op"]
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "wake":
            self.schedule()
            return {"ok": True}
        if op == "cancel":
            ids = msg.get("ids")
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                    for i in ids) or len(ids) > 100_000:
                return {"ok": False, "error": "cancel: a list of job ids expected"}
            try:
                return {"ok": True, "results": {str(i): self.cancel(i) for i in ids}}
            except StoreError as exc:
                return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown request {op[:40]!r}"}


def _cap(path: str) -> int:
    """max_jobs_per_user of a cluster file ("": none, so no cap)."""
    if not path:
        return 0
    try:
        return config.load(path).max_jobs_per_user
    except config.ConfigError:
        return 0   # (its shepherd says what is wrong with it, once it runs)


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(MAX_LINE)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_LINE:
            raise ValueError("request too long")
    return data


def _open_output(path: str) -> Any:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
    return os.fdopen(fd, "ab")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    on_demand = "--on-demand" in args
    try:
        rdir = runtime_dir()
        lock = open(rdir / "daemon.lock", "a")  # noqa: SIM115 - held for the daemon's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                sys.stderr.write("qrun: a qrun daemon of this user is already running\n")
                return 0 if on_demand else 1
            raise
        store = Store()
    except (DaemonError, StoreError) as exc:
        sys.stderr.write(f"qrun: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"qrun: cannot start the daemon: {exc.strerror}\n")
        return 1
    path = rdir / "daemon.sock"
    try:
        path.unlink()   # (a dead daemon's: we hold the lock, so no live one listens there)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(64)
    sys.stderr.write(f"qrun daemon {os.getpid()} started at {time.strftime('%Y-%m-%d %H:%M:%S')} "
                     f"(records {store.path}, socket {path})\n")
    sys.stderr.flush()
    Daemon(store, on_demand).serve(listener)
    listener.close()
    try:
        path.unlink()
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

