"""Where a path the job names leads: home (and relative to which home handle), or here.

Paths are sent home as the job wrote them (only made absolute), so trailing slashes and
"." keep their kernel meaning; the lexically normalized form decides only the route.
/proc and /dev/fd paths are rewritten so the job sees its home pids and home files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from qrun.remote import procpaths
from qrun.remote.fds import COPY, HOME, LOCAL, FdSpace
from qrun.remote.pids import PidMap
from qrun.remote.procs import ProcessTable
from qrun.remote.stop import Stop
from qrun.remote.tracee import Thread
from qrun.syscalls.abi import AT_EMPTY_PATH, AT_FDCWD
from qrun.syscalls.model import DirFd, Path, Syscall
from qrun.syscalls.paths import PathPolicy, normalize


@dataclass
class Target:
    """Where one (dirfd, path) pair resolves."""
    home: bool
    handle: int | None = None      # home dir handle the path is relative to
    path: str | None = None        # absolute path, or relative to `handle`
    fixup: str | None = None       # local: absolute path to use instead of the one given
    names_fd: bool = False         # the path names `handle`'s file itself (/proc/self/fd/N)
    link: str | None = None        # a /proc link whose home value we know (readlink answers it)

    def wire_path(self) -> bytes | list[int] | None:
        """The path as the home node receives it: [handle] names the handle's own file, as
        /proc/self/fd/N would at home."""
        if self.names_fd:
            return [self.handle or 0]
        return None if self.path is None else os.fsencode(self.path)

    def wire_dirfd(self) -> int | None:
        return None if self.names_fd else self.handle


class Resolver:
    def __init__(self, fds: FdSpace, policy: PathPolicy, pids: PidMap, table: ProcessTable) -> None:
        self.fds = fds
        self.policy = policy
        self.pids = pids
        self.table = table

    def targets(self, s: Stop) -> list[tuple[int, Target]]:
        """(index of the Path argument, its resolution) for every path the call names."""
        sc = s.sc
        empty_ok = any(s.arg(i) & AT_EMPTY_PATH for i in sc.at_flags_args)
        out = []
        for i, k in sc.path_args:
            if s.arg(i) == 0 and not k.null_is_fd:
                out.append((i, Target(False)))
                continue
            out.append((i, self.resolve(s, dirfd_of(s, i), s.arg(i), empty_ok, k.follow)))
        return out

    def resolve(self, s: Stop, dirfd: int, addr: int, empty_ok: bool, follow: bool = True) -> Target:
        if addr == 0:
            return self._by_dirfd(s.t, dirfd, None)  # NULL: the fd itself (futimens)
        raw = s.cstr(addr)
        if raw == b"":
            return self._by_dirfd(s.t, dirfd, "") if empty_ok else Target(False)
        path = os.fsdecode(raw)
        if path.startswith("/"):
            return self.resolve_abs(s.t, path, follow, s.known_home(addr))
        if dirfd == AT_FDCWD:
            joined = s.t.fs.cwd.rstrip("/") + "/" + path
            tg = self.resolve_abs(s.t, joined, follow)
            if not tg.home and not tg.fixup and not tg.link and self.policy.routes_home(s.t.fs.cwd):
                tg.fixup = joined  # the real cwd is an empty local dir; the virtual one is home's
            return tg
        kind, ref = self.fds.kind(s.tid, dirfd)
        if kind == HOME:
            assert isinstance(ref, int)
            return Target(True, ref, path)
        return Target(False)  # a local dir fd; or a copy, where the kernel says ENOTDIR

    def resolve_abs(self, t: Thread, path: str, follow: bool = True, known_home: bool = False) -> Target:
        """`known_home`: the C loop found the path does not route local; a plainly written
        path outside /proc and /dev then routes home, without asking the policy again."""
        p = normalize(path)
        if known_home and p == path and not p.startswith(("/proc/", "/dev/")):
            return Target(True, None, path)
        pp = procpaths.parse(p, follow) if p.startswith(("/proc/", "/dev/")) else None
        if pp is not None:
            tg = self._proc_target(t, pp, follow)
            if tg is not None:
                if tg.fixup == p:
                    tg.fixup = None  # already what the kernel would resolve
                return tg
        return Target(self.policy.routes_home(p), None, path)

    def _proc_target(self, t: Thread, pp: procpaths.ProcPath, follow: bool) -> Target | None:
        """/proc as the job must see it: its own pids are home pids, fds of home files
        name those files, and exe/cwd/fd links read back as home paths."""
        if pp.who == "self":
            remote, tid = t.proc.tgid, pp.task
        elif pp.who == "thread-self":
            remote, tid = t.proc.tgid, t.tid
        else:
            found = self.pids.to_remote(int(pp.who))
            if found is None:
                return None  # not a job process: the host's own /proc entry
            remote, tid = found, pp.task
        if tid is not None:
            tid = self.pids.to_remote(tid) or tid
        owner = self.table.threads.get(tid or remote)
        kind, ref = self.fds.kind(tid or remote, pp.fd) if pp.fd is not None else (LOCAL, None)
        if follow and kind in (HOME, COPY):
            return Target(True, ref, None, names_fd=True)
        local = f"/proc/{remote}" + (f"/task/{tid}" if tid else "") + pp.rest
        link = None if follow else self._home_link(pp, owner, kind, ref)
        return Target(False, None, local, fixup=local, link=link)

    def _home_link(self, pp: procpaths.ProcPath, owner: Thread | None, kind: str,
                   ref: int | None) -> str | None:
        """What readlink of a /proc link gives at home, where we know it."""
        if owner is None:
            return None
        if pp.rest == "" and pp.who in ("self", "thread-self"):
            hp = str(self.pids.home_pid(owner.proc.tgid))
            return hp if pp.who == "self" else f"{hp}/task/{self.pids.home_pid(owner.tid)}"
        if pp.rest == "/exe":
            return owner.proc.exe
        if pp.rest == "/cwd" and self.policy.routes_home(owner.fs.cwd):
            return owner.fs.cwd
        if kind in (HOME, COPY) and ref is not None:
            return self.fds.handle_path.get(ref)
        return None

    def _by_dirfd(self, t: Thread, dirfd: int, path: str | None) -> Target:
        if dirfd == AT_FDCWD:
            if path is None:
                return Target(False)
            return Target(self.policy.routes_home(t.fs.cwd), None, t.fs.cwd)
        kind, ref = self.fds.kind(t.tid, dirfd)
        if kind in (HOME, COPY):
            assert isinstance(ref, int)
            return Target(True, ref, path)
        return Target(False)


def dirfd_of(s: Stop, path_index: int) -> int:
    """The directory a Path argument is relative to: the DirFd before it, else the cwd."""
    sc: Syscall = s.sc
    if path_index > 0 and isinstance(sc.args[path_index - 1], DirFd):
        return s.sarg(path_index - 1)
    return AT_FDCWD


def path_index(sc: Syscall) -> int:
    """The index of the call's first Path argument."""
    return next(i for i, k in enumerate(sc.args) if isinstance(k, Path))
