"""The operations the home server runs for the job: forwarded table entries through the
generic executor, and the named operations (`op_<name>`) it cannot express."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from qrun.homenode import schema
from qrun.homenode.deputies import Deputies
from qrun.homenode.executor import (
    FORWARDABLE,
    BadRequest,
    Handles,
    Tracker,
    execute,
    is_copyable,
    wire_path,
)
from qrun.homenode.progress import Progress
from qrun.homenode.resolve import Refused, Resolver
from qrun.syscalls import abi, structs
from qrun.syscalls import flags as wflags
from qrun.syscalls.abi import ARCH as HOME_ARCH
from qrun.syscalls.abi import O_PATH
from qrun.syscalls.codecs import s32

Reply = tuple[int, str | None, dict[str, Any]]   # result, errno name, extra fields

INLINE_MAX = 1 << 20   # files up to this size travel inside the open reply

O_TMPFILE = os.O_TMPFILE
O_PATH_FLAGS = O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # all O_PATH keeps
# What open(2) takes and openat2(2) insists on (include/linux/fcntl.h VALID_OPEN_FLAGS).
VALID_OPEN_FLAGS = (os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND
                    | os.O_NONBLOCK | os.O_DSYNC | 0o20000 | os.O_DIRECT | 0o100000 | os.O_DIRECTORY
                    | os.O_NOFOLLOW | os.O_NOATIME | os.O_CLOEXEC | O_PATH | O_TMPFILE | os.O_SYNC)


@dataclass
class HomeOps:
    handles: Handles
    resolver: Resolver
    deputies: Deputies
    roots: list[str]   # --home-root: all the job may reach
    progress: Progress = field(default_factory=lambda: Progress(enabled=False))

    def dispatch(self, op: str, a: list[Any], track: Tracker | None = None) -> Reply:
        """Run one operation; `track` sees the paths of a cacheable one (executor.execute)."""
        sc = FORWARDABLE.get(op)
        if sc is not None:
            return execute(sc, a, self.handles, self.resolver, track if sc.cached else None)
        checks = schema.OPS.get(op)
        if checks is None:
            raise BadRequest(f"unknown operation {op!r}")
        if op == "open":  # (the one named operation whose answer may be kept)
            return self.op_open(*schema.check(op, checks, a), track=track)
        fn = getattr(self, "op_" + op)
        return fn(*schema.check(op, checks, a))  # type: ignore[no-any-return]

    def op_open(self, handle: int | None, path: bytes, wflags_: int, mode: int, exec_: bool,
                known: list[int] | None, resolve: int | None = None, *,
                track: Tracker | None = None) -> Reply:
        """Open as the job asked. Read-only regular files (and exec'd ones) come back as data
        for a local copy; everything else stays open here as a handle. Either way the home
        fd is kept, so fstat, locks and metadata calls on the job's fd stay exact."""
        dirfd = None if handle is None else self.handles.fd(handle)
        path_arg = path
        path = wire_path(path, dirfd is not None, self.handles) if path != b"" else path
        fl, asked_nonblock = _open_flags(wflags_, exec_, resolve)
        if isinstance(path_arg, list) or (exec_ and not path and dirfd is not None):
            # a file the job already holds ([handle], or execveat of a handle)
            fd = os.open(path or f"/proc/self/fd/{dirfd}".encode(), fl, int(mode) & 0o7777)
        else:
            if resolve is None:  # open(2)'s leniency, which openat2 does not have
                fl, mode = _lenient(fl, mode)
            if track is not None and _reusable(fl, exec_, resolve):
                # (a read-only open the stub may keep for the next identical one: what
                # its path goes through is watched, as for a cached stat)
                track(dirfd, path, not fl & os.O_NOFOLLOW)
            fd = self._open_readable(dirfd, path, fl, int(mode), int(resolve or 0))
        try:
            r, e, o = _opened(fd, fl, asked_nonblock, exec_, known)
            if r == 0:
                o["handle"] = self.handles.add(fd, o["path"])
                fd = -1
            return r, e, o
        finally:
            if fd >= 0:
                os.close(fd)

    def _open_readable(self, dirfd: int | None, path: bytes, fl: int, mode: int, resolve: int) -> int:
        """Open as asked; a regular file opened write-only is then reopened read-write where
        the user may read it: the execution host keeps a local copy it can fill and write
        back (the job's own fd there has the job's access mode)."""
        fd = self.resolver.open_file(dirfd, path, fl, mode, resolve)
        if fl & os.O_ACCMODE != os.O_WRONLY or fl & O_PATH or not stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        again = fl & ~(os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_TRUNC) | os.O_RDWR
        try:
            rw = os.open(f"/proc/self/fd/{fd}", again)
        except OSError:
            return fd  # (not readable for the user: used as asked)
        os.close(fd)
        return rw

    def op_writeback(self, handle: int, offset: int, size: int | None, data: list[memoryview]) -> Reply:
        """Data the job wrote into its local copy of a home file, as the request's data
        frames brought it: written at `offset`, then the file cut or extended to `size` if
        given. Returns the file's stat after it, the stub's new validator for its copy.
        Errors are home's (ENOSPC, EDQUOT, EIO)."""
        fd = self.handles.fd(handle)
        at = _pwrite_all(fd, data, offset)
        if size is not None:
            os.ftruncate(fd, size)
        self.progress.step("writing back", handle, self._name(handle), at, size, time.monotonic())
        return at - offset, None, {"stat": structs.stat_result_to_wire(os.fstat(fd))}

    def op_chdir(self, handle: int | None, path: bytes) -> Reply:
        dirfd = None if handle is None else self.handles.fd(handle)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        if isinstance(path, list):
            fd = os.open(wire_path(path, False, self.handles), flags)
        elif path == b"" and dirfd is not None:
            fd = os.open(f"/proc/self/fd/{dirfd}", flags)  # fchdir
        else:
            fd = self.resolver.open_file(dirfd, path, flags, 0, 0)
        try:
            if not os.access(f"/proc/self/fd/{fd}", os.X_OK):
                return -1, "EACCES", {}
            return 0, None, {"path": os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))}
        finally:
            os.close(fd)

    def op_fetch(self, handle: int, offset: int, size: int) -> Reply:
        """A chunk of a file being copied to the execution host (one pread, one copy)."""
        if not isinstance(offset, int) or not isinstance(size, int) or offset < 0 or size < 0:
            raise BadRequest("fetch: malformed arguments")
        fd = self.handles.fd(handle)
        data = os.pread(fd, min(size, 64 << 20), offset)
        self.progress.step("fetching", handle, self._name(handle), offset + len(data), os.fstat(fd).st_size,
                           time.monotonic())
        return len(data), None, {"data": data}

    def _name(self, handle: int) -> str:
        return os.path.basename(os.fsdecode(self.handles.path(handle)))

    def op_deputy(self, name: str) -> Reply:
        return self.deputies.spawn(str(name)[:15]), None, {}

    def op_kill(self, pid: int, sig: int) -> Reply:
        if self.roots:
            raise Refused(errno.EPERM, "with home roots, the job may signal only its own processes")
        os.kill(pid, sig)
        return 0, None, {}

    def op_fcntl(self, handle: int, cmd: int, arg: int) -> Reply:
        fd = self.handles.fd(handle)
        if cmd == fcntl.F_GETFL:
            return wflags.open_to_wire(HOME_ARCH, fcntl.fcntl(fd, cmd)), None, {}
        if cmd == fcntl.F_SETFL:
            return fcntl.fcntl(fd, cmd, wflags.open_from_wire(HOME_ARCH, int(arg))), None, {}
        raise BadRequest(f"fcntl: command {cmd} is not forwarded")

    def op_flock(self, handle: int, op: int) -> Reply:
        """Never waits: the stub asks with LOCK_NB and waits on its side."""
        fd = self.handles.fd(handle)
        if not isinstance(op, int) or op & ~(fcntl.LOCK_SH | fcntl.LOCK_EX | fcntl.LOCK_UN) != fcntl.LOCK_NB:
            raise BadRequest("flock: malformed operation")
        fcntl.flock(fd, op)
        self.handles.locked(handle, ["flock", op])
        return 0, None, {}

    def op_fcntl_lock(self, handle: int, cmd: int, lock: bytes) -> Reply:
        fd = self.handles.fd(handle)
        if cmd not in (abi.F_GETLK, abi.F_SETLK, abi.F_OFD_GETLK, abi.F_OFD_SETLK) \
                or not isinstance(lock, bytes) or len(lock) != structs.SIZES[HOME_ARCH]["flock"]:
            raise BadRequest("fcntl: malformed lock request")
        try:
            out = fcntl.fcntl(fd, cmd, lock)  # fills a copy of the struct (F_GETLK)
        except OSError as exc:
            return -1, errno.errorcode.get(exc.errno or 0, "EIO"), {}
        if cmd in (abi.F_SETLK, abi.F_OFD_SETLK):
            self.handles.locked(handle, ["fcntl", cmd, lock])
        return 0, None, {"2": out}


def _open_flags(wflags_: int, exec_: bool, resolve: int | None) -> tuple[int, int]:
    """The home open flags for the job's wire flags, and whether the job asked O_NONBLOCK."""
    if resolve is None and wflags_ >= 2**32:
        raise BadRequest("open: flags wider than 32 bits")
    fl = wflags.open_from_wire(HOME_ARCH, wflags_) | os.O_CLOEXEC
    if resolve is None:
        fl = s32(fl)  # open(2) takes a C int
    if exec_:
        fl = os.O_RDONLY | os.O_CLOEXEC
    # Opened non-blocking: opening a FIFO must never stall the one thread serving the
    # job. Named pipes at home are refused below; for files O_NONBLOCK means nothing.
    asked_nonblock = fl & os.O_NONBLOCK
    return fl | os.O_NONBLOCK, asked_nonblock


def _lenient(fl: int, mode: int) -> tuple[int, int]:
    """open(2) ignores unknown flags, and the mode unless it creates a file."""
    fl &= O_PATH_FLAGS if fl & O_PATH else VALID_OPEN_FLAGS
    mode = int(mode) & 0o7777 if fl & (os.O_CREAT | O_TMPFILE) == os.O_CREAT or \
        fl & O_TMPFILE == O_TMPFILE else 0
    return fl, mode


def _opened(fd: int, fl: int, asked_nonblock: int, exec_: bool, known: list[int] | None) -> Reply:
    """The open reply for the file just opened as `fd` (still to be kept as a handle)."""
    st = os.fstat(fd)
    o_path = fl & O_PATH
    if stat.S_ISFIFO(st.st_mode) and not o_path:
        return -1, "EOPNOTSUPP", {"why": "named pipes at home are not supported"}
    if not asked_nonblock and not o_path:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    real = os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))
    if exec_ and (not stat.S_ISREG(st.st_mode) or not os.access(f"/proc/self/fd/{fd}", os.X_OK)):
        return -1, "EACCES", {}
    if not exec_ and stat.S_ISREG(st.st_mode) and fl & os.O_ACCMODE != os.O_RDONLY and not o_path:
        return 0, None, _writable(fd, fl, st, real, known)
    if exec_ or is_copyable(st, fl):
        o: dict[str, Any] = {"kind": "copy", "path": real, "stat": structs.stat_result_to_wire(st)}
        # Read to EOF, not st_size: /proc and /sys files report size 0.
        _content(o, fd, st, known, INLINE_MAX if st.st_size == 0 else st.st_size)
    else:
        o = {"kind": "placeholder", "path": real, "dir": stat.S_ISDIR(st.st_mode)}
    return 0, None, o


def _writable(fd: int, fl: int, st: os.stat_result, real: bytes, known: list[int] | None) -> dict[str, Any]:
    """A regular file opened for writing: the job writes a local copy, written back with
    op_writeback; a placeholder if its data is needed but cannot be read."""
    home_fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    readable = home_fl & os.O_ACCMODE == os.O_RDWR
    append_only = fl & os.O_ACCMODE == os.O_WRONLY and fl & os.O_APPEND
    if not readable and st.st_size > 0 and not append_only:
        return {"kind": "placeholder", "path": real}
    # pwrite on an O_APPEND fd would append: the job's own fd keeps O_APPEND, home's
    # write-back fd must not. O_DIRECT's alignment rules are for the job's fd too.
    fcntl.fcntl(fd, fcntl.F_SETFL, home_fl & ~(os.O_APPEND | os.O_DIRECT))
    o: dict[str, Any] = {"kind": "copy", "path": real, "stat": structs.stat_result_to_wire(st),
                         "writable": True, "readable": readable}
    if append_only:
        o["unfetched"] = True  # `>> log`: what is there stays at home; appends go home
    else:
        _content(o, fd, st, known, st.st_size)
    return o


def _reusable(fl: int, exec_: bool, resolve: int | None) -> bool:
    """Whether an open's handle may be kept by the stub for the next identical open."""
    return (fl & os.O_ACCMODE == os.O_RDONLY and not exec_ and not resolve
            and not fl & (os.O_CREAT | os.O_TRUNC | O_PATH | O_TMPFILE | os.O_DIRECTORY))


def _content(o: dict[str, Any], fd: int, st: os.stat_result, known: list[int] | None, size: int) -> None:
    """A copy's content in its open reply: "fresh" if the stub's cached copy is still this
    file, else the first `size` bytes when the file is small (a large one is fetched)."""
    if known == [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]:
        o["fresh"] = True
    elif st.st_size <= INLINE_MAX:
        o["data"] = _read_all(fd, size)


def _read_all(fd: int, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        b = os.pread(fd, size - got, got)
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _pwrite_all(fd: int, parts: list[memoryview], at: int) -> int:
    """Write the pieces one after the other from `at` on (one pwritev, repeated only for
    what a short write left); returns where the data ends."""
    views = [p for p in parts if len(p)]
    while views:
        n = os.pwritev(fd, views, at)
        if n == 0:
            raise OSError(errno.EIO, "the file took no more data")  # (never spin on it)
        at += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
    return at
