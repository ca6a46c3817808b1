"""The job records: one SQLite database per user ($XDG_STATE_HOME/qrun/jobs.db), in WAL
mode, written by `qrun submit`, the daemon, each batch job's shepherd and interactive
`qrun`, read by `qrun status`, `acct`, `wait` and `output`.

Every change is one short transaction, so a process killed at any point leaves every
committed record whole (WAL keeps the file consistent; `PRAGMA integrity_check` passes).
The schema is versioned by `PRAGMA user_version` and brought up to date, in order, by the
scripts of MIGRATIONS when a newer qrun opens an older file.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from qrun.homenode.exitcodes import USAGE as USAGE_STATUS
from qrun.homenode.processes import alive, process_start
from qrun.homenode.userdirs import state_dir, user_name

PENDING, RUNNING, DONE, FAILED, CANCELLED, LOST = "PENDING", "RUNNING", "DONE", "FAILED", "CANCELLED", "LOST"
STATES = (PENDING, RUNNING, DONE, FAILED, CANCELLED, LOST)
FINAL = frozenset({DONE, FAILED, CANCELLED, LOST})
_FINAL_MARKS = ", ".join("?" * len(FINAL))
MAX_ID = 2**63 - 1

# Each entry takes the schema from version i to i + 1; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        name          TEXT NOT NULL,
        user          TEXT NOT NULL,
        argv          TEXT NOT NULL,      -- the job's command, JSON list
        options       TEXT NOT NULL,      -- qrun's options for it, JSON list
        env           TEXT NOT NULL,      -- its environment at submission, JSON object
        cwd           TEXT NOT NULL,
        umask         INTEGER NOT NULL,
        mode          TEXT NOT NULL,      -- transparent | plain
        batch         INTEGER NOT NULL,   -- 1: qrun submit; 0: interactive qrun
        state         TEXT NOT NULL,
        reason        TEXT NOT NULL DEFAULT '',
        host          TEXT NOT NULL DEFAULT '',
        launcher      TEXT NOT NULL DEFAULT '',
        out_path      TEXT NOT NULL DEFAULT '',
        err_path      TEXT NOT NULL DEFAULT '',
        submitted     REAL NOT NULL,
        started       REAL,
        ended         REAL,
        exit_code     INTEGER,            -- the status qrun returns (128+N for signal N)
        signal        INTEGER,
        utime         REAL,
        stime         REAL,
        maxrss_kb     INTEGER,
        calls         INTEGER,
        cached        INTEGER,
        fetched       INTEGER,
        written_back  INTEGER,
        reconnects    INTEGER NOT NULL DEFAULT 0,
        attempts      INTEGER NOT NULL DEFAULT 0,
        cancelled     REAL,               -- when a cancel was asked for (it may still be ending)
        array_job     INTEGER,            -- an array task: the array's id (its first task's)
        array_index   INTEGER,            -- and its index in the array
        array_limit   INTEGER NOT NULL DEFAULT 0,   -- at most this many of its tasks at once
        depends       TEXT NOT NULL DEFAULT '{}',   -- {"after"|"afterok"|"afternotok": [ids]}
        requeue       INTEGER NOT NULL DEFAULT 0,   -- 1: started again if its host is lost
        config        TEXT NOT NULL DEFAULT '',     -- its cluster file ('': none)
        launch_name   TEXT NOT NULL DEFAULT '',     -- its name at the launcher (Slurm's job name)
        submit_dir    TEXT NOT NULL DEFAULT '',     -- where it was submitted (its options' relative paths)
        pid_host      TEXT NOT NULL DEFAULT '',     -- the machine `pid` runs on
        pid           INTEGER,            -- the process serving it at home (shepherd or qrun)
        pid_start     TEXT NOT NULL DEFAULT ''   -- that process's start time, against pid reuse
    );
    CREATE INDEX jobs_state ON jobs (state);
    """,
    """
    ALTER TABLE jobs ADD COLUMN handoff INTEGER NOT NULL DEFAULT 0;     -- 1: Slurm queues it (sbatch)
    ALTER TABLE jobs ADD COLUMN slurm_id TEXT NOT NULL DEFAULT '';      -- its id there: 123, or 123_4
    ALTER TABLE jobs ADD COLUMN client_key TEXT NOT NULL DEFAULT '';    -- its stub's CURVE public key
    ALTER TABLE jobs ADD COLUMN contact TEXT NOT NULL DEFAULT '';       -- where its shepherd serves it, JSON
    """,
)

FIELDS = ("id", "name", "user", "argv", "cwd", "mode", "batch", "state", "reason", "host", "launcher",
          "out_path", "err_path", "submitted", "started", "ended", "exit_code", "signal", "utime",
          "stime", "maxrss_kb", "calls", "cached", "fetched", "written_back", "reconnects", "attempts",
          "cancelled", "array_job", "array_index", "requeue", "launch_name", "slurm_id")
USAGE_FIELDS = ("utime", "stime", "maxrss_kb", "calls", "cached", "fetched", "written_back", "reconnects")


class StoreError(Exception):
    """The records cannot be opened or written (one line says why)."""


@dataclass
class NewJob:
    name: str
    argv: list[str]
    options: list[str]
    env: dict[str, str]
    cwd: str
    umask: int
    mode: str
    batch: bool
    out_path: str = ""
    err_path: str = ""
    array: tuple[int, int, int] | None = None   # (array id or 0 for the first task, index, limit)
    depends: dict[str, list[int]] = field(default_factory=dict)
    requeue: bool = False
    config: str = ""
    launcher: str = ""    # as asked for (--launcher), until the job is placed
    submit_dir: str = ""
    handoff: bool = False   # sbatch queues it: Slurm, not qrun, decides when it starts


class Store:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_dir() / "jobs.db"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # (environments)
            os.close(fd)
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")   # (WAL: durable against any crash of ours)
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the job records {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, taken for writing at once (BEGIN IMMEDIATE): readers go on."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the job records {self.path}: {exc}") from None

    def _migrate(self) -> None:
        """Bring the schema up to date, one version per transaction; the version is read
        again inside each (another qrun may have migrated meanwhile)."""
        if self.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
            return   # (the usual case: no write lock taken)
        while True:
            with self._write() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > len(MIGRATIONS):
                    raise StoreError(f"the job records {self.path} are of a newer qrun (schema {version}; "
                                     f"this one knows {len(MIGRATIONS)})")
                if version == len(MIGRATIONS):
                    return
                for statement in _statements(MIGRATIONS[version]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {version + 1}")

    # ---- writing ------------------------------------------------------------------------
    def add(self, job: NewJob, state: str = PENDING, pid: int | None = None) -> int:
        return self.add_all([job], state, pid)[0]

    def add_all(self, jobs: Sequence[NewJob], state: str = PENDING, pid: int | None = None) -> list[int]:
        """Record jobs in one transaction (an array's tasks all appear at once, or none
        does); an array's first task names the array (array id 0 stands for it)."""
        now = time.time()
        ids: list[int] = []
        with self._write() as db:
            for job in jobs:
                array_job, index, limit = job.array if job.array is not None else (None, None, 0)
                if array_job == 0:
                    array_job = ids[0] if ids else None
                cur = db.execute(
                    "INSERT INTO jobs (name, user, argv, options, env, cwd, umask, mode, batch, state, "
                    "out_path, err_path, submitted, started, pid, pid_start, attempts, array_job, "
                    "array_index, array_limit, depends, requeue, config, launcher, submit_dir, pid_host, "
                    f"handoff) VALUES ({', '.join('?' * 27)})",
                    (job.name, user_name(), json.dumps(job.argv), json.dumps(job.options),
                     json.dumps(job.env), job.cwd, job.umask, job.mode, int(job.batch), state, job.out_path,
                     job.err_path, now, now if state == RUNNING else None, pid,
                     process_start(pid) if pid else "", 1 if pid else 0, array_job, index,
                     limit, json.dumps(job.depends), int(job.requeue), job.config, job.launcher,
                     job.submit_dir, socket.gethostname() if pid else "", int(job.handoff)))
                assert cur.lastrowid is not None
                ids.append(cur.lastrowid)
                if array_job is None and job.array is not None:  # (the first task: its own array)
                    db.execute("UPDATE jobs SET array_job = id WHERE id = ?", (cur.lastrowid,))
        return ids

    def set_paths(self, job_id: int, out_path: str, err_path: str) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET out_path = ?, err_path = ? WHERE id = ?",
                       (out_path, err_path, job_id))

    def handed(self, job_id: int, pid: int) -> bool:
        """A PENDING job handed to its shepherd, process `pid` (it stays PENDING until a host
        is chosen); False if it is no longer pending (cancelled meanwhile)."""
        with self._write() as db:
            cur = db.execute("UPDATE jobs SET pid = ?, pid_start = ?, pid_host = ?, "
                             "reason = 'choosing a host', attempts = attempts + 1 "
                             "WHERE id = ? AND state = ? AND pid IS NULL",
                             (pid, process_start(pid), socket.gethostname(), job_id, PENDING))
            return cur.rowcount == 1

    def placed(self, job_id: int, host: str, launcher: str, launch_name: str, reason: str) -> None:
        """Where the job goes; it stays PENDING (with `reason`) until its stub is heard."""
        with self._write() as db:
            db.execute("UPDATE jobs SET host = ?, launcher = ?, launch_name = ?, reason = ? "
                       "WHERE id = ? AND state = ?",
                       (host, launcher, launch_name, reason[:500], job_id, PENDING))

    def running(self, job_id: int) -> None:
        """Its stub has called home: the job runs."""
        with self._write() as db:
            db.execute("UPDATE jobs SET state = ?, started = ?, reason = '' WHERE id = ? AND state = ?",
                       (RUNNING, time.time(), job_id, PENDING))

    def requeued(self, job_id: int, reason: str) -> bool:
        """A job whose host was lost, waiting to be started again from the beginning;
        False if it was cancelled or had ended meanwhile."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, pid = NULL, pid_start = '', pid_host = '', started = NULL, "
                "host = '', slurm_id = '', client_key = '', contact = '', reason = ? "
                f"WHERE id = ? AND cancelled IS NULL AND state NOT IN ({_FINAL_MARKS})",
                (PENDING, reason[:500], job_id, *sorted(FINAL)))
            return cur.rowcount == 1

    def abandon(self, job_ids: Sequence[int], reason: str) -> None:
        """Jobs no daemon can run (it would not start): FAILED, unless one took them."""
        with self._write() as db:
            for job_id in job_ids:
                db.execute("UPDATE jobs SET state = ?, reason = ?, ended = ? WHERE id = ? AND state = ? "
                           "AND pid IS NULL", (FAILED, reason[:500], time.time(), job_id, PENDING))

    def cancel_asked(self, job_id: int) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET cancelled = ? WHERE id = ? AND cancelled IS NULL",
                       (time.time(), job_id))

    def ended(self, job_id: int, state: str, code: int | None, sig: int | None = None,
              usage: dict[str, float] | None = None, reason: str = "") -> bool:
        """Record how a job ended, once: False if it had already ended."""
        u = usage or {}
        values = [int(u[k]) if k in u and k not in ("utime", "stime") else u.get(k) for k in USAGE_FIELDS]
        values[-1] = values[-1] or 0   # (reconnects: none unless the stub said so)
        with self._write() as db:
            cur = db.execute(
                f"UPDATE jobs SET state = ?, exit_code = ?, signal = ?, reason = ?, ended = ?, "
                f"{', '.join(k + ' = ?' for k in USAGE_FIELDS)} WHERE id = ? AND state NOT IN "
                f"({_FINAL_MARKS})",
                (state, code, sig, reason[:500], time.time(), *values, job_id, *sorted(FINAL)))
            return cur.rowcount == 1

    def settle(self, job_ids: Sequence[int] | None = None, daemon: bool = False) -> None:
        """Unfinished jobs (those of `job_ids`, else all) whose serving process on this
        machine is gone without recording an end: a cancelled one counts as CANCELLED, any
        other as FAILED (the shepherd or the interactive qrun was killed). The record
        changes only if that process still is the one recorded. A running batch job whose
        shepherd left what a successor needs is left to the daemon while one runs (it
        starts that successor); the daemon itself passes `daemon`."""
        rows = self._query("SELECT id, pid, pid_start, cancelled, batch, state FROM jobs WHERE pid IS NOT "
                           "NULL AND pid_host = ? AND state IN (?, ?)",
                           (socket.gethostname(), PENDING, RUNNING))
        for r in rows:
            if (job_ids is not None and r["id"] not in job_ids) or alive(r["pid"], r["pid_start"]):
                continue
            if not daemon and r["batch"] and r["state"] == RUNNING and self._successor_may_come(r["id"]):
                continue
            if r["cancelled"] is not None:
                state, reason = CANCELLED, "cancelled"
            else:
                state, reason = FAILED, ("its home server (shepherd) died" if r["batch"]
                                         else "qrun was killed before the job ended")
            with self._write() as db:
                db.execute(f"UPDATE jobs SET state = ?, reason = ?, ended = ? WHERE id = ? AND pid = ? AND "
                           f"pid_start = ? AND state NOT IN ({_FINAL_MARKS})",
                           (state, reason, time.time(), r["id"], r["pid"], r["pid_start"], *sorted(FINAL)))

    def serving(self, job_id: int) -> Path:
        """Where the job's home server leaves what a successor needs (servestate.py)."""
        return serving_dir(self.path.parent, job_id)

    def left_for_successor(self, job_id: int) -> bool:
        return (self.serving(job_id) / "server.json").exists()

    def _successor_may_come(self, job_id: int) -> bool:
        return self.left_for_successor(job_id) and flock_held(self.path.parent / "daemon.lock")

    def taken_over(self, job_id: int, old: tuple[int, str], pid: int) -> bool:
        """A running job's new shepherd, process `pid`, serving on after `old` (pid, start)
        died; False if the record no longer names `old` (settled, taken over meanwhile)."""
        with self._write() as db:
            cur = db.execute("UPDATE jobs SET pid = ?, pid_start = ? WHERE id = ? AND pid = ? AND "
                             "pid_start = ? AND state = ?", (pid, process_start(pid), job_id, *old, RUNNING))
            return cur.rowcount == 1

    # ---- jobs Slurm queues (handoff) ------------------------------------------------------
    def set_client_key(self, job_ids: Sequence[int], key: str) -> None:
        """The public key of the stub sbatch will start for these jobs (before sbatch runs:
        that stub may call home before sbatch has even answered)."""
        with self._write() as db:
            db.executemany("UPDATE jobs SET client_key = ? WHERE id = ? AND state = ? AND pid IS NULL",
                           [(key, i, PENDING) for i in job_ids])

    def queued_at_slurm(self, job_id: int, slurm_id: str, launch_name: str, reason: str) -> bool:
        """sbatch queued the job as `slurm_id`; False if it is no longer pending (cancelled
        while sbatch ran)."""
        with self._write() as db:
            cur = db.execute("UPDATE jobs SET slurm_id = ?, launcher = 'slurm', launch_name = ?, reason = ? "
                             "WHERE id = ? AND state = ?",
                             (slurm_id, launch_name, reason[:500], job_id, PENDING))
            return cur.rowcount == 1

    def set_contact(self, job_id: int, contact: dict[str, Any]) -> None:
        """What the daemon needs to reach the job at Slurm: where Slurm's commands are, and
        then where the job's shepherd listens for its stub (merged into what is there)."""
        with self._write() as db:
            row = db.execute("SELECT contact FROM jobs WHERE id = ?", (job_id,)).fetchone()
            old = _contact(row["contact"]) if row is not None else {}
            db.execute("UPDATE jobs SET contact = ? WHERE id = ?", (json.dumps({**old, **contact}), job_id))

    def at_slurm(self) -> list[dict[str, Any]]:
        """Unfinished jobs sbatch is queueing or has queued: their ids, Slurm ids ("" while
        sbatch runs) and whether a shepherd serves them yet."""
        rows = self._query("SELECT id, slurm_id, pid FROM jobs WHERE handoff = 1 AND client_key != '' "
                           "AND state IN (?, ?)", (PENDING, RUNNING))
        return [{"id": r["id"], "slurm_id": r["slurm_id"], "served": r["pid"] is not None} for r in rows]

    def stub_keys(self, ended_within: float) -> frozenset[bytes]:
        """The keys of the stubs sbatch may start: those of unfinished jobs Slurm queues, and
        of those that ended in the last `ended_within` seconds (whose stubs, if Slurm still
        starts them, are told so instead of being left to retry)."""
        rows = self._query("SELECT client_key FROM jobs WHERE handoff = 1 AND client_key != '' AND "
                           "(state IN (?, ?) OR ended > ?)", (PENDING, RUNNING, time.time() - ended_within))
        return frozenset(str(r["client_key"]).encode() for r in rows)

    def task(self, job: int, index: int | None) -> dict[str, Any] | None:
        """Job `job`, or task `index` of array `job`, as `spec` gives it."""
        if index is None:
            rows = self._query("SELECT id FROM jobs WHERE id = ? AND array_job IS NULL", (job,))
        else:
            rows = self._query("SELECT id FROM jobs WHERE array_job = ? AND array_index = ?", (job, index))
        return self.spec(rows[0]["id"]) if rows else None

    def set_reason(self, job_id: int, reason: str) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET reason = ? WHERE id = ?", (reason[:500], job_id))

    # ---- reading ------------------------------------------------------------------------
    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the job records {self.path}: {exc}") from None

    def _records(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            return [_record(r) for r in self._query(sql, args)]
        except (ValueError, TypeError) as exc:   # (a record damaged by hand)
            raise StoreError(f"a damaged record in {self.path}: {exc}") from None

    def get(self, job_id: int) -> dict[str, Any] | None:
        found = self._records("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return found[0] if found else None

    def jobs(self, states: Sequence[str] = (), name: str | None = None, user: str | None = None,
             since: float | None = None, ids: Sequence[int] = ()) -> list[dict[str, Any]]:
        where, args = [], []  # type: list[str], list[Any]
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args += states
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if since is not None:
            where.append("submitted >= ?")
            args.append(since)
        if ids:
            where.append(f"id IN ({', '.join('?' * len(ids))})")
            args += ids
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return self._records(sql, args)

    def spec(self, job_id: int) -> dict[str, Any] | None:
        """What a shepherd needs to run the job: its options, environment and umask too."""
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        row = rows[0]
        try:
            out = _record(row)
            out["options"] = [str(a) for a in json.loads(row["options"])]
            out["env"] = {str(k): str(v) for k, v in json.loads(row["env"]).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreError(f"a damaged record in {self.path}: {exc}") from None
        out["umask"] = int(row["umask"]) & 0o777
        out["pid"], out["pid_start"] = row["pid"], row["pid_start"]
        out["submit_dir"], out["config"] = row["submit_dir"], row["config"]
        out["handoff"], out["client_key"] = bool(row["handoff"]), row["client_key"]
        out["array_limit"] = row["array_limit"]
        out["contact"] = _contact(row["contact"])
        return out

    def served(self) -> list[tuple[int, int, str]]:
        """(job id, pid, pid start) of every unfinished batch job handed to a shepherd here."""
        return [(r["id"], r["pid"], r["pid_start"]) for r in self._query(
            "SELECT id, pid, pid_start FROM jobs WHERE batch = 1 AND pid IS NOT NULL AND pid_host = ? "
            "AND state IN (?, ?)", (socket.gethostname(), PENDING, RUNNING))]

    def waiting(self) -> list[dict[str, Any]]:
        """Batch jobs not yet handed to a shepherd nor queued by Slurm, oldest first, with
        their dependencies and array limits."""
        rows = self._query("SELECT id, depends, array_job, array_index, array_limit, reason, config, "
                           "launcher, handoff FROM jobs WHERE batch = 1 AND state = ? AND pid IS NULL "
                           "AND slurm_id = '' ORDER BY id", (PENDING,))
        try:
            return [{"id": r["id"], "depends": json.loads(r["depends"]), "array_job": r["array_job"],
                     "array_index": r["array_index"], "array_limit": r["array_limit"], "reason": r["reason"],
                     "config": r["config"], "launcher": r["launcher"], "handoff": bool(r["handoff"])}
                    for r in rows]
        except ValueError as exc:
            raise StoreError(f"a damaged record in {self.path}: {exc}") from None

    def members(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The jobs `ids` name: each job itself, and for an array's id all its tasks."""
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        return self._records(f"SELECT * FROM jobs WHERE id IN ({marks}) OR array_job IN ({marks}) "
                             "ORDER BY id", (*ids, *ids))

    def running_tasks(self, array_job: int) -> int:
        return int(self._query("SELECT COUNT(*) FROM jobs WHERE array_job = ? AND pid IS NOT NULL AND "
                               "state IN (?, ?)", (array_job, PENDING, RUNNING))[0][0])


def serving_dir(records_dir: Path, job_id: int) -> Path:
    return records_dir / "serving" / str(job_id)


def helper_main(usage: str, run: Callable[[Store, list[str]], int | None]) -> NoReturn:
    """The entry point of a helper the daemon starts (`python -m qrun.homenode.NAME ARGS`):
    `run` gets the records and the arguments, and returns the exit status, or None for
    arguments it does not take (then `usage` is said). Exits without the interpreter's
    teardown, once what the helper wrote is flushed."""
    try:
        code = run(Store(), sys.argv[1:])
    except StoreError as exc:
        sys.stderr.write(f"qrun: {exc}\n")
        code = USAGE_STATUS
    if code is None:
        sys.stderr.write(f"usage: {usage}\n")
        code = USAGE_STATUS
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def flock_held(path: Path) -> bool:
    """Whether some process holds a flock on `path` (the daemon's lock: a daemon runs),
    from /proc/locks: trying the lock would get in the way of a daemon starting."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            table = f.read()
    except OSError:
        return False
    # (by inode alone: /proc/locks names the superblock's device, which on btrfs is not st_dev)
    ino = f":{st.st_ino}"
    return any(line.split()[1:2] == ["FLOCK"] and any(w.endswith(ino) and w.count(":") == 2
                                                      for w in line.split())
               for line in table.splitlines())


def _statements(script: str) -> list[str]:
    """A script's statements, one by one (executescript would commit on its own)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current)
            current = ""
    return out


def _contact(text: str) -> dict[str, Any]:
    """A record's contact (a JSON object); {} for none, or for one damaged by hand (the
    job is then as unreachable as one that never had it)."""
    try:
        contact = json.loads(text) if text else {}
    except ValueError:
        return {}
    return contact if isinstance(contact, dict) else {}


def _record(row: sqlite3.Row) -> dict[str, Any]:
    out = {k: row[k] for k in FIELDS}
    out["argv"] = json.loads(out["argv"])
    out["batch"] = bool(out["batch"])
    out["requeue"] = bool(out["requeue"])
    out["depends"] = json.loads(row["depends"])
    out["label"] = label(out)
    return out


def label(j: dict[str, Any]) -> str:
    """How a job is named to the user: its id, or ARRAY_INDEX for an array's task (as Slurm)."""
    return f"{j['array_job']}_{j['array_index']}" if j["array_job"] is not None else str(j["id"])


_PATTERN = re.compile(r"%(.)")


def expand(pattern: str, j: dict[str, Any]) -> str:
    """An output file name from its pattern: %j the job id, %A an array's id, %a the
    task's index, %x the job's name, %u the user, %% a %; ValueError for any other."""
    values = {"j": str(j["id"]), "x": j["name"], "u": user_name(), "%": "%",
              "A": str(j["array_job"] if j["array_job"] is not None else j["id"]),
              "a": str(j["array_index"] if j["array_index"] is not None else 0)}

    def one(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise ValueError(f"unknown pattern %{m.group(1)} in {pattern!r} (known: %j %A %a %x %u %%)")
        return values[m.group(1)]
    return _PATTERN.sub(one, pattern)
