"""Executes forwarded syscalls at home, as the submitting user.

Regular calls are executed generically: the table's argument kinds say how each wire value
becomes a kernel argument (handles become this process's fds, paths become C strings,
output buffers are allocated here), and the raw syscall is made through libc. Nothing
outside the table's forwardable entries (and the few named operations of HomeOps) can
be executed, and every value is type-checked first.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from qrun.homenode.resolve import Local, Resolved, Resolver
from qrun.homenode.schema import BadRequest, for_syscall
from qrun.homenode.schema import check as check_args
from qrun.native import ffi, lib
from qrun.syscalls.abi import ARCH, AT_FDCWD, AT_SYMLINK_FOLLOW, AT_SYMLINK_NOFOLLOW
from qrun.syscalls.codecs import codec, s64
from qrun.syscalls.model import DirFd, Flags, Path, Syscall
from qrun.syscalls.table import TABLE

FORWARDABLE: dict[str, Syscall] = {s.name: s for s in TABLE if s.forwardable}
_CHECKS = {name: for_syscall(sc) for name, sc in FORWARDABLE.items()}


@dataclass
class Handle:
    fd: int
    path: bytes


class Handles:
    """Home fds held for the job, named by small integers on the wire. A batch job's server
    tells `journal` (servestate.ServeState) of each, so that a successor can open them
    again; a handle it could not open again is `lost`: calls on it fail with ESTALE."""

    def __init__(self, journal: HandleJournal | None = None) -> None:
        self._by_id: dict[int, Handle] = {}
        self._next = 1
        self.journal = journal
        self.lost: set[int] = set()

    def add(self, fd: int, path: bytes) -> int:
        h = self._next
        self._next += 1
        self._by_id[h] = Handle(fd, path)
        if self.journal is not None:
            self.journal.opened(h, fd, path)
        return h

    def restore(self, h: int, fd: int | None, path: bytes) -> None:
        """A handle a predecessor held, opened again (None: it could not be)."""
        if fd is None:
            self.lost.add(h)
        else:
            self._by_id[h] = Handle(fd, path)
        self.numbered_from(h + 1)

    def numbered_from(self, n: int) -> None:
        """New handles get numbers from `n` on (a predecessor's have gone before)."""
        self._next = max(self._next, n)

    def fd(self, h: object) -> int:
        if not isinstance(h, int) or isinstance(h, bool) or h not in self._by_id:
            if h in self.lost:
                raise OSError(errno.ESTALE, "lost when the home server was restarted")
            raise OSError(errno.EBADF, "unknown handle")
        return self._by_id[h].fd

    def path(self, h: int) -> bytes:
        return self._by_id[h].path

    def moved(self, h: object) -> None:
        """A call moved the handle's file position (a directory read): recorded for a successor."""
        if self.journal is not None and isinstance(h, int) and h in self._by_id:
            self.journal.positioned(h, os.lseek(self._by_id[h].fd, 0, os.SEEK_CUR))

    def locked(self, h: int, how: list[Any]) -> None:
        """A lock the job took or let go of through the handle (["flock", op] or
        ["fcntl", cmd, struct flock]): recorded for a successor, which takes it again."""
        if self.journal is not None and h in self._by_id:
            self.journal.locked(h, how)

    def close(self, h: object) -> None:
        if isinstance(h, int) and (h in self._by_id or h in self.lost):
            if h in self._by_id:
                os.close(self._by_id.pop(h).fd)
            self.lost.discard(h)
            if self.journal is not None:
                self.journal.closed(h)

    def __len__(self) -> int:
        return len(self._by_id)

    def close_all(self) -> None:
        for h in list(self._by_id):
            self.close(h)


class HandleJournal(Protocol):
    def opened(self, h: int, fd: int, path: bytes) -> None: ...
    def closed(self, h: int) -> None: ...
    def positioned(self, h: int, pos: int) -> None: ...
    def locked(self, h: int, how: list[Any]) -> None: ...


Tracker = Callable[[int | None, bytes, bool], None]


def wire_path(v: object, dirfd_given: bool, handles: Handles) -> bytes:
    """A path from the wire. [handle] names that handle's own file, as /proc/self/fd/N names
    an open file (the job wrote /proc/self/fd/N or /dev/stdout for one of its home fds)."""
    if isinstance(v, list):
        if len(v) != 1 or dirfd_given:
            raise BadRequest("malformed fd path")
        return f"/proc/self/fd/{handles.fd(v[0])}".encode()
    if not isinstance(v, bytes) or b"\0" in v:  # (callers checked it against a schema)
        raise BadRequest("malformed path")
    p = v
    if not dirfd_given and not p.startswith(b"/"):
        raise BadRequest("a path without a directory handle must be absolute")
    return p




def _follows(sc: Syscall, kind: Path, args: list[Any]) -> bool:
    """Whether the call follows a symlink in this path's last component."""
    at = next((v for k, v in zip(sc.args, args, strict=True)
               if isinstance(k, Flags) and k.family == "at" and isinstance(v, int)), 0)
    if not kind.follow:
        return bool(at & AT_SYMLINK_FOLLOW)  # linkat's old path
    return not at & AT_SYMLINK_NOFOLLOW


def execute(sc: Syscall, args: list[Any], handles: Handles, resolver: Resolver,
            track: Tracker | None = None) -> tuple[int, str | None, dict[str, Any]]:
    """Run one regular call. Returns (result, errno name or None, outputs by arg index).
    Every path is resolved first (see resolve.py): the call acts on what was checked.
    `track` is told each path (start directory fd or None, path, follows its last
    symlink) before it is resolved."""
    check_args(sc.name, _CHECKS[sc.name], args)
    resolved: list[Resolved] = []
    try:
        reply = _execute(sc, args, handles, resolver, resolved, track)
        if sc.seeks and reply[0] >= 0:
            handles.moved(args[0])
        return reply
    finally:
        for r in resolved:
            r.close()


@dataclass
class _Call:
    """One call being built at home: the codecs ask it for fds, resolved paths and buffers
    (kept alive here until the call returns)."""
    sc: Syscall
    args: list[Any]
    handles: Handles
    resolver: Resolver
    resolved: list[Resolved]
    arch: str = ARCH
    c_args: list[int] = field(default_factory=list)
    sizes: dict[int, int] = field(default_factory=dict)  # lengths set by the buffer actually sent
    keep: list[Any] = field(default_factory=list)
    track: Tracker | None = None

    def fd(self, handle: object) -> int:
        return self.handles.fd(handle)

    def dirfd(self, i: int, handle: object) -> int:
        return AT_FDCWD if handle is None else self.handles.fd(handle)

    def path(self, i: int, v: object) -> int:
        if v is None:
            return 0
        dirfd_given = i > 0 and isinstance(self.sc.args[i - 1], DirFd) and self.args[i - 1] is not None
        p = wire_path(v, dirfd_given, self.handles)
        if not isinstance(v, list):  # [handle]: a file the job already holds
            try:
                kind = self.sc.args[i]
                assert isinstance(kind, Path)
                start = self.handles.fd(self.args[i - 1]) if dirfd_given else None
                follow = _follows(self.sc, kind, self.args)
                if self.track is not None:
                    self.track(start, p, follow)
                r = self.resolver.resolve(start, p, follow)
            except Local as exc:
                raise Local(exc.path, i) from None
            self.resolved.append(r)
            if r.path:  # "" is AT_EMPTY_PATH: the directory handle stays
                p = r.path
                if i > 0 and isinstance(self.sc.args[i - 1], DirFd):
                    self.c_args[i - 1] = AT_FDCWD
        return self.address(self.buffer(p + b"\0"))

    def buffer(self, content: bytes | int) -> Any:
        buf = ffi.new("char[]", content)
        self.keep.append(buf)
        return buf

    def address(self, buf: Any) -> int:
        return int(ffi.cast("intptr_t", buf))

    def contents(self, buf: Any, size: int | None = None) -> bytes:
        """At most the buffer's own bytes: a size probe (listxattr(p, NULL, 0)) returns
        more than it was given room for, and home memory past it must never travel."""
        room = ffi.sizeof(buf)
        return ffi.buffer(buf, room if size is None else max(0, min(size, room)))[:]

    def size_is(self, i: int, n: int) -> None:
        self.sizes[i] = n


def _execute(sc: Syscall, args: list[Any], handles: Handles, resolver: Resolver,
             resolved: list[Resolved], track: Tracker | None) -> tuple[int, str | None, dict[str, Any]]:
    call = _Call(sc, args, handles, resolver, resolved, track=track)
    outputs: dict[int, Any] = {}
    for i, (kind, v) in enumerate(zip(sc.args, args, strict=True)):
        call.c_args.append(0)
        call.c_args[i], buf = codec(kind).to_c(kind, i, v, call)
        if buf is not None:
            outputs[i] = buf
    for i, n in call.sizes.items():
        call.c_args[i] = n
    nr = sc.number(ARCH)
    if nr is None:
        raise BadRequest(f"{sc.name} does not exist on this home node's architecture ({ARCH})")
    # C longs from any 64-bit pattern (flags and addresses may use the top bit)
    words = ffi.new("long[6]", [s64(a) for a in call.c_args] + [0] * (6 - len(call.c_args)))
    ret = lib.qr_raw_syscall(nr, words)
    if ret < 0:
        return -1, errno.errorcode.get(-ret, "EIO"), {}
    out = {str(i): codec(sc.args[i]).output(sc.args[i], call, buf, ret) for i, buf in outputs.items()}
    return ret, None, out


def is_copyable(st: os.stat_result, flags: int) -> bool:
    """Read-only opens of regular files become local copies on the execution host."""
    return (stat.S_ISREG(st.st_mode) and flags & os.O_ACCMODE == os.O_RDONLY
            and not flags & os.O_PATH)
