"""The job's pid space: every job process has a home pid (held at home by a deputy process),
and the job sees only those. Translates between home and execution-host pids."""

from __future__ import annotations

import errno
import sys
import time

from qrun.remote.channel import Rpc, is_busy
from qrun.remote.procs import ProcessTable


class PidMap:
    def __init__(self, rpc: Rpc, table: ProcessTable, debug: bool = False) -> None:
        self.rpc = rpc
        self.table = table
        self.debug = debug
        self.home_of: dict[int, int] = {}    # remote tid -> home pid
        self.remote_of: dict[int, int] = {}  # home pid -> remote tid
        self.zombies: dict[int, int] = {}    # exited, not yet reaped: remote pid -> its home pid
        self.reaped_early: set[int] = set()  # reaped by a wait before we saw its exit

    def home_pid(self, remote: int) -> int:
        """The home pid of a job thread, made at home on first use."""
        if remote not in self.table.threads and remote in self.zombies:
            return self.zombies[remote]  # exited already (e.g. before its parent's fork returned)
        hp = self.home_of.get(remote)
        if hp is None:
            hp = self._deputy(remote)
            self.home_of[remote] = hp
            self.remote_of[hp] = remote
        return hp

    def _deputy(self, remote: int) -> int:
        name = _comm(remote)
        rep = self.rpc.call("deputy", [name], tid=remote)
        deadline = time.monotonic() + self.rpc.timeout
        while is_busy(rep) and time.monotonic() < deadline:
            # Home's fds are held by others for now. The new process exists already, so
            # the fork cannot be undone: wait here (heartbeats go on in the stdio thread).
            time.sleep(0.05)
            rep = self.rpc.call("deputy", [name], tid=remote)
        if self.debug:
            sys.stderr.write(f"[trace]   deputy for {remote} ({name}) = {rep['r']}\n")
        if rep["r"] <= 0:
            raise OSError(errno.EAGAIN, "no deputy")
        return int(rep["r"])

    def to_remote(self, pid: int) -> int | None:
        """A pid as the job names it (home) -> the execution host's, None if not ours."""
        if pid in self.remote_of:
            return self.remote_of[pid]
        if pid in self.table.threads:
            return pid  # already remote (e.g. a tid the kernel wrote into memory)
        return None

    def to_home(self, remote: int) -> int:
        if remote in self.table.threads or remote in self.home_of:
            return self.home_pid(remote)
        return remote

    def exited(self, pid: int, is_leader: bool, parent_known: bool, main: bool) -> None:
        """Thread `pid` is gone. A process stays a zombie until its parent reaps it, and
        its pid may be reused by a new child before that, so its home pid is kept apart
        for the wait that reaps it."""
        if not is_leader:
            self.retire(pid)  # threads are never waited for
        elif not parent_known or main or pid in self.reaped_early:
            self.reaped_early.discard(pid)
            self.retire(pid)
        else:
            hp = self.home_of.pop(pid, None)
            if hp is not None:
                self.zombies[pid] = hp  # (remote_of keeps it: the wait names it by hp)

    def reap(self, remote: int, keep: bool = False) -> int:
        """The home pid of a child a wait just returned (and reaped, unless `keep`)."""
        hp = self.zombies.get(remote)
        if hp is None:
            hp = self.home_pid(remote)
            if not keep:
                self._reaped(remote)
        elif not keep:
            del self.zombies[remote]
            if self.remote_of.get(hp) == remote:
                del self.remote_of[hp]
            self.rpc.pending_retire.append(hp)
        return hp

    def _reaped(self, pid: int) -> None:
        if pid in self.table.procs or pid in self.table.threads:
            self.reaped_early.add(pid)  # its exit event is still queued: retire it then
        else:
            self.retire(pid)

    def retire(self, remote: int) -> None:
        hp = self.home_of.pop(remote, None)
        if hp is not None:
            self.remote_of.pop(hp, None)
            self.rpc.pending_retire.append(hp)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()[:15]
    except OSError:
        return "job"
