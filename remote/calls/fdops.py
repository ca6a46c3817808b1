"""Calls on fds that need more than forwarding: close (handles are released when no job
process holds them, live files written back), msync, fcntl and flock (locks wait in the
job), ioctl on terminals."""

from __future__ import annotations

import errno

from qrun.remote.calls.waiting import done_waiting, park
from qrun.remote.fds import COPY, HOME, LOCAL
from qrun.remote.job import Job, errno_of
from qrun.remote.stop import Stop
from qrun.remote.tracee import Thread, set_ret
from qrun.syscalls import abi, structs
from qrun.syscalls import flags as wflags
from qrun.syscalls.model import Fd

LOCK_CMDS = (abi.F_GETLK, abi.F_SETLK, abi.F_SETLKW, abi.F_OFD_GETLK, abi.F_OFD_SETLK, abi.F_OFD_SETLKW)
WAITING_LOCKS = (abi.F_SETLKW, abi.F_OFD_SETLKW)
FD_TABLE_CMDS = (abi.F_DUPFD, abi.F_GETFD, abi.F_SETFD, abi.F_DUPFD_CLOEXEC)
# At home one process holds every job process's fds, so classic (per-process) locks would
# never conflict: open-file-description locks are taken instead, and a lock that must wait
# is tried without waiting and waited for in the job (see waiting.park).
HOME_LOCK_CMD = {abi.F_GETLK: abi.F_OFD_GETLK, abi.F_SETLK: abi.F_OFD_SETLK,
                 abi.F_SETLKW: abi.F_OFD_SETLK, abi.F_OFD_SETLKW: abi.F_OFD_SETLK}


def h_close(s: Stop, job: Job) -> None:
    kind, ref = job.fd_kind(s, 0)
    if kind in (HOME, COPY):
        def closed(th: Thread, ret: int, h: int = int(ref or 0)) -> None:
            # Close-to-open: what the job wrote is at home when close returns, and close
            # returns home's error (ENOSPC, EDQUOT, EIO), as on NFS. The fd is gone anyway.
            err = job.live.sync_handle(h) if kind == COPY else None
            job.handles.sweep(only=h)
            if err and ret == 0:
                set_ret(th.tid, -errno_of(err))
        s.then(closed)


def h_msync(s: Stop, job: Job) -> None:
    """After the kernel's msync, the live files the calling process maps go home."""
    def synced(th: Thread, ret: int) -> None:
        failed = job.live.sync_mapped_by(th.proc.tgid) if ret == 0 else []
        if failed:
            set_ret(th.tid, -errno_of(failed[0]))
    s.then(synced)


def h_close_range(s: Stop, job: Job) -> None:
    s.then(lambda th, ret: job.handles.sweep())


def h_fcntl(s: Stop, job: Job) -> None:
    kind, ref = job.fd_kind(s, 0)
    cmd = s.sarg(1)
    if kind == LOCAL or (kind == COPY and cmd not in LOCK_CMDS) or cmd in FD_TABLE_CMDS:
        return  # a local fd, a copy's own flags, or the fd table: the kernel's
    if cmd in (abi.F_GETFL, abi.F_SETFL):
        _file_flags(s, job, ref, cmd)
    elif cmd in LOCK_CMDS:
        _record_lock(s, job, ref, cmd)
    else:
        s.skip(-errno.EINVAL)


def _file_flags(s: Stop, job: Job, ref: int | None, cmd: int) -> None:
    # (ref is a placeholder's handle, never kept: copies' flags change here, locally)
    arg = wflags.open_to_wire(s.arch, s.arg(2) & 0xFFFFFFFF)
    rep = job.call(s.t, "fcntl", [ref, cmd, arg])
    if rep["e"]:
        s.skip(-errno_of(rep["e"]))
        return
    r = rep["r"]
    s.skip(wflags.open_from_wire(s.arch, r) if cmd == abi.F_GETFL else r)


def _record_lock(s: Stop, job: Job, ref: int | None, cmd: int) -> None:
    lay = structs.layout(s.arch, "flock")
    lock = bytearray(s.read(s.arg(2), lay.size))
    if lay.unpack(bytes(lock))["type"] == abi.F_UNLCK and ref is not None:
        job.live.write_back(ref)  # the next holder sees what was written under the lock
    lock[lay.offset("pid"):lay.offset("pid") + 4] = b"\0" * 4  # OFD locks want l_pid 0
    job.handles.locking(ref)
    rep = job.call(s.t, "fcntl_lock", [ref, HOME_LOCK_CMD.get(cmd, cmd), bytes(lock)])
    if rep["e"] in ("EAGAIN", "EACCES") and cmd in WAITING_LOCKS:
        park(s)
        return
    done_waiting(s)
    if rep["e"]:
        s.skip(-errno_of(rep["e"]))
        return
    if cmd in (abi.F_GETLK, abi.F_OFD_GETLK):
        s.write(s.arg(2), rep["o"]["2"])
    s.skip(rep["r"])


def h_flock(s: Stop, job: Job) -> None:
    kind, ref = job.fd_kind(s, 0)
    if kind == LOCAL:
        return
    op = s.sarg(1)
    if op & abi.LOCK_UN and ref is not None:
        job.live.write_back(ref)  # (as NFS flushes at unlock)
    job.handles.locking(ref)
    rep = job.call(s.t, "flock", [ref, op | abi.LOCK_NB])
    if rep["e"] == "EAGAIN" and not op & abi.LOCK_NB:
        park(s)
        return
    done_waiting(s)
    s.skip(-errno_of(rep["e"]) if rep["e"] else rep["r"])


def h_ioctl(s: Stop, job: Job) -> None:
    kind, _ = job.fd_kind(s, 0)
    if kind == HOME:
        s.skip(-errno.ENOTTY)  # home placeholders are files and directories
        return
    cmd, arg = s.arg(1) & 0xFFFFFFFF, s.arg(2)
    pid = structs.layout(s.arch, "pid")
    if cmd == abi.TIOCSPGRP:  # a shell giving the terminal to a job: it names a home pgid
        remote = job.pids.to_remote(pid.unpack(s.read(arg, pid.size))["value"])
        if remote is not None:
            scratch = s.scratch()
            args = s.args()
            args[2] = scratch.put(pid.pack(value=remote))
            scratch.commit()
            s.rewrite(s.regs.nr, args)
    elif cmd in (abi.TIOCGPGRP, abi.TIOCGSID):
        def got(th: Thread, ret: int) -> None:
            if ret == 0:
                remote = pid.unpack(s.read(arg, pid.size))["value"]
                s.write(arg, pid.pack(value=job.pids.to_home(remote)))
        s.then(got)


def h_no_home_fd(s: Stop, job: Job) -> None:
    """Calls that move data between two fds in the kernel: with a home fd they fail with
    the table's errno, so callers fall back to read and write."""
    for i, k in enumerate(s.sc.args):
        if isinstance(k, Fd) and job.fd_kind(s, i)[0] == HOME:
            s.skip(-errno_of(s.sc.errno))
            return
