"""Choosing the execution host (the load balancing of dsh and GNU Queue).

Every eligible host gets a score; the lowest wins:

    score = (reported load + virtual load) / (cpus x speed x memory)

`reported load` is the 1-minute load average the host's agent reports (or what it was
told to report); `virtual load` is 1.0 for each job this user dispatched there in the
last VIRTUAL_TTL seconds, fading linearly, so a burst of jobs spreads out before the
agents' load averages have had time to rise. Hosts whose agent does not answer within
the query timeout are not eligible, nor are hosts that fail a `--require`, are full
(their `max_jobs`), or are excluded by `-w`/`-x`.

Dispatches and running jobs are recorded in a small state file shared by all of one
user's qrun processes (under a lock), which is also how the cluster-wide cap on a
user's running jobs is counted.
"""

from __future__ import annotations

import fcntl
import json
import operator
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrun.homenode.config import ClusterConfig, ConfigError, HostConfig, env_seconds
from qrun.homenode.processes import alive, process_start
from qrun.homenode.userdirs import state_dir

# How long a dispatch counts as virtual load, by default ($QRUN_VIRTUAL_TTL, read when a
# Ledger is made; tests make it long so the formula's outcome does not depend on how fast
# the machine runs them).
VIRTUAL_TTL = 20.0
VIRTUAL_JOB = 1.0


def virtual_ttl() -> float:
    """$QRUN_VIRTUAL_TTL, else VIRTUAL_TTL; 0 turns virtual load off. A value that is not a
    number of seconds >= 0 is a ConfigError (a usage error, not a traceback)."""
    return env_seconds("QRUN_VIRTUAL_TTL", VIRTUAL_TTL, zero_ok=True)

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
        "==": operator.eq, "=": operator.eq, "!=": operator.ne}
_REQ = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(>=|<=|==|!=|=|>|<)\s*([-+]?\d+(?:\.\d+)?)\s*$")


class PlacementError(Exception):
    pass


@dataclass
class Requirement:
    key: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Requirement:
        m = _REQ.match(text)
        if not m:
            raise PlacementError(f"--require {text!r}: expected NAME OP NUMBER, e.g. scratch_gb>=100")
        return cls(m.group(1), m.group(2), float(m.group(3)))

    def ok(self, resources: dict[str, float]) -> bool:
        return self.key in resources and _OPS[self.op](resources[self.key], self.value)


@dataclass
class HostView:
    """One line of `qrun hosts`: what we know of a host right now."""
    config: HostConfig
    load: float | None = None      # None: its agent did not answer
    cpus: int = 0
    mem_total: int = 0
    mem_avail: int = 0
    virtual: float = 0.0
    running: int = 0               # this user's qrun jobs there
    why_not: str = ""              # why it is not eligible, if it is not

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def state(self) -> str:
        return "up" if self.load is not None else "silent"

    @property
    def score(self) -> float:
        if self.load is None or self.cpus <= 0:
            return float("inf")
        return (self.load + self.virtual) / (self.cpus * self.config.speed * self.config.memory)

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {"host": c.name, "state": self.state, "load": self.load, "cpus": self.cpus,
                "mem_total": self.mem_total, "mem_avail": self.mem_avail,
                "virtual_load": round(self.virtual, 3), "score": None if self.load is None else
                round(self.score, 4), "speed": c.speed, "memory": c.memory, "launcher": c.launcher,
                "running": self.running, "max_jobs": c.max_jobs, "resources": c.resources,
                "eligible": not self.why_not, "why_not": self.why_not}


def choose(views: list[HostView], requirements: list[Requirement]) -> HostView:
    for v in views:
        if v.load is None:
            v.why_not = "agent silent"
        elif any(not r.ok(v.config.resources) for r in requirements):
            v.why_not = "requirement not met"
        elif v.config.max_jobs and v.running >= v.config.max_jobs:
            v.why_not = f"full ({v.running}/{v.config.max_jobs} jobs)"
        elif v.config.max_load and v.load >= v.config.max_load:
            v.why_not = f"busy (load {v.load:.2f} >= max_load {v.config.max_load:g})"
    eligible = [v for v in views if not v.why_not]
    if not eligible:
        reasons = ", ".join(f"{v.name}: {v.why_not}" for v in views) or "no hosts"
        raise PlacementError(f"no eligible host ({reasons})")
    return min(eligible, key=lambda v: (v.score, v.running, v.name))


# ---- shared state: recent dispatches and running jobs ----------------------------------

def state_path() -> Path:
    return state_dir() / "placement.json"


@dataclass
class Ledger:
    path: Path = field(default_factory=state_path)
    ttl: float = field(default_factory=virtual_ttl)

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_suffix(".lock"), "w")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ConfigError(f"cannot use the state file {self.path} ($XDG_STATE_HOME): "
                              f"{exc.strerror}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = _sane(self.path, time.time(), self.ttl)
            yield data
            tmp = self.path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(data))
                os.replace(tmp, self.path)
            except OSError as exc:
                raise ConfigError(f"cannot write the state file {self.path}: {exc.strerror}") from None

    def annotate(self, views: list[HostView]) -> None:
        with self._locked() as data:
            now = time.time()
            for v in views:
                v.virtual = sum(VIRTUAL_JOB * (1 - (now - t) / self.ttl)
                                for host, t in data["dispatches"] if host == v.name)
                v.running = sum(1 for r in data["running"].values() if r["host"] == v.name)


    def claim(self, host: str, cap: int) -> bool:
        """Record a dispatch to `host` and this process as running there, unless the
        user's cluster-wide cap is reached."""
        with self._locked() as data:
            if cap and len(data["running"]) >= cap:
                return False
            data["dispatches"].append([host, time.time()])
            data["running"][str(os.getpid())] = {"host": host, "start": process_start(os.getpid())}
            return True

    def release(self) -> None:
        with self._locked() as data:
            data["running"].pop(str(os.getpid()), None)


def _sane(path: Path, now: float, ttl: float) -> dict[str, Any]:
    """The state file's content, without what has expired and without anything malformed
    (a file damaged by hand or by a full disk must not stop every later job)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    dispatches = data.get("dispatches")
    running = data.get("running")
    dispatches = [d for d in dispatches if isinstance(d, list) and len(d) == 2 and isinstance(d[0], str)
                  and isinstance(d[1], int | float)] if isinstance(dispatches, list) else []
    running = {pid: r for pid, r in running.items() if pid.isdigit() and isinstance(r, dict)
               and isinstance(r.get("host"), str)} if isinstance(running, dict) else {}
    data["dispatches"] = [d for d in dispatches if now - d[1] < ttl]
    data["running"] = {pid: r for pid, r in running.items() if _alive(int(pid), r)}
    return data


def _alive(pid: int, record: dict[str, Any]) -> bool:
    """Still running, and the same process (pids are reused)."""
    return alive(pid, str(record.get("start", "")))


def views_for(cfg: ClusterConfig, names: list[str]) -> list[HostView]:
    unknown = [n for n in names if n not in cfg.hosts]
    if unknown:
        raise PlacementError(f"unknown host{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    return [HostView(cfg.hosts[n]) for n in names]
