"""Processes and signals: every job process has a home pid, which is what the job sees;
pid arguments are translated to the execution host's, and results back."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable

from qrun.remote.job import Job, errno_of
from qrun.remote.stop import Stop
from qrun.remote.tracee import Thread, set_ret
from qrun.syscalls import abi, structs
from qrun.syscalls.model import Pid

# ---- fork and clone -------------------------------------------------------------------


def h_fork(s: Stop, job: Job) -> None:
    _follow_fork(s, job, 0)


def h_vfork(s: Stop, job: Job) -> None:
    _follow_fork(s, job, abi.CLONE_VM | abi.CLONE_VFORK)


def h_clone(s: Stop, job: Job) -> None:
    _follow_fork(s, job, s.arg(0))


def h_clone3(s: Stop, job: Job) -> None:
    lay = structs.layout(s.arch, "clone_args")
    at = lay.offset("flags")
    _follow_fork(s, job, int.from_bytes(s.read(s.arg(0) + at, 8), "little"))


def _follow_fork(s: Stop, job: Job, clone_flags: int) -> None:
    s.t.clone_flags = clone_flags

    def forked(th: Thread, ret: int) -> None:
        job.handles.fork_done(th.tid)
        if ret <= 0:
            return
        try:
            set_ret(th.tid, job.pids.home_pid(ret))
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise
            _no_home_pid(job, th, ret)
    job.table.forking.add(s.tid)
    s.then(forked)


def _no_home_pid(job: Job, th: Thread, child: int) -> None:
    if th.clone_flags & abi.CLONE_THREAD:
        # A thread cannot be taken back alone: it keeps its local tid.
        job.warn_once("deputy", "the home node could not make a home pid for a "
                                "new thread; it keeps its execution-host tid")
        return
    # No home pid for it (home is out of processes): the fork fails as the kernel's
    # would, and the child it made goes.
    os.kill(child, signal.SIGKILL)
    set_ret(th.tid, -errno.EAGAIN)


# ---- waiting for children -------------------------------------------------------------


def h_wait4(s: Stop, job: Job) -> None:
    translate(s, job, group_neg=True)

    def waited(th: Thread, ret: int) -> None:
        if ret > 0:
            set_ret(th.tid, job.pids.reap(ret))
    s.then(waited)


def h_waitid(s: Stop, job: Job) -> None:
    if s.sarg(0) in (abi.P_PID, abi.P_PGID):
        translate(s, job)
    infop = s.arg(2)
    keeps_child = bool(s.arg(3) & abi.WNOWAIT)
    pid = structs.layout(s.arch, "siginfo").offset("pid")

    def waited(th: Thread, ret: int) -> None:
        if ret == 0 and infop:
            got = int.from_bytes(s.read(infop + pid, 4), "little", signed=True)
            if got > 0:
                home = job.pids.reap(got, keeps_child)
                s.write(infop + pid, home.to_bytes(4, "little", signed=True))
    s.then(waited)


# ---- signals and process groups -------------------------------------------------------


def translate(s: Stop, job: Job, group_neg: bool = False) -> bool:
    """Rewrite the call's Pid arguments from home to remote pids. With `group_neg`, a
    negative first pid names a process group (kill, wait4). False if some pid is not a job
    process."""
    args = s.args()
    changed, ours = False, True
    for i, k in enumerate(s.sc.args):
        if not isinstance(k, Pid):
            continue
        v = s.sarg(i)
        if v > 0 or (group_neg and v < -1):
            r = job.pids.to_remote(abs(v))
            if r is None:
                ours = False
                continue
            args[i] = (r if v > 0 else -r) & 0xFFFFFFFFFFFFFFFF
            changed = True
    if changed:
        s.rewrite(s.regs.nr, args)
    return ours


def h_pids(s: Stop, job: Job) -> None:
    """Calls whose only business with qrun is their Pid arguments (tgkill, setpgid, ...):
    a pid outside the job fails with the table's errno (ESRCH unless it says otherwise)."""
    if not translate(s, job):
        s.skip(-errno_of(s.sc.errno or "ESRCH"))


def h_kill(s: Stop, job: Job) -> None:
    pid = s.sarg(0)
    if pid == -1:
        job.warn_once("kill-1", "kill(-1, ...) is refused under qrun: EPERM")
        s.skip(-errno.EPERM)
        return
    if pid == 0 or translate(s, job, group_neg=True):
        return
    # Not a job process: it lives at home, where the job's pids belong.
    rep = job.call(s.t, "kill", [pid, s.sarg(1)])
    s.skip(-errno_of(rep["e"]) if rep["e"] else 0)


def h_getpgid(s: Stop, job: Job) -> None:
    """getpgid and getpgrp (no argument: the caller's own): asked of the local kernel,
    answered as home pids."""
    _group_of(s, job, os.getpgid)


def h_getsid(s: Stop, job: Job) -> None:
    _group_of(s, job, os.getsid)


def _group_of(s: Stop, job: Job, lookup: Callable[[int], int]) -> None:
    pid = s.sarg(0) if s.sc.args else 0
    target = s.t.proc.tgid if pid == 0 else job.pids.to_remote(pid)
    if target is None:
        s.skip(-errno.ESRCH)
        return
    try:
        s.skip(job.pids.to_home(lookup(target)))
    except OSError as e:
        s.skip(-(e.errno or errno.ESRCH))


def h_setsid(s: Stop, job: Job) -> None:
    # Runs natively; its result (the new session id, the caller's pid) is a home pid.
    s.then(lambda th, ret: set_ret(th.tid, job.pids.to_home(ret)) if ret > 0 else None)


def h_set_tid_address(s: Stop, job: Job) -> None:
    s.then(lambda th, ret: set_ret(th.tid, job.pids.home_pid(th.tid)) if ret > 0 else None)
