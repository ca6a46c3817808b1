"""The regular routes: a call whose path (BY_PATH) or fd (BY_FD) is home's is marshalled by
its argument kinds' codecs, executed at home, and its outputs written back; otherwise the
kernel runs it here (with relative paths made absolute where the virtual cwd needs it)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

from qrun.remote.fds import COPY, HOME, LOCAL
from qrun.remote.job import Job, errno_of
from qrun.remote.resolver import Target
from qrun.remote.stop import Stop
from qrun.syscalls.abi import AT_FDCWD
from qrun.syscalls.codecs import codec
from qrun.syscalls.model import DirFd, Path
from qrun.syscalls.paths import normalize


@dataclass
class Outgoing:
    """What marshalling needs besides the registers (see codecs.Outgoing)."""
    targets: dict[int, Target]
    handle: int | None = None

    def wire_path(self, i: int) -> bytes | list[int] | None:
        tg = self.targets.get(i)
        return tg.wire_path() if tg else None

    def wire_dirfd(self, i: int) -> int | None:
        tg = self.targets.get(i)
        return tg.wire_dirfd() if tg else None


def by_path(s: Stop, job: Job) -> None:
    targets = job.paths.targets(s)
    homes = {tg.home for _, tg in targets}
    if answer_link(s, targets):
        return
    if homes == {False} or not targets:
        run_local(s, targets)
    elif homes == {True}:
        wa, rep = forward(s, job, Outgoing(dict(targets)))
        if rep is not None and s.sc.updates_copies == "truncate":
            tg = targets[0][1]
            if tg.path and tg.handle is None:
                job.fds.mirror_truncate(normalize(tg.path), s.larg(1))
                job.live.cut_at_home(normalize(tg.path), s.larg(1))
    else:
        s.skip(-errno.EXDEV)  # one path at home, the other local


def by_fd(s: Stop, job: Job) -> None:
    kind, ref = job.fd_kind(s, 0)
    if kind == LOCAL or (kind == COPY and s.sc.copy_local):
        return  # a local fd, or the data path of a local copy: the kernel runs it
    assert isinstance(ref, int)
    if kind == COPY and s.sc.on_copy != "home" and _on_copy(s, job, ref):
        return
    wa, rep = forward(s, job, Outgoing({}, handle=ref))
    if rep is not None and kind == HOME:
        _update_copies(s, job, ref, wa, rep)


def _on_copy(s: Stop, job: Job, handle: int) -> bool:
    """An fd call on a local copy that is more than the kernel's or home's (model.ON_COPY);
    True if it is settled (the kernel runs it, or it was answered)."""
    if s.sc.on_copy == "cut":
        length = s.larg(1)
        s.then(lambda th, ret: job.live.truncated(handle, length) if ret == 0 else None)
        return True
    if s.sc.on_copy == "fill":
        job.live.fill_handle(handle, lambda off, size: job.fetch(s.t, handle, size, off))
        return True
    err = job.live.sync_handle(handle)  # "flush"
    if err:
        s.skip(-errno_of(err))
        return True
    return False  # and home makes it durable there


def _update_copies(s: Stop, job: Job, ref: int, wa: list[Any], rep: dict[str, Any]) -> None:
    """Keep this host's local copy of a home file in step with a change made through a
    placeholder (another process of the job may be reading the copy)."""
    home_path = job.fds.handle_path.get(ref)
    if s.sc.updates_copies == "ftruncate" and home_path is not None:
        job.fds.mirror_truncate(home_path, wa[1])


def answer_link(s: Stop, targets: list[tuple[int, Target]]) -> bool:
    """readlink of a /proc link whose home value we know (exe, cwd, fd of a home file)."""
    out = s.sc.path_out_args
    if not out:
        return False
    links = [tg.link for _, tg in targets if tg.link is not None]
    if not links:
        return False
    i, kind = out[0]
    size = s.larg(kind.size)
    if size <= 0:
        s.skip(-errno.EINVAL)
        return True
    data = os.fsencode(links[0])[:size]
    s.write(s.arg(i), data)
    s.skip(len(data))
    return True


def run_local(s: Stop, targets: list[tuple[int, Target]]) -> None:
    """Let the kernel run the call, with relative paths made absolute where needed."""
    fixes = [(i, tg.fixup) for i, tg in targets if tg.fixup]
    if not fixes:
        return
    scratch = s.scratch()
    args = s.args()
    for i, fix in fixes:
        args[i] = scratch.put_str(os.fsencode(fix))
        if i > 0 and isinstance(s.sc.args[i - 1], DirFd):
            args[i - 1] = AT_FDCWD & 0xFFFFFFFFFFFFFFFF
    scratch.commit()
    s.rewrite(s.regs.nr, args)


def go_local(s: Stop, index: int, path: str) -> None:
    """Run the call here after all, on the path home found it leads to."""
    paths = [i for i, k in enumerate(s.sc.args) if isinstance(k, Path)]
    i = index if index in paths else paths[0]
    run_local(s, [(i, Target(False, None, path, fixup=path))])


def marshal(s: Stop, out: Outgoing) -> list[Any]:
    """The wire arguments, one codec per argument kind."""
    return [codec(k).encode(k, i, s, out) for i, k in enumerate(s.sc.args)]


def forward(s: Stop, job: Job, out: Outgoing) -> tuple[list[Any], dict[str, Any] | None]:
    """Execute at home; returns the wire arguments and the reply (None on failure)."""
    wa = marshal(s, out)
    rep = job.call(s.t, s.sc.name, wa)
    if rep["e"]:
        s.skip(-errno_of(rep["e"]))
        if s.sc.cached:
            job.offer_to_loop(s, rep, -errno_of(rep["e"]))
        return wa, None
    for key, value in rep["o"].items():
        if not key.isdigit() or int(key) >= len(s.sc.args):
            continue  # extra facts for the stub itself
        i = int(key)
        codec(s.sc.args[i]).decode(s.sc.args[i], i, s, value)
    s.skip(rep["r"])
    if s.sc.cached:
        job.offer_to_loop(s, rep, rep["r"])
    return wa, rep
