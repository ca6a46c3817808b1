"""The job's virtual cwd: a home directory the execution host does not have, kept per
FsState (shared by CLONE_FS), and the umask that goes with it."""

from __future__ import annotations

import errno
import os

from qrun.remote.channel import GoLocal
from qrun.remote.fds import COPY, HOME
from qrun.remote.forwarding import run_local
from qrun.remote.job import Job, errno_of
from qrun.remote.resolver import Target
from qrun.remote.stop import Stop
from qrun.remote.tracee import Thread
from qrun.syscalls.abi import AT_FDCWD


def h_chdir(s: Stop, job: Job) -> None:
    tg = job.paths.resolve(s, AT_FDCWD, s.arg(0), False)
    if tg.home:
        try:
            _home_chdir(s, job, tg.wire_dirfd(), tg.wire_path() or b"")
            return
        except GoLocal as g:  # a home link into a tree this host serves
            tg = Target(False, None, g.path, fixup=g.path)
    run_local(s, [(0, tg)])
    new = tg.path

    def done(th: Thread, ret: int) -> None:
        if ret == 0 and new:
            th.fs.cwd = new
    s.then(done)


def _home_chdir(s: Stop, job: Job, handle: int | None, path: bytes | list[int]) -> None:
    rep = job.call(s.t, "chdir", [handle, path])
    if rep["e"]:
        s.skip(-errno_of(rep["e"]))
        return
    s.t.fs.cwd = os.fsdecode(rep["o"]["path"])
    s.skip(0)


def h_fchdir(s: Stop, job: Job) -> None:
    fd = s.sarg(0)
    kind, ref = job.fd_kind(s, 0)
    if kind == HOME:
        _home_chdir(s, job, ref, b"")
        return
    if kind == COPY:
        s.skip(-errno.ENOTDIR)
        return
    try:
        target = os.readlink(f"/proc/{s.tid}/fd/{fd}")
    except OSError:
        target = None

    def done(th: Thread, ret: int) -> None:
        if ret == 0 and target:
            th.fs.cwd = target
    s.then(done)


def h_getcwd(s: Stop, job: Job) -> None:
    data = os.fsencode(s.t.fs.cwd) + b"\0"
    if len(data) > s.arg(1):
        s.skip(-errno.ERANGE)
        return
    s.write(s.arg(0), data)
    s.skip(len(data))


def h_umask(s: Stop, job: Job) -> None:
    # Runs natively too, so the local umask (and its return value) stays in step.
    s.t.fs.umask = s.arg(0) & 0o777
