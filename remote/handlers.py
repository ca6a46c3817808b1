"""What the tracer does at a seccomp stop, per route of the syscall table.

Regular calls (BY_PATH, BY_FD) go through one generic marshaller driven by their argument
kinds; the irregular ones (`h_<handler>` methods) have code of their own.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qrun.remote import procpaths
from qrun.remote.channel import GoLocal, HomeBusy
from qrun.remote.fds import COPY, HOME, LOCAL, Validator
from qrun.remote.tracee import (
    CLONE_THREAD,
    CLONE_VFORK,
    CLONE_VM,
    Memory,
    Regs,
    Scratch,
    Thread,
    restart,
    s32,
    s64,
    rewrite,
    set_ret,
    signal_pending,
    skip,
)
from qrun.syscalls import flags as wflags
from qrun.syscalls import structs
from qrun.syscalls.model import (
    BufIn,
    BufOut,
    DirFd,
    Fd,
    Flags,
    Int,
    IovIn,
    IovOut,
    Path,
    PathOut,
    Pid,
    Str,
    StructIn,
    StructOut,
    Syscall,
)
from qrun.syscalls.paths import normalize
from qrun.syscalls.table import BY_NAME

if TYPE_CHECKING:
    from qrun.remote.channel import Rpc
    from qrun.remote.fds import FdSpace
    from qrun.remote.tracee import Proc
    from qrun.syscalls.paths import PathPolicy

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
O_ACCMODE = 0o3
O_CREAT, O_EXCL, O_TRUNC = 0o100, 0o200, 0o1000
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
MAX_IO = 8 << 20           # larger reads/writes on home fds are short, as POSIX allows
FETCH_CHUNK = 8 << 20
F_GETFL, F_SETFL, F_GETLK, F_SETLK, F_SETLKW = 3, 4, 5, 6, 7
F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 36, 37, 38
LOCK_CMDS = (F_GETLK, F_SETLK, F_SETLKW, F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW)
WNOWAIT = 0x01000000
LOCK_NB = 4
TIOCGPGRP, TIOCSPGRP, TIOCGSID = 0x540F, 0x5410, 0x5429  # the same on x86_64 and aarch64
PARK_FIRST, PARK_MAX = 0.001, 0.05   # seconds between a waiting call's tries at home
NR_OPENAT = {"x86_64": 257, "aarch64": 56}
NR_NANOSLEEP = {arch: BY_NAME["nanosleep"].number(arch) or -1 for arch in ("x86_64", "aarch64")}
NR_EXECVE = {"x86_64": 59, "aarch64": 221}


def _errno_of(name: str | None) -> int:
    value = getattr(errno, name or "", None)
    return value if isinstance(value, int) else errno.EIO


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


class Handlers:
    """Mixed into the Tracer, which provides the state and process bookkeeping below."""

    mem = Memory()
    rpc: Rpc
    fds: FdSpace
    policy: PathPolicy
    identity: dict[str, Any]
    arch: str
    threads: dict[int, Thread]
    procs: dict[int, Proc]
    remote_of: dict[int, int]
    home_of: dict[int, int]
    open_handles: set[int]
    pending_handles: set[int]
    reaped_early: set[int]
    forking: set[int]
    main_pid: int

    def home_pid(self, remote: int) -> int:
        raise NotImplementedError

    def retire(self, remote: int) -> None:
        raise NotImplementedError

    def sweep_handles(self, only: int | None = None) -> None:
        raise NotImplementedError

    def fork_done(self, tid: int) -> None:
        raise NotImplementedError

    def reap(self, remote: int, keep: bool = False) -> int:
        raise NotImplementedError

    def warn_once(self, key: str, msg: str) -> None:
        raise NotImplementedError

    # ---- path resolution ----------------------------------------------------------------
    def resolve(self, t: Thread, dirfd: int, addr: int, empty_ok: bool, follow: bool = True) -> Target:
        """Where a (dirfd, path) pair leads. Paths are sent home as the job wrote them (only
        made absolute), so trailing slashes and "." keep their kernel meaning; the lexically
        normalized form decides only the route."""
        if addr == 0:
            return self._by_dirfd(t, dirfd, None)  # NULL: the fd itself (futimens)
        raw = self.mem.cstr(t.tid, addr)
        if raw == b"":
            return self._by_dirfd(t, dirfd, "") if empty_ok else Target(False)
        path = os.fsdecode(raw)
        if path.startswith("/"):
            return self.resolve_abs(t, path, follow)
        if dirfd == AT_FDCWD:
            joined = t.fs.cwd.rstrip("/") + "/" + path
            tg = self.resolve_abs(t, joined, follow)
            if not tg.home and not tg.fixup and not tg.link and self.policy.routes_home(t.fs.cwd):
                tg.fixup = joined  # the real cwd is an empty local dir; the virtual one is home's
            return tg
        kind, ref = self.fds.kind(t.tid, dirfd)
        if kind == HOME:
            assert isinstance(ref, int)
            return Target(True, ref, path)
        return Target(False)  # a local dir fd; or a copy, where the kernel says ENOTDIR

    def resolve_abs(self, t: Thread, path: str, follow: bool = True) -> Target:
        p = normalize(path)
        pp = procpaths.parse(p, follow) if p.startswith(("/proc/", "/dev/")) else None
        if pp is not None:
            tg = self.proc_target(t, pp, follow)
            if tg is not None:
                if tg.fixup == p:
                    tg.fixup = None  # already what the kernel would resolve
                return tg
        return Target(self.policy.routes_home(p), None, path)

    def proc_target(self, t: Thread, pp: procpaths.ProcPath, follow: bool) -> Target | None:
        """/proc as the job must see it: its own pids are home pids, fds of home files
        name those files, and exe/cwd/fd links read back as home paths."""
        if pp.who == "self":
            remote, tid = t.proc.tgid, pp.task
        elif pp.who == "thread-self":
            remote, tid = t.proc.tgid, t.tid
        else:
            found = self.to_remote(int(pp.who))
            if found is None:
                return None  # not a job process: the host's own /proc entry
            remote, tid = found, pp.task
        if tid is not None:
            tid = self.to_remote(tid) or tid
        owner = self.threads.get(tid or remote)
        fd = pp.fd
        kind, ref = self.fds.kind(tid or remote, fd) if fd is not None else (LOCAL, None)
        if follow and kind in (HOME, COPY):
            return Target(True, ref, None, names_fd=True)
        local = f"/proc/{remote}" + (f"/task/{tid}" if tid else "") + pp.rest
        link = None
        if not follow:
            link = self.home_link(pp, owner, kind, ref)
        return Target(False, None, local, fixup=local, link=link)

    def home_link(self, pp: procpaths.ProcPath, owner: Thread | None, kind: str,
                  ref: int | None) -> str | None:
        """What readlink of a /proc link gives at home, where we know it."""
        if owner is None:
            return None
        if pp.rest == "" and pp.who in ("self", "thread-self"):
            hp = str(self.home_pid(owner.proc.tgid))
            return hp if pp.who == "self" else f"{hp}/task/{self.home_pid(owner.tid)}"
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

    def targets(self, t: Thread, regs: Regs, sc: Syscall) -> list[tuple[int, Target]]:
        """(index of the Path argument, its resolution) for every path the call names."""
        empty_ok = False
        for i, k in enumerate(sc.args):
            if isinstance(k, Flags) and k.family == "at":
                empty_ok = bool(regs.arg(i) & AT_EMPTY_PATH)
        out = []
        for i, k in enumerate(sc.args):
            if isinstance(k, Path):
                has_dirfd = i > 0 and isinstance(sc.args[i - 1], DirFd)
                dirfd = s32(regs.arg(i - 1)) if has_dirfd else AT_FDCWD
                if regs.arg(i) == 0 and not k.null_is_fd:
                    out.append((i, Target(False)))
                    continue
                out.append((i, self.resolve(t, dirfd, regs.arg(i), empty_ok, k.follow)))
        return out

    def run_local(self, t: Thread, regs: Regs, sc: Syscall,
                  targets: list[tuple[int, Target]]) -> None:
        """Let the kernel run the call, with relative paths made absolute where needed."""
        fixes = [(i, tg.fixup) for i, tg in targets if tg.fixup]
        if not fixes:
            return
        scratch = Scratch(t.tid, regs.sp, self.mem)
        args = regs.args()
        for i, fix in fixes:
            args[i] = scratch.put_str(os.fsencode(fix))
            if i > 0 and isinstance(sc.args[i - 1], DirFd):
                args[i - 1] = AT_FDCWD & 0xFFFFFFFFFFFFFFFF
        scratch.commit()
        rewrite(t, regs, regs.nr, args)

    # ---- regular routes ----------------------------------------------------------------
    def by_path(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        targets = self.targets(t, regs, sc)
        homes = {tg.home for _, tg in targets}
        if self.answer_link(t, regs, sc, targets):
            return
        if homes == {False} or not targets:
            self.run_local(t, regs, sc, targets)
        elif homes == {True}:
            self.forward(t, regs, sc, dict(targets))
            if sc.name == "truncate":
                self._mirror_truncate(targets[0][1], s64(regs.arg(1)))
        else:
            skip(t.tid, -errno.EXDEV)  # one path at home, the other local

    def answer_link(self, t: Thread, regs: Regs, sc: Syscall, targets: list[tuple[int, Target]]) -> bool:
        """readlink of a /proc link whose home value we know (exe, cwd, fd of a home file)."""
        links = [tg.link for _, tg in targets if tg.link is not None]
        out = [(i, k) for i, k in enumerate(sc.args) if isinstance(k, PathOut)]
        if not links or not out:
            return False
        i, kind = out[0]
        size = s64(regs.arg(kind.size))
        if size <= 0:
            skip(t.tid, -errno.EINVAL)
            return True
        data = os.fsencode(links[0])[:size]
        self.mem.write(t.tid, regs.arg(i), data)
        skip(t.tid, len(data))
        return True

    def _mirror_truncate(self, tg: Target, length: int) -> None:
        if tg.path and tg.handle is None:
            self.fds.mirror(normalize(tg.path), None, 0, truncate=length)

    def by_fd(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        kind, ref = self.fds.kind(t.tid, s32(regs.arg(0)))
        if kind == LOCAL or (kind == COPY and sc.copy_local):
            return  # a local fd, or the data path of a local copy: the kernel runs it
        assert isinstance(ref, int)
        wa, rep = self.forward(t, regs, sc, {}, handle=ref)
        op = sc.home_as or sc.name
        if rep is not None and kind == HOME and op in ("write", "pwrite64", "ftruncate"):
            home_path = self.fds.handle_path.get(ref)
            if home_path is not None:
                n = rep["r"]
                if op == "ftruncate":
                    self.fds.mirror(home_path, None, 0, truncate=wa[1])
                elif n > 0:
                    at = rep["o"].get("pos", n) - n if op == "write" else wa[3]
                    self.fds.mirror(home_path, wa[1][:n], at)

    # ---- generic forwarding ----------------------------------------------------------
    def marshal(self, t: Thread, regs: Regs, sc: Syscall, targets: dict[int, Target],
                handle: int | None) -> tuple[list[Any], list[tuple[int, int]] | None]:
        wa: list[Any] = []
        iov: list[tuple[int, int]] | None = None
        for i, k in enumerate(sc.args):
            v = regs.arg(i)
            if isinstance(k, DirFd):
                tg = targets.get(i + 1)
                wa.append(tg.wire_dirfd() if tg else None)
            elif isinstance(k, Path):
                tg = targets.get(i)
                wa.append(tg.wire_path() if tg else None)
            elif isinstance(k, Fd):
                wa.append(handle)
            elif isinstance(k, Flags):
                v &= 0xFFFFFFFF
                wa.append(wflags.open_to_wire(self.arch, v) if k.family == "open" else v)
            elif isinstance(k, Int):
                wa.append(s64(v))
            elif isinstance(k, Str):
                wa.append(self.mem.cstr(t.tid, v))
            elif isinstance(k, BufIn):
                wa.append(self.mem.read(t.tid, v, max(0, min(s64(regs.arg(k.size)), MAX_IO))))
            elif isinstance(k, (BufOut, PathOut)):
                wa.append(max(0, min(s64(regs.arg(k.size)), MAX_IO)))
            elif isinstance(k, (IovIn, IovOut)):
                iov = self.read_iov(t, v, regs.arg(k.count))
                if isinstance(k, IovIn):
                    wa.append(b"".join(self.mem.read(t.tid, base, ln) for base, ln in iov))
                else:
                    wa.append(sum(ln for _, ln in iov))
            elif isinstance(k, StructIn):
                wa.append(None if v == 0 else self.mem.read(t.tid, v, structs.SIZES[self.arch][k.type]))
            elif isinstance(k, StructOut):
                wa.append(None)
            elif isinstance(k, Pid):
                wa.append(s32(v))
        if sc.home_as:
            # readv/preadv/... are executed at home as read/pread64 on one gathered buffer.
            size = len(wa[1]) if isinstance(wa[1], bytes) else wa[1]
            wa = [wa[0], wa[1], size] + ([wa[3]] if sc.home_as.startswith("p") else [])
        return wa, iov

    def read_iov(self, t: Thread, addr: int, count: int) -> list[tuple[int, int]]:
        count = s64(count)
        if count < 0 or count > 1024:
            raise OSError(errno.EINVAL, "iovcnt")
        raw = self.mem.read(t.tid, addr, 16 * count)
        out, total = [], 0
        for i in range(count):
            base, ln = struct.unpack_from("<QQ", raw, 16 * i)
            ln = min(ln, MAX_IO - total)
            if ln > 0:
                out.append((base, ln))
                total += ln
        return out

    def call_home(self, t: Thread, op: str, args: list[Any]) -> dict[str, Any]:
        rep = self.rpc.call(op, args, tid=t.tid, umask=t.fs.umask)
        if rep["e"] and rep["o"].get("busy"):
            raise HomeBusy(op)
        local = rep["o"].get("local") if rep["e"] else None
        if isinstance(local, list) and len(local) == 2 and isinstance(local[1], str):
            raise GoLocal(int(local[0]), local[1])
        return rep

    def go_local(self, t: Thread, regs: Regs, sc: Syscall, g: GoLocal) -> None:
        """Run the call here after all, on the path home found it leads to."""
        paths = [i for i, k in enumerate(sc.args) if isinstance(k, Path)]
        i = g.index if g.index in paths else paths[0]
        self.run_local(t, regs, sc, [(i, Target(False, None, g.path, fixup=g.path))])

    def forward(self, t: Thread, regs: Regs, sc: Syscall, targets: dict[int, Target],
                handle: int | None = None) -> tuple[list[Any], dict[str, Any] | None]:
        """Execute at home; returns the wire arguments and the reply (None on failure)."""
        wa, iov = self.marshal(t, regs, sc, targets, handle)
        rep = self.call_home(t, sc.home_as or sc.name, wa)
        if rep["e"]:
            skip(t.tid, -_errno_of(rep["e"]))
            return wa, None
        for key, value in rep["o"].items():
            if not key.isdigit() or int(key) >= len(sc.args):
                continue  # extra facts for the stub itself (e.g. the write position)
            i = int(key)
            kind = sc.args[i]
            if isinstance(kind, IovOut) and iov is not None and isinstance(value, bytes):
                off = 0
                for base, ln in iov:
                    if off >= len(value):
                        break
                    self.mem.write(t.tid, base, value[off:off + ln])
                    off += ln
            elif isinstance(kind, StructOut):
                self.mem.write(t.tid, regs.arg(i), structs.struct_from_wire(self.arch, kind.type, value))
            elif isinstance(value, bytes):
                limit = s64(regs.arg(kind.size)) if isinstance(kind, (BufOut, PathOut)) else 0
                self.mem.write(t.tid, regs.arg(i), value[:max(0, limit)])
        skip(t.tid, rep["r"])
        return wa, rep

    # ---- open: local copies and placeholders ---------------------------------------------
    def h_open(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        a = regs.args()
        resolve = None
        if sc.name == "open":
            dirfd, path_i, fl, mode = AT_FDCWD, 0, a[1], a[2]
        elif sc.name == "creat":
            dirfd, path_i, fl, mode = AT_FDCWD, 0, O_CREAT | O_TRUNC | 1, a[1]
        elif sc.name == "openat2":
            if s64(a[3]) < 24:
                skip(t.tid, -errno.EINVAL)
                return
            fl, mode, resolve = struct.unpack("<QQQ", self.mem.read(t.tid, a[2], 24))
            dirfd, path_i = s32(a[0]), 1
        else:
            dirfd, path_i, fl, mode = s32(a[0]), 1, a[2], a[3]
        tg = self.resolve(t, dirfd, a[path_i], False)
        if not tg.home:
            self.run_local(t, regs, sc, [(path_i, tg)])
            return
        if resolve is None:
            fl &= 0xFFFFFFFF
            mode &= 0o7777
        self.open_home(t, regs, tg, fl, mode, exec_=False, resolve=resolve)

    def open_home(self, t: Thread, regs: Regs, tg: Target, fl: int, mode: int,
                  exec_: bool, resolve: int | None = None) -> str | None:
        """Open at home; install a copy or a placeholder fd, or (exec_) return the copy's path."""
        known = None
        if tg.handle is None and tg.path is not None:
            v = self.fds.cached.get(normalize(tg.path))
            if v is not None:
                known = [v.size, v.mtime_ns, v.ino, v.dev]
        rep = self.call_home(t, "open", [tg.wire_dirfd(), tg.wire_path() or b"",
                                         wflags.open_to_wire(self.arch, fl), mode, exec_, known, resolve])
        if rep["e"]:
            why = rep["o"].get("why")
            if why:
                self.warn_once(f"open:{why}", f"{tg.path}: {why} ({rep['e']})")
            skip(t.tid, -_errno_of(rep["e"]))
            return None
        o = rep["o"]
        h = int(o["handle"])
        home_path = os.fsdecode(o["path"])
        if o.get("kind") == "placeholder":
            if exec_:
                skip(t.tid, -errno.EACCES)
                self.rpc.pending_close.append(h)
                return None
            self.fds.handle_path[h] = home_path
            if fl & O_TRUNC:
                self.fds.mirror(home_path, None, 0, truncate=0)
            self.install(t, regs, self.fds.placeholder(h), O_PATH | (fl & O_CLOEXEC), h)
            return None
        st = o["stat"]
        v = Validator(size=st[7], mtime_ns=st[12] * 10**9 + st[13], ino=st[1], dev=st[0])
        cache = self.fds.fresh_copy(home_path, v) if o.get("fresh") else None
        if cache is None:
            chunks: Iterable[bytes] = [o["data"]] if "data" in o else self.fetch(t, h, v.size)
            cache = self.fds.store_copy(home_path, v, st[2], st[10] * 10**9 + st[11], chunks)
        if exec_:
            self.rpc.pending_close.append(h)  # the new image needs the data, not the fd
            t.proc.next_exe = home_path
            return cache
        keep = fl & ~(O_CREAT | O_EXCL | O_TRUNC | O_ACCMODE) & 0xFFFFFFFF
        self.install(t, regs, self.fds.link_copy(h, cache, home_path), keep, h)
        return None

    def fetch(self, t: Thread, handle: int, size: int) -> Iterator[bytes]:
        """The file's data in chunks, streamed into the copy as they arrive (a large file
        never sits whole in the stub's memory)."""
        off = 0
        while off < size:
            rep = self.call_home(t, "fetch", [handle, off, FETCH_CHUNK])
            data = rep["o"].get("data", b"")
            if rep["e"] or not data:
                return
            yield data
            off += len(data)

    def install(self, t: Thread, regs: Regs, local_path: str, fl: int, handle: int) -> None:
        """Turn the trapped open into openat(AT_FDCWD, local_path, fl) run by the kernel, so
        the fd number is the kernel's choice."""
        scratch = Scratch(t.tid, regs.sp, self.mem)
        p = scratch.put_str(os.fsencode(local_path))
        scratch.commit()
        rewrite(t, regs, NR_OPENAT[self.arch], [AT_FDCWD, p, fl, 0, 0, 0])
        self.open_handles.add(handle)
        self.pending_handles.add(handle)

        def installed(th: Thread, ret: int, h: int = handle) -> None:
            self.pending_handles.discard(h)
            if ret < 0:
                self.sweep_handles(only=h)
        t.on_exit = installed

    # ---- cwd -----------------------------------------------------------------------------
    def h_chdir(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        tg = self.resolve(t, AT_FDCWD, regs.arg(0), False)
        rep = None
        if tg.home:
            try:
                rep = self.call_home(t, "chdir", [tg.wire_dirfd(), tg.wire_path() or b""])
            except GoLocal as g:  # a home link into a tree this host serves
                tg = Target(False, None, g.path, fixup=g.path)
        if rep is not None:
            if rep["e"]:
                skip(t.tid, -_errno_of(rep["e"]))
                return
            t.fs.cwd = os.fsdecode(rep["o"]["path"])
            skip(t.tid, 0)
            return
        self.run_local(t, regs, sc, [(0, tg)])
        new = tg.path

        def done(th: Thread, ret: int) -> None:
            if ret == 0 and new:
                th.fs.cwd = new
        t.on_exit = done

    def h_fchdir(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        fd = s32(regs.arg(0))
        kind, ref = self.fds.kind(t.tid, fd)
        if kind == HOME:
            rep = self.call_home(t, "chdir", [ref, b""])
            if rep["e"]:
                skip(t.tid, -_errno_of(rep["e"]))
                return
            t.fs.cwd = os.fsdecode(rep["o"]["path"])
            skip(t.tid, 0)
            return
        if kind == COPY:
            skip(t.tid, -errno.ENOTDIR)
            return
        try:
            target = os.readlink(f"/proc/{t.tid}/fd/{fd}")
        except OSError:
            target = None

        def done(th: Thread, ret: int) -> None:
            if ret == 0 and target:
                th.fs.cwd = target
        t.on_exit = done

    def h_getcwd(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        data = os.fsencode(t.fs.cwd) + b"\0"
        if len(data) > regs.arg(1):
            skip(t.tid, -errno.ERANGE)
            return
        self.mem.write(t.tid, regs.arg(0), data)
        skip(t.tid, len(data))

    def h_umask(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        # Runs natively too, so the local umask (and its return value) stays in step.
        t.fs.umask = regs.arg(0) & 0o777

    # ---- exec ----------------------------------------------------------------------------
    def h_execve(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        a = regs.args()
        if sc.name == "execveat":
            dirfd, pi, argv_i, env_i = s32(a[0]), 1, 2, 3
            tg = self.resolve(t, dirfd, a[1], bool(a[4] & AT_EMPTY_PATH))
        else:
            pi, argv_i, env_i = 0, 1, 2
            tg = self.resolve(t, AT_FDCWD, a[0], False)
        t.proc.next_exe = None
        if not tg.home:
            self.run_local(t, regs, sc, [(pi, tg)])
            return
        as_given = self.mem.cstr(t.tid, a[pi])
        local = self.open_home(t, regs, tg, 0, 0, exec_=True)
        if local is None:
            return  # the error was set by open_home
        with open(local, "rb") as f:
            head = f.read(256)
        scratch = Scratch(t.tid, regs.sp, self.mem)
        if head.startswith(b"#!"):
            line = head[2:].split(b"\n", 1)[0].strip()
            if not line:
                skip(t.tid, -errno.ENOEXEC)
                return
            parts = line.split(None, 1)
            interp = parts[0]
            argv = self.mem.ptr_array(t.tid, a[argv_i])
            # The interpreter gets the script's home path, so $0 / __file__ are home paths.
            new_argv = [scratch.put_str(interp)]
            if len(parts) > 1:
                new_argv.append(scratch.put_str(parts[1]))
            new_argv.append(scratch.put_str(as_given))
            new_argv += argv[1:]
            interp_tg = self.resolve_abs(t, os.fsdecode(interp))
            exe = interp
            t.proc.next_exe = None  # /proc/self/exe is the interpreter
            if interp_tg.home:
                try:
                    got = self.open_home(t, regs, interp_tg, 0, 0, exec_=True)
                except GoLocal as g:
                    got = g.path  # a home link to the execution host's interpreter
                if got is None:
                    return
                exe = os.fsencode(got)
            argv_p = scratch.put_ptrs(new_argv)
            exe_p = scratch.put_str(exe)
            scratch.commit()
            rewrite(t, regs, NR_EXECVE[self.arch], [exe_p, argv_p, a[env_i], 0, 0, 0])
            return
        exe_p = scratch.put_str(os.fsencode(local))
        scratch.commit()
        rewrite(t, regs, NR_EXECVE[self.arch], [exe_p, a[argv_i], a[env_i], 0, 0, 0])

    # ---- fd bookkeeping ------------------------------------------------------------------
    def h_close(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        kind, ref = self.fds.kind(t.tid, s32(regs.arg(0)))
        if kind in (HOME, COPY):
            def closed(th: Thread, ret: int, h: int = int(ref or 0)) -> None:
                self.sweep_handles(only=h)
            t.on_exit = closed

    def h_close_range(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        t.on_exit = lambda th, ret: self.sweep_handles()

    def h_fcntl(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        kind, ref = self.fds.kind(t.tid, s32(regs.arg(0)))
        cmd = s32(regs.arg(1))
        if kind == LOCAL or (kind == COPY and cmd not in LOCK_CMDS):
            return  # a local fd, or a copy's own flags: the kernel's
        if cmd in (F_GETFL, F_SETFL):
            arg = wflags.open_to_wire(self.arch, regs.arg(2) & 0xFFFFFFFF)
            rep = self.call_home(t, "fcntl", [ref, cmd, arg])
            if rep["e"]:
                skip(t.tid, -_errno_of(rep["e"]))
            else:
                r = rep["r"]
                skip(t.tid, wflags.open_from_wire(self.arch, r) if cmd == F_GETFL else r)
        elif cmd in LOCK_CMDS:
            lock = bytearray(self.mem.read(t.tid, regs.arg(2), 32))
            # At home one process holds every job process's fds, so classic (per-process)
            # locks would never conflict: take open-file-description locks instead (l_pid 0).
            # A lock that must wait is tried at home and waited for here (see park).
            home_cmd = {F_GETLK: F_OFD_GETLK, F_SETLK: F_OFD_SETLK, F_SETLKW: F_OFD_SETLK,
                        F_OFD_SETLKW: F_OFD_SETLK}.get(cmd, cmd)
            struct.pack_into("<i", lock, 24, 0)
            rep = self.call_home(t, "fcntl_lock", [ref, home_cmd, bytes(lock)])
            if rep["e"] in ("EAGAIN", "EACCES") and cmd in (F_SETLKW, F_OFD_SETLKW):
                self.park(t, regs)
                return
            t.wait_delay = 0.0
            if rep["e"]:
                skip(t.tid, -_errno_of(rep["e"]))
                return
            if cmd in (F_GETLK, F_OFD_GETLK):
                self.mem.write(t.tid, regs.arg(2), rep["o"]["2"])
            skip(t.tid, rep["r"])
        elif cmd in (0, 1, 2, 1030):  # F_DUPFD, F_GETFD, F_SETFD, F_DUPFD_CLOEXEC
            return  # fd-table operations: the kernel's job
        else:
            skip(t.tid, -errno.EINVAL)

    def h_flock(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        kind, ref = self.fds.kind(t.tid, s32(regs.arg(0)))
        if kind == LOCAL:
            return
        op = s32(regs.arg(1))
        rep = self.call_home(t, "flock", [ref, op | LOCK_NB])
        if rep["e"] == "EAGAIN" and not op & LOCK_NB:
            self.park(t, regs)
            return
        t.wait_delay = 0.0
        skip(t.tid, -_errno_of(rep["e"]) if rep["e"] else rep["r"])

    def park(self, t: Thread, regs: Regs) -> None:
        """Let a call that must wait for something at home wait here instead: the thread
        sleeps locally (in nanosleep, so a signal wakes it), then issues the call again,
        while the tracer and the home node serve everyone else. A signal that arrived
        meanwhile makes the call return ERESTARTSYS, so the kernel fails it with EINTR or
        restarts it per SA_RESTART, exactly as for the real call."""
        t.wait_delay = min(max(t.wait_delay * 2, PARK_FIRST), PARK_MAX)
        scratch = Scratch(t.tid, regs.sp, self.mem)
        ts = scratch.put(struct.pack("<qq", 0, int(t.wait_delay * 1e9)))
        scratch.commit()
        nr, args = regs.nr, regs.args()
        rewrite(t, regs, NR_NANOSLEEP[self.arch], [ts, 0, 0, 0, 0, 0])

        def again(th: Thread, ret: int) -> None:
            restart(th.tid, nr, args, signal_pending(th.tid))
        t.on_exit = again

    def h_ioctl(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        kind, _ = self.fds.kind(t.tid, s32(regs.arg(0)))
        if kind == HOME:
            skip(t.tid, -errno.ENOTTY)  # home placeholders are files and directories
            return
        cmd, arg = regs.arg(1) & 0xFFFFFFFF, regs.arg(2)
        if cmd == TIOCSPGRP:  # a shell giving the terminal to a job: it names a home pgid
            pgid = struct.unpack("<i", self.mem.read(t.tid, arg, 4))[0]
            remote = self.to_remote(pgid)
            if remote is not None:
                scratch = Scratch(t.tid, regs.sp, self.mem)
                args = regs.args()
                args[2] = scratch.put(struct.pack("<i", remote))
                scratch.commit()
                rewrite(t, regs, regs.nr, args)
        elif cmd in (TIOCGPGRP, TIOCGSID):
            def got(th: Thread, ret: int) -> None:
                if ret == 0:
                    remote = struct.unpack("<i", self.mem.read(th.tid, arg, 4))[0]
                    self.mem.write(th.tid, arg, struct.pack("<i", self.to_home(remote)))
            t.on_exit = got

    def h_no_home_fd(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        for i, k in enumerate(sc.args):
            if isinstance(k, Fd) and self.fds.kind(t.tid, s32(regs.arg(i)))[0] == HOME:
                skip(t.tid, -_errno_of(sc.errno))
                return

    # ---- identity --------------------------------------------------------------------------
    def h_getpid(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        skip(t.tid, self.home_pid(t.proc.tgid))

    def h_gettid(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        skip(t.tid, self.home_pid(t.tid))

    def h_getppid(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        parent = t.proc.parent
        if parent in self.procs:
            skip(t.tid, self.home_pid(parent))
        else:
            skip(t.tid, int(self.identity["ppid"]) if t.proc.tgid == self.main_pid else 1)

    def h_uid(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        skip(t.tid, int(self.identity["uid" if sc.name == "getuid" else "euid"]))

    def h_gid(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        skip(t.tid, int(self.identity["gid" if sc.name == "getgid" else "egid"]))

    def _put_ids(self, t: Thread, regs: Regs, ids: list[int]) -> None:
        for i, v in enumerate(ids):
            self.mem.write(t.tid, regs.arg(i), struct.pack("<I", v))
        skip(t.tid, 0)

    def h_getresuid(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        i = self.identity
        self._put_ids(t, regs, [i["uid"], i["euid"], i["euid"]])

    def h_getresgid(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        i = self.identity
        self._put_ids(t, regs, [i["gid"], i["egid"], i["egid"]])

    def h_getgroups(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        groups = list(self.identity["groups"])
        size = s32(regs.arg(0))
        if size == 0:
            skip(t.tid, len(groups))
        elif size < len(groups):
            skip(t.tid, -errno.EINVAL)
        else:
            self.mem.write(t.tid, regs.arg(1), struct.pack(f"<{len(groups)}I", *groups))
            skip(t.tid, len(groups))

    def h_uname(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        u = os.uname()
        fields = [u.sysname, self.identity["nodename"], u.release, u.version, u.machine,
                  self.identity["domainname"]]
        data = b"".join(os.fsencode(f)[:64].ljust(65, b"\0") for f in fields)
        self.mem.write(t.tid, regs.arg(0), data)
        skip(t.tid, 0)

    def h_setid(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        """The job keeps its home identity: changing to the ids it already has succeeds."""
        i = self.identity
        if sc.name == "setgroups":
            n = s32(regs.arg(0))
            if n < 0 or n > 65536:
                skip(t.tid, -errno.EINVAL)
                return
            got = struct.unpack(f"<{n}I", self.mem.read(t.tid, regs.arg(1), 4 * n)) if n else ()
            # Only a privileged user may call it at all, even to keep the same list.
            same = sorted(got) == sorted(i["groups"])
            skip(t.tid, 0 if same and i["euid"] == 0 else -errno.EPERM)
            return
        ids = {i["uid"], i["euid"]} if "uid" in sc.name else {i["gid"], i["egid"]}
        count = {"setresuid": 3, "setresgid": 3, "setreuid": 2, "setregid": 2}.get(sc.name, 1)
        wanted = [s32(regs.arg(k)) for k in range(count)]
        ok = all(w == -1 or w in ids for w in wanted)
        if sc.name.startswith("setfs"):
            skip(t.tid, i["euid"] if "uid" in sc.name else i["egid"])  # returns the old fs id
        else:
            skip(t.tid, 0 if ok else -errno.EPERM)

    def to_remote(self, pid: int) -> int | None:
        """A pid as the job names it (home) -> the execution host's, None if not ours."""
        if pid in self.remote_of:
            return self.remote_of[pid]
        if pid in self.threads:
            return pid  # already remote (e.g. a tid the kernel wrote into memory)
        return None

    def to_home(self, remote: int) -> int:
        if remote in self.threads or remote in self.home_of:
            return self.home_pid(remote)
        return remote

    def h_group_of(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        """getpgid/getpgrp/getsid: asked of the local kernel, answered as home pids."""
        pid = 0 if sc.name == "getpgrp" else s32(regs.arg(0))
        target = t.proc.tgid if pid == 0 else self.to_remote(pid)
        if target is None:
            skip(t.tid, -errno.ESRCH)
            return
        lookup = os.getsid if sc.name == "getsid" else os.getpgid
        try:
            skip(t.tid, self.to_home(lookup(target)))
        except OSError as e:
            skip(t.tid, -(e.errno or errno.ESRCH))

    def h_setsid(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        # Runs natively; its result (the new session id, the caller's pid) is a home pid.
        t.on_exit = lambda th, ret: set_ret(th.tid, self.to_home(ret)) if ret > 0 else None

    def h_set_tid_address(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        t.on_exit = lambda th, ret: set_ret(th.tid, self.home_pid(th.tid)) if ret > 0 else None

    # ---- processes -------------------------------------------------------------------------
    def h_fork(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        if sc.name == "fork":
            t.clone_flags = 0
        elif sc.name == "vfork":
            t.clone_flags = CLONE_VM | CLONE_VFORK
        elif sc.name == "clone3":
            t.clone_flags = int.from_bytes(self.mem.read(t.tid, regs.arg(0), 8), "little")
        else:
            t.clone_flags = regs.arg(0)

        def forked(th: Thread, ret: int) -> None:
            self.fork_done(th.tid)
            if ret <= 0:
                return
            try:
                set_ret(th.tid, self.home_pid(ret))
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    raise
                if th.clone_flags & CLONE_THREAD:
                    # A thread cannot be taken back alone: it keeps its local tid.
                    self.warn_once("deputy", "the home node could not make a home pid for a "
                                             "new thread; it keeps its execution-host tid")
                    return
                # No home pid for it (home is out of processes): the fork fails as the
                # kernel's would, and the child it made goes.
                os.kill(ret, signal.SIGKILL)
                set_ret(th.tid, -errno.EAGAIN)
        self.forking.add(t.tid)
        t.on_exit = forked

    def h_wait4(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        self._wait_common(t, regs, 0)

    def h_waitid(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        idtype = s32(regs.arg(0))
        if idtype in (1, 2):  # P_PID, P_PGID
            self._translate_args(t, regs, {1: False})
        infop = regs.arg(2)
        keeps_child = bool(regs.arg(3) & WNOWAIT)

        def waited(th: Thread, ret: int) -> None:
            if ret == 0 and infop:
                raw = self.mem.read(th.tid, infop + 16, 4)
                pid = struct.unpack("<i", raw)[0]
                if pid > 0:
                    self.mem.write(th.tid, infop + 16, struct.pack("<i", self.reap(pid, keeps_child)))
        t.on_exit = waited

    def _wait_common(self, t: Thread, regs: Regs, pid_index: int) -> None:
        self._translate_args(t, regs, {pid_index: True})

        def waited(th: Thread, ret: int) -> None:
            if ret > 0:
                set_ret(th.tid, self.reap(ret))
        t.on_exit = waited

    def reaped(self, pid: int) -> None:
        if pid in self.procs or pid in self.threads:
            self.reaped_early.add(pid)  # its exit event is still queued: retire it then
        else:
            self.retire(pid)

    def _translate_args(self, t: Thread, regs: Regs, which: dict[int, bool]) -> bool:
        """Rewrite pid arguments from home to remote pids. `which[i]` says whether a negative
        value names a process group. Returns False if some pid is not a job process."""
        args = regs.args()
        changed, ours = False, True
        for i, group_neg in which.items():
            v = s32(args[i])
            if v > 0 or (group_neg and v < -1):
                r = self.to_remote(abs(v))
                if r is None:
                    ours = False
                    continue
                args[i] = (r if v > 0 else -r) & 0xFFFFFFFFFFFFFFFF
                changed = True
        if changed:
            rewrite(t, regs, regs.nr, args)
        return ours

    def h_kill(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        pid = s32(regs.arg(0))
        if pid == -1:
            self.warn_once("kill-1", "kill(-1, ...) is refused under qrun: EPERM")
            skip(t.tid, -errno.EPERM)
            return
        if pid == 0 or self._translate_args(t, regs, {0: True}):
            return
        if sc.name != "kill":
            skip(t.tid, -errno.EPERM)
            return
        # Not a job process: it lives at home, where the job's pids belong.
        rep = self.call_home(t, "kill", [pid, s32(regs.arg(1))])
        skip(t.tid, -_errno_of(rep["e"]) if rep["e"] else 0)

    def h_tkill(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        if not self._translate_args(t, regs, {0: False}):
            skip(t.tid, -errno.ESRCH)

    def h_tgkill(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        if not self._translate_args(t, regs, {0: False, 1: False}):
            skip(t.tid, -errno.ESRCH)

    def h_pidfd_open(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        if not self._translate_args(t, regs, {0: False}):
            skip(t.tid, -errno.ESRCH)

    def h_setpgid(self, t: Thread, regs: Regs, sc: Syscall) -> None:
        if not self._translate_args(t, regs, {0: False, 1: False}):
            skip(t.tid, -errno.ESRCH)


# Irregular handlers that exist; a test checks every table handler is among them.
HANDLERS = {name[2:] for name in dir(Handlers) if name.startswith("h_")}
