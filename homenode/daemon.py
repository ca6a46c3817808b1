"""The per-user home node daemon (`qrun daemon`): it starts batch jobs as slots free up and
cancels them; the job records (jobstore) are what it works from.

Each batch job is served at home by a shepherd of its own (`homenode/shepherd.py`, a child
of the daemon, as HTCondor's schedd starts a shadow per job): the job's home server, with
its own CURVE keys, in its own process and session. A shepherd records the job's start and
end itself, so the daemon can die and be restarted while jobs run: it re-adopts each
running job whose shepherd still lives (by pid and start time), and marks FAILED one whose
shepherd died without recording an end.

One daemon per user and job records: it holds an exclusive lock on `daemon.lock` beside
the records (in $XDG_STATE_HOME/qrun, made 0700, refused if another user owns it) and
listens on the Unix socket `daemon.sock` there, to which only its own user can connect
(the directory's mode, and each peer's uid checked with SO_PEERCRED). A request is one
JSON line, its reply one JSON line; nothing is ever unpickled. `qrun submit` starts the
daemon when none answers; started that way, it exits after IDLE_EXIT seconds in which no
job could run.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from qrun.homenode import config, servestate
from qrun.homenode.jobstore import (
    CANCELLED,
    FAILED,
    FINAL,
    MAX_ID,
    PENDING,
    RUNNING,
    Store,
    StoreError,
    expand,
)
from qrun.homenode.processes import alive
from qrun.homenode.queueing import NEVER_PREFIX, READY, WAIT, dependency
from qrun.homenode.userdirs import state_dir, user_name

if TYPE_CHECKING:
    from qrun.homenode.rendezvous import Rendezvous

IDLE_EXIT = 600.0       # seconds with no job that could run before an on-demand daemon exits
TERM_GRACE = 10.0       # seconds between a cancel's SIGTERM and SIGKILL to the job's processes
SHEPHERD_GRACE = 30.0   # further seconds before a shepherd that does not end is killed itself
MAX_TAKEOVERS = 5       # times a job's shepherd may die and be replaced (a crash, not a habit)
MAX_LINE = 1 << 16      # longest request line
REQUEST_TIME = 2.0      # seconds a client has to send its whole request
TICK = 1.0
SLURM_LOOK = 30.0       # seconds between looks at Slurm's queue for jobs it ended unstarted
KEYS_KEPT = 3600.0      # seconds an ended Slurm job's stub is still admitted, to be told so


class DaemonError(Exception):
    pass


def private_dir() -> Path:
    """The records' directory, which also holds the daemon's lock and socket: made 0700,
    and refused unless it is ours (its socket runs jobs as us)."""
    path = state_dir()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
        if st.st_uid == os.getuid() and st.st_mode & 0o077 and not os.path.islink(path):
            os.chmod(path, 0o700)   # (qrun's own directory, made by an older qrun or by hand)
            st = os.lstat(path)
    except OSError as exc:
        raise DaemonError(f"cannot use {path} for the daemon: {exc.strerror}") from None
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or os.path.islink(path) or not os.path.isdir(path):
        raise DaemonError(f"{path} is not a private directory of this user (mode {st.st_mode & 0o777:o}, "
                          f"owner {st.st_uid}): refusing to use it for the daemon's socket")
    return path


def socket_path() -> Path:
    path = private_dir() / "daemon.sock"
    if len(os.fsencode(path)) > 107:
        raise DaemonError(f"the daemon's socket path {path} is too long for a Unix socket "
                          "(set XDG_STATE_HOME to a shorter directory)")
    return path


def read_line(conn: socket.socket, within: float) -> bytes:
    """One line from `conn` within `within` seconds in all; ValueError if it is longer
    than MAX_LINE, OSError (a timeout) if it takes longer."""
    deadline = time.monotonic() + within
    data = b""
    while not data.endswith(b"\n"):
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = conn.recv(MAX_LINE)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_LINE:
            raise ValueError("request too long")
        if time.monotonic() > deadline:
            raise TimeoutError("request too slow")
    return data


# ---- the client side: what `qrun submit`, `cancel` and friends use ------------------------
def request(op: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    """One request to the running daemon; DaemonError if none answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(str(socket_path()))
        s.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
        data = read_line(s, timeout)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise DaemonError(f"the qrun daemon does not answer ({why})") from None
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
    log = private_dir() / "daemon.log"
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
    waiting: list[dict[str, Any]] = field(default_factory=list)   # as the last schedule saw them
    handing: dict[int, tuple[list[int], subprocess.Popen[bytes]]] = field(default_factory=dict)  # pid -> jobs
    at_slurm: list[dict[str, Any]] = field(default_factory=list)   # jobs Slurm queues (Store.at_slurm)
    rendezvous: Rendezvous | None = None
    missing: dict[int, int] = field(default_factory=dict)   # job -> looks in a row Slurm did not know it
    slurm_looked: float = 0.0
    takeovers: dict[int, int] = field(default_factory=dict)   # job -> successors started by this daemon

    def serve(self, listener: socket.socket) -> None:
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(sig_w)
        for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, lambda *_: None)
        self._adopt()
        if (private_dir() / "rendezvous.json").exists():
            self._meet()   # (stubs Slurm starts later expect it where it was)
        try:
            while True:
                ready = self._wait(listener.fileno(), sig_r)
                if sig_r in ready:
                    caught = os.read(sig_r, 256)
                    if {signal.SIGTERM, signal.SIGINT} & set(caught):
                        return   # (shepherds go on: a restarted daemon adopts them)
                if listener.fileno() in ready:
                    self._accept(listener)
                try:
                    self._tick()
                except Exception as exc:   # (a damaged record, a full disk: said, then tried again)
                    log(f"{type(exc).__name__}: {exc}")
                if self._idle():
                    return
        finally:
            if self.rendezvous is not None:
                self.rendezvous.close()

    def _wait(self, *fds: int) -> set[int]:
        """The fds of `fds` that are readable within a TICK; the rendezvous' messages are
        answered meanwhile."""
        if self.rendezvous is None:
            return set(select.select(list(fds), [], [], TICK)[0])
        import zmq
        poller = zmq.Poller()
        for fd in fds:
            poller.register(fd, zmq.POLLIN)
        poller.register(self.rendezvous.sock, zmq.POLLIN)
        ready = dict(poller.poll(int(TICK * 1000)))
        if self.rendezvous.sock in ready:
            try:
                self._claims()
            except Exception as exc:   # (as for a tick)
                log(f"rendezvous: {type(exc).__name__}: {exc}")
        return {fd for fd in fds if fd in ready}

    def _tick(self) -> None:
        self._reap()
        self._escalate()
        self.waiting = self.schedule()
        self._follow_slurm()

    def _idle(self) -> bool:
        """An on-demand daemon with nothing that could run for IDLE_EXIT seconds is done
        (a job whose dependency can never be met does not keep it; one Slurm queues does:
        its stub will phone the daemon)."""
        busy = self.children or self.adopted or self.handing or self.at_slurm or any(
            not w["reason"].startswith(NEVER_PREFIX) for w in self.waiting)
        if busy:
            self.idle_since = time.monotonic()
            return False
        return self.on_demand and time.monotonic() - self.idle_since > IDLE_EXIT

    # ---- jobs ---------------------------------------------------------------------------
    def _adopt(self) -> None:
        """After a restart: the jobs whose shepherds still run are ours again; one whose
        shepherd is gone without a word failed."""
        for job_id, pid, start in self.store.served():
            if alive(pid, start):
                self.adopted[job_id] = (pid, start)
            else:
                self._gone(job_id, pid)
        self.store.settle(daemon=True)

    def schedule(self) -> list[dict[str, Any]]:
        """Start the waiting jobs whose dependencies are met, oldest first, while the
        user's cap (max_jobs_per_user, of the job's cluster file) and each array's limit
        allow. Jobs waiting in Slurm's queue do not count: Slurm queues those. Returns the
        jobs that still wait, with their reasons."""
        caps: dict[str, int] = {}
        slurm = {j["id"] for j in self.store.jobs([PENDING, RUNNING]) if j["launcher"] == "slurm"}
        running = sum(1 for job_id, _ in self.children.values() if job_id not in slurm) + \
            sum(1 for job_id in self.adopted if job_id not in slurm)
        still: list[dict[str, Any]] = []
        waiting = self.store.waiting()
        for w in waiting:
            if w["handoff"]:
                if not any(w["id"] in ids for ids, _ in self.handing.values()):
                    still.extend(self._to_slurm(w, waiting))
                continue
            if w["config"] not in caps:
                caps[w["config"]] = _cap(w["config"])
            cap = caps[w["config"]] if w["launcher"] != "slurm" else 0
            if cap and running >= cap:
                still.append(self._wait_because(w, f"{cap} of your jobs are running (max_jobs_per_user)"))
                continue
            state, why = dependency(w["depends"], self.store.members)
            if state == READY and w["array_limit"] and \
                    self.store.running_tasks(w["array_job"]) >= w["array_limit"]:
                state, why = WAIT, f"{w['array_limit']} tasks of its array are running (array limit)"
            if state != READY:
                still.append(self._wait_because(w, why))
            elif self._start(w["id"]) and w["launcher"] != "slurm":
                running += 1
        return still

    def _to_slurm(self, w: dict[str, Any], waiting: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Hand a job Slurm is to queue to sbatch (an array's waiting tasks all at once,
        from its first), once its dependencies on jobs qrun runs are met (those on jobs
        Slurm queues go with it); [w] while it must wait."""
        state, why = dependency(w["depends"], self.store.members, slurm_decides=True)
        if state != READY:
            return [self._wait_because(w, why)]
        ids = [w["id"]]
        if w["array_job"] is not None:
            ids = [t["id"] for t in waiting if t["array_job"] == w["array_job"] and t["handoff"]]
        spec = self.store.spec(w["id"])
        if spec is None:
            return []
        for i in ids:
            self.store.set_reason(i, "being handed to Slurm (sbatch)")
        try:
            proc = subprocess.Popen([sys.executable, "-P", "-m", "qrun.homenode.handoff", *map(str, ids)],
                                    stdin=subprocess.DEVNULL, env=spec["env"],
                                    cwd=spec["submit_dir"] or spec["cwd"],
                                    close_fds=True, start_new_session=True)
        except OSError as exc:
            for i in ids:
                self.store.ended(i, FAILED, None, reason=f"cannot start sbatch's helper: {exc.strerror}")
            return []
        self.handing[proc.pid] = (ids, proc)
        return []

    def _wait_because(self, w: dict[str, Any], why: str) -> dict[str, Any]:
        if why != w["reason"]:
            self.store.set_reason(w["id"], why)
            w["reason"] = why
        return w

    def _start(self, job_id: int) -> bool:
        spec = self.store.spec(job_id)
        if spec is None or spec["state"] != PENDING:
            return False
        base = spec["submit_dir"] or spec["cwd"]
        try:
            out_path = os.path.join(base, expand(spec["out_path"], spec))
            err_path = os.path.join(base, expand(spec["err_path"], spec)) if spec["err_path"] else out_path
        except ValueError as exc:
            self.store.ended(job_id, "FAILED", None, reason=f"cannot open its output file: {exc}")
            return False
        self.store.set_paths(job_id, out_path, err_path)
        proc = self._shepherd(job_id, spec, out_path, err_path)
        if proc is None:
            return False
        if self.store.handed(job_id, proc.pid):
            self.children[proc.pid] = (job_id, proc)
            return True
        proc.kill()   # (cancelled meanwhile, or handed by another daemon)
        proc.wait()
        return False

    def _shepherd(self, job_id: int, spec: dict[str, Any], out_path: str, err_path: str,
                  extra: Sequence[str] = ()) -> subprocess.Popen[bytes] | None:
        """Start the job's shepherd, its output files as its stdout and stderr; None (the
        job recorded FAILED) if it cannot be."""
        try:
            out = _open_output(out_path, spec["umask"])
            err = out if err_path == out_path else _open_output(err_path, spec["umask"])
        except OSError as exc:
            self.store.ended(job_id, "FAILED", None, reason=f"cannot open its output file: {exc}")
            return None
        try:
            argv = [sys.executable, "-P", "-m", "qrun.homenode.shepherd", str(job_id), *extra]
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=spec["env"],
                                    cwd=spec["submit_dir"] or spec["cwd"], close_fds=True,
                                    start_new_session=True)
        except OSError as exc:
            self.store.ended(job_id, "FAILED", None, reason=f"cannot start its shepherd: {exc.strerror}")
            return None
        finally:
            out.close()
            if err is not out:
                err.close()

    def _reap(self) -> None:
        for pid, (ids, helper) in list(self.handing.items()):
            if helper.poll() is not None:
                del self.handing[pid]
                for i in ids:   # (a helper that died without a word: its jobs failed)
                    rec = self.store.get(i)
                    if rec is not None and rec["state"] == PENDING and not rec["slurm_id"]:
                        self.store.ended(i, FAILED, None, reason=f"handing it to Slurm failed (helper status "
                                         f"{helper.returncode}; see {private_dir() / 'daemon.log'})")
        for pid, (job_id, proc) in list(self.children.items()):
            if proc.poll() is not None:
                del self.children[pid]
                self._gone(job_id, pid)
        for job_id, (pid, start) in list(self.adopted.items()):
            if not alive(pid, start):
                del self.adopted[job_id]
                self._gone(job_id, pid)

    def _gone(self, job_id: int, shepherd: int) -> None:
        """A shepherd has exited: its job ended, or a successor serves it on."""
        self.cancels.pop(job_id, None)
        try:
            taken_over = self._take_over(job_id, shepherd)
        except Exception as exc:   # (damaged state: the job is settled instead)
            log(f"job {job_id}: cannot be taken over: {type(exc).__name__}: {exc}")
            taken_over = False
        if not taken_over:
            self._no_successor(job_id)
            self.store.settle([job_id], daemon=True)

    def _no_successor(self, job_id: int) -> None:
        """What a job's shepherd left for a successor goes (it holds the job's keys)."""
        servestate.discard(self.store.serving(job_id))

    def _take_over(self, job_id: int, shepherd: int) -> bool:
        """A running job whose shepherd (process `shepherd`) was killed before it recorded
        an end: a new shepherd serves it on from what the old one left, unless it has been
        taken over MAX_TAKEOVERS times already. (A cancelled one is taken over too: its
        successor passes the cancel on.)"""
        spec = self.store.spec(job_id)
        if spec is None or spec["state"] != RUNNING or spec["pid"] != shepherd:
            return False
        taken = servestate.take(self.store.serving(job_id))
        if taken is None:
            return False
        tries = self.takeovers[job_id] = self.takeovers.get(job_id, 0) + 1
        if max(tries, int(taken.server["takeovers"]) + 1) > MAX_TAKEOVERS:
            log(f"job {job_id}: its shepherd died again after {MAX_TAKEOVERS} takeovers; not taken over")
            return False
        proc = self._shepherd(job_id, spec, spec["out_path"], spec["err_path"], ["--take-over"])
        if proc is None:
            return False
        if not self.store.taken_over(job_id, (shepherd, spec["pid_start"]), proc.pid):
            proc.kill()
            proc.wait()
            return False
        log(f"job {job_id}: shepherd {shepherd} died; {proc.pid} serves on")
        self.children[proc.pid] = (job_id, proc)
        return True

    def cancel(self, job_id: int) -> str:
        rec = self.store.get(job_id)
        if rec is None:
            return "unknown job"
        if rec["state"] in FINAL:
            return f"already {rec['state']}"
        pid = self._shepherd_of(job_id)
        if pid is None:
            spec = self.store.spec(job_id)
            if rec["state"] == PENDING and rec["batch"] and spec is not None and spec["pid"] is None:
                self.store.cancel_asked(job_id)
                if rec["slurm_id"]:
                    _slurm_command(spec, "scancel", [rec["slurm_id"]])
                self.store.ended(job_id, CANCELLED, None, reason="cancelled before it started")
                return "cancelled"
            if rec["batch"] and rec["state"] == RUNNING and self.store.left_for_successor(job_id):
                self.store.cancel_asked(job_id)   # (its shepherd died: the successor passes it on)
                return "cancelling"
            return "not served by this daemon (an interactive job: signal its qrun)"
        self.store.cancel_asked(job_id)
        try:
            os.kill(pid, signal.SIGTERM)   # its home server passes it on, then SIGKILL after TERM_GRACE
        except ProcessLookupError:
            return "cancelling"   # (it has just ended: the next look settles it)
        self.cancels.setdefault(job_id, time.monotonic() + TERM_GRACE + SHEPHERD_GRACE)
        return "cancelling"

    def _shepherd_of(self, job_id: int) -> int | None:
        for pid, (j, proc) in self.children.items():
            if j == job_id and proc.poll() is None:
                return pid
        if job_id in self.adopted and alive(*self.adopted[job_id]):
            return self.adopted[job_id][0]
        return None

    def _escalate(self) -> None:
        """A shepherd that has not ended SHEPHERD_GRACE seconds after its job's SIGKILL is
        killed with its session (the job's stub then ends the job at its lease)."""
        now = time.monotonic()
        for job_id, deadline in list(self.cancels.items()):
            pid = self._shepherd_of(job_id)
            if pid is not None and now > deadline:
                self._no_successor(job_id)   # (killed by us: its job ends, no successor serves it on)
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                del self.cancels[job_id]

    # ---- jobs Slurm queues ----------------------------------------------------------------
    def _meet(self) -> Rendezvous:
        """The rendezvous, opened on first use (RendezvousError if it cannot be)."""
        if self.rendezvous is None:
            from qrun.homenode.rendezvous import Rendezvous
            self.rendezvous = Rendezvous(private_dir())
            for problem in self.rendezvous.problems:
                log(problem)
            self.rendezvous.keys = self.store.stub_keys(KEYS_KEPT)
        return self.rendezvous

    def _follow_slurm(self) -> None:
        """Keep the stubs' keys current, and every SLURM_LOOK seconds fail the jobs Slurm
        ended before their stubs phoned home (gone from its queue at two looks in a row)."""
        self.at_slurm = self.store.at_slurm()
        if self.rendezvous is not None:
            self.rendezvous.keys = self.store.stub_keys(KEYS_KEPT)
        unserved = [j["id"] for j in self.at_slurm if j["slurm_id"] and not j["served"]]
        now = time.monotonic()
        if not unserved or now - self.slurm_looked < SLURM_LOOK:
            return
        self.slurm_looked = now
        groups: dict[str, list[dict[str, Any]]] = {}
        for spec in filter(None, map(self.store.spec, unserved)):   # (one look per Slurm cluster)
            where = json.dumps([spec["env"].get("SLURM_CONF", ""), spec["contact"].get("slurm_tools")])
            groups.setdefault(where, []).append(spec)
        for group in groups.values():
            known = _slurm_queue(group[0])
            if known is not None:   # (None: Slurm does not answer, so nothing is known)
                self._missing_from_slurm(group, known)

    def _missing_from_slurm(self, specs: list[dict[str, Any]], known: set[str]) -> None:
        for spec in specs:
            job_id, slurm_id = spec["id"], spec["slurm_id"]
            if slurm_id in known:
                self.missing.pop(job_id, None)
                continue
            self.missing[job_id] = self.missing.get(job_id, 0) + 1
            if self.missing[job_id] < 2:
                continue
            del self.missing[job_id]
            now = self.store.spec(job_id)   # (as it is now: its stub may have phoned meanwhile)
            if now is not None and now["state"] == PENDING and now["pid"] is None:
                self.store.ended(job_id, FAILED, None, reason=f"Slurm ended job {slurm_id} before "
                                 f"its stub phoned home (sacct -j {slurm_id})")

    def _claims(self) -> None:
        assert self.rendezvous is not None
        for ident, key, msg in self.rendezvous.messages():
            if msg["t"] != "claim":
                continue
            kind, fields = self.claim(key, msg["job"], msg["task"])
            self.rendezvous.reply(ident, kind, **fields)

    def claim(self, key: bytes, job: int, task: int | None) -> tuple[str, dict[str, Any]]:
        """A stub Slurm started says it is `job` (task `task` of array `job`): start the
        job's shepherd, and once it listens tell the stub where ("serve"; "later" until
        then, "error" for a job that is not this stub's or no longer runs)."""
        who = f"{job}_{task}" if task is not None else str(job)
        if not 0 < job <= MAX_ID or (task is not None and not 0 <= task <= MAX_ID):
            return "error", {"msg": "bad job id", "code": 0}
        spec = self.store.task(job, task)
        if spec is None or not spec["handoff"] or spec["client_key"].encode() != key:
            return "error", {"msg": f"no job {who} of this stub's key", "code": 0}
        if spec["state"] in FINAL:
            return "error", {"msg": f"job {who} has ended ({spec['state']}: {spec['reason']})", "code": 0}
        if spec["pid"] is None:
            self._start(spec["id"])
            return "later", {}
        contact = spec["contact"]
        if isinstance(contact.get("endpoint"), str) and isinstance(contact.get("server_key"), str) \
                and isinstance(contact.get("job"), str):
            return "serve", {"endpoint": contact["endpoint"], "server_key": contact["server_key"],
                             "job": contact["job"]}
        return "later", {}

    # ---- the control socket -------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            try:
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
                if uid != os.getuid():
                    return
                try:
                    reply = self.answer(read_line(conn, REQUEST_TIME))
                except ValueError as exc:
                    reply = {"ok": False, "error": str(exc)}
                conn.settimeout(REQUEST_TIME)
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                return   # (a client that went away, or was too slow)

    def answer(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line; never raises (a failure is the reply's error)."""
        try:
            msg = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "malformed request"}
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            return {"ok": False, "error": "malformed request"}
        op = msg["op"]
        try:
            if op == "ping":
                return {"ok": True, "pid": os.getpid()}
            if op == "wake":
                return {"ok": True}   # (the loop schedules right after this reply)
            if op == "rendezvous":
                addr = msg.get("addr")
                if not isinstance(addr, str) or not 0 < len(addr) < 256 or any(c in addr for c in "/ \n"):
                    return {"ok": False, "error": "rendezvous: an address expected"}
                from qrun.homenode.rendezvous import RendezvousError
                try:
                    meeting = self._meet()
                    return {"ok": True, "endpoint": meeting.endpoint(addr),
                            "server_key": meeting.public.decode()}
                except RendezvousError as exc:
                    return {"ok": False, "error": str(exc)}
            if op == "cancel":
                ids = msg.get("ids")
                if not isinstance(ids, list) or len(ids) > 100_000 or not all(
                        isinstance(i, int) and not isinstance(i, bool) and 0 < i <= MAX_ID for i in ids):
                    return {"ok": False, "error": "cancel: a list of job ids expected"}
                return {"ok": True, "results": {str(i): self.cancel(i) for i in ids}}
        except (StoreError, OSError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:   # a bug must fail one request, not the daemon
            log(f"{op}: {type(exc).__name__}: {exc}")
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        return {"ok": False, "error": f"unknown request {op[:40]!r}"}


def log(line: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} qrun daemon: {line}\n")
    sys.stderr.flush()


def _cap(path: str) -> int:
    """max_jobs_per_user of a cluster file ("": none, so no cap)."""
    if not path:
        return 0
    try:
        return config.load(path).max_jobs_per_user
    except config.ConfigError:
        return 0   # (its shepherd says what is wrong with it, once it runs)


def _slurm_command(spec: dict[str, Any], tool: str,
                   args: list[str]) -> subprocess.CompletedProcess[str] | None:
    """One of Slurm's commands for a job it queues, run as the job's srun would be (its
    environment, srun_command's prefix and directory); None if it could not be run."""
    from qrun.homenode.launchers import SlurmTools
    try:
        return SlurmTools.from_wire(spec["contact"].get("slurm_tools")).run(tool, args, spec["env"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"{tool} {' '.join(args)}: {exc}")
        return None


def _slurm_queue(spec: dict[str, Any]) -> set[str] | None:
    """The ids (123, 123_4) of the user's jobs in the queue of the Slurm `spec`'s job went
    to that have not ended there; None if Slurm cannot say."""
    from qrun.homenode.slurmwatch import ENDED
    done = _slurm_command(spec, "squeue", ["-h", "-r", "-o", "%i %T", "-u", user_name()])
    if done is None or done.returncode != 0:
        return None
    known = set()
    for line in done.stdout.splitlines():
        words = line.split()
        if len(words) == 2 and words[1] not in ENDED:
            known.add(words[0])
    return known


def _open_output(path: str, umask: int) -> IO[bytes]:
    """A job's output file, appended to, with the submitter's umask (not the daemon's)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666 & ~umask)
    return os.fdopen(fd, "ab")


def _lock(directory: Path, wait: float) -> IO[str] | None:
    """The daemon lock, waiting up to `wait` seconds (an exiting daemon lets it go); None
    if another daemon holds it."""
    lock = open(directory / "daemon.lock", "a")  # noqa: SIM115 - held for the daemon's life
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() > deadline:
            lock.close()
            return None
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    on_demand = "--on-demand" in args
    try:
        path = socket_path()
        lock = _lock(path.parent, 3.0 if on_demand else 0.0)
        if lock is None:
            sys.stderr.write("qrun: a qrun daemon of this user is already running\n")
            return 0 if on_demand else 1
        store = Store()
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
    except (DaemonError, StoreError) as exc:
        sys.stderr.write(f"qrun: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"qrun: cannot start the daemon: {exc.strerror or exc}\n")
        return 1
    log(f"{os.getpid()} started (records {store.path}, socket {path})")
    try:
        Daemon(store, on_demand).serve(listener)
    finally:
        try:
            path.unlink()   # (first: a client that finds no socket starts a new daemon)
        except OSError:
            pass
        listener.close()
        log(f"{os.getpid()} stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
