"""The job's home identity: pids, user and group ids, host name. The table's `answer`
names the identity fields each call reports."""

from __future__ import annotations

import errno
import os

from qrun.remote.job import Job
from qrun.remote.stop import Stop
from qrun.syscalls import structs
from qrun.syscalls.model import IdOut

MAX_GROUPS = 65536


def h_getpid(s: Stop, job: Job) -> None:
    s.skip(job.pids.home_pid(s.t.proc.tgid))


def h_gettid(s: Stop, job: Job) -> None:
    s.skip(job.pids.home_pid(s.tid))


def h_getppid(s: Stop, job: Job) -> None:
    parent = s.t.proc.parent
    if parent in job.table.procs:
        s.skip(job.pids.home_pid(parent))
    else:
        s.skip(int(job.identity["ppid"]) if s.t.proc.tgid == job.table.main_pid else 1)


def h_id(s: Stop, job: Job) -> None:
    s.skip(int(job.identity[s.sc.answer[0]]))


def h_put_ids(s: Stop, job: Job) -> None:
    """getresuid/getresgid: each IdOut argument gets its `answer` field."""
    lay = structs.layout(s.arch, "id")
    outs = [i for i, k in enumerate(s.sc.args) if isinstance(k, IdOut)]
    for i, name in zip(outs, s.sc.answer, strict=True):
        s.write(s.arg(i), lay.pack(value=int(job.identity[name])))
    s.skip(0)


def h_getgroups(s: Stop, job: Job) -> None:
    groups = [int(g) for g in job.identity["groups"]]
    size = s.sarg(0)
    if size == 0:
        s.skip(len(groups))
    elif size < len(groups):
        s.skip(-errno.EINVAL)
    else:
        lay = structs.layout(s.arch, "id")
        s.write(s.arg(1), b"".join(lay.pack(value=g) for g in groups))
        s.skip(len(groups))


def h_uname(s: Stop, job: Job) -> None:
    u = os.uname()
    values = {"sysname": u.sysname, "nodename": job.identity["nodename"], "release": u.release,
              "version": u.version, "machine": u.machine, "domainname": job.identity["domainname"]}
    lay = structs.layout(s.arch, "utsname")
    width = lay.size // len(lay.fields)  # each field a NUL-terminated char array
    raw = b"".join(os.fsencode(values[f])[:width - 1].ljust(width, b"\0") for f in lay.fields)
    s.write(s.arg(0), raw)
    s.skip(0)


def h_setid(s: Stop, job: Job) -> None:
    """The job keeps its home identity: changing to the ids it already has succeeds."""
    ids = {int(job.identity[name]) for name in s.sc.answer}
    wanted = [s.sarg(i) for i in range(len(s.sc.args))]
    s.skip(0 if all(w == -1 or w in ids for w in wanted) else -errno.EPERM)


def h_setfsid(s: Stop, job: Job) -> None:
    s.skip(int(job.identity[s.sc.answer[0]]))  # returns the old fs id, which stays


def h_setgroups(s: Stop, job: Job) -> None:
    n = s.sarg(0)
    if n < 0 or n > MAX_GROUPS:
        s.skip(-errno.EINVAL)
        return
    lay = structs.layout(s.arch, "id")
    raw = s.read(s.arg(1), lay.size * n) if n else b""
    got = [lay.unpack(raw[k * lay.size:(k + 1) * lay.size])["value"] for k in range(n)]
    # Only a privileged user may call it at all, even to keep the same list.
    same = sorted(got) == sorted(int(g) for g in job.identity["groups"])
    s.skip(0 if same and job.identity["euid"] == 0 else -errno.EPERM)
