"""Executes forwarded syscalls at home, as the submitting user.

Regular calls are executed generically: the table's argument kinds say how each wire value
becomes a kernel argument (handles become this process's fds, paths become C strings,
output buffers are allocated here), and the raw syscall is made through libc. Nothing
outside the table's forwardable entries (and the few named operations of HomeOps) can
be executed, and every value is type-checked first.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from dataclasses import dataclass
from typing import Any

from qrun.homenode.resolve import Local, Resolved, Resolver
from qrun.homenode.schema import BadRequest, for_syscall
from qrun.homenode.schema import check as check_args
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
from qrun.syscalls.table import TABLE

ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}[platform.machine()]
AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

FORWARDABLE: dict[str, Syscall] = {s.name: s for s in TABLE if s.forwardable}
_CHECKS = {name: for_syscall(sc) for name, sc in FORWARDABLE.items()}


@dataclass
class Handle:
    fd: int
    path: bytes


class Handles:
    """Home fds held for the job, named by small integers on the wire."""

    def __init__(self) -> None:
        self._by_id: dict[int, Handle] = {}
        self._next = 1

    def add(self, fd: int, path: bytes) -> int:
        h = self._next
        self._next += 1
        self._by_id[h] = Handle(fd, path)
        return h

    def fd(self, h: object) -> int:
        if not isinstance(h, int) or isinstance(h, bool) or h not in self._by_id:
            raise OSError(errno.EBADF, "unknown handle")
        return self._by_id[h].fd

    def path(self, h: int) -> bytes:
        return self._by_id[h].path

    def close(self, h: object) -> None:
        if isinstance(h, int) and h in self._by_id:
            os.close(self._by_id.pop(h).fd)

    def __len__(self) -> int:
        return len(self._by_id)

    def close_all(self) -> None:
        for h in list(self._by_id):
            self.close(h)


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


AT_SYMLINK_NOFOLLOW, AT_SYMLINK_FOLLOW = 0x100, 0x400


def _follows(sc: Syscall, kind: Path, args: list[Any]) -> bool:
    """Whether the call follows a symlink in this path's last component."""
    at = next((v for k, v in zip(sc.args, args, strict=True)
               if isinstance(k, Flags) and k.family == "at" and isinstance(v, int)), 0)
    if not kind.follow:
        return bool(at & AT_SYMLINK_FOLLOW)  # linkat's old path
    return not at & AT_SYMLINK_NOFOLLOW


def execute(sc: Syscall, args: list[Any], handles: Handles,
            resolver: Resolver) -> tuple[int, str | None, dict[str, Any]]:
    """Run one regular call. Returns (result, errno name or None, outputs by arg index).
    Every path is resolved first (see resolve.py): the call acts on what was checked."""
    check_args(sc.name, _CHECKS[sc.name], args)
    resolved: list[Resolved] = []
    try:
        return _execute(sc, args, handles, resolver, resolved)
    finally:
        for r in resolved:
            r.close()


def _execute(sc: Syscall, args: list[Any], handles: Handles, resolver: Resolver,
             resolved: list[Resolved]) -> tuple[int, str | None, dict[str, Any]]:
    c_args: list[Any] = []
    outputs: dict[int, tuple[Any, BufOut | PathOut | StructOut]] = {}
    sizes: dict[int, int] = {}  # length arguments overridden by the buffer actually sent
    for i, (kind, v) in enumerate(zip(sc.args, args, strict=True)):
        if isinstance(kind, Fd):
            c_args.append(ctypes.c_long(handles.fd(v)))
        elif isinstance(kind, DirFd):
            c_args.append(ctypes.c_long(AT_FDCWD if v is None else handles.fd(v)))
        elif isinstance(kind, Path):
            if v is None:
                c_args.append(ctypes.c_void_p(None))
                continue
            has_dirfd = i > 0 and isinstance(sc.args[i - 1], DirFd)
            dirfd_given = has_dirfd and args[i - 1] is not None
            path = wire_path(v, dirfd_given, handles)
            if not isinstance(v, list):  # [handle]: a file the job already holds
                try:
                    r = resolver.resolve(handles.fd(args[i - 1]) if dirfd_given else None, path,
                                         _follows(sc, kind, args))
                except Local as exc:
                    raise Local(exc.path, i) from None
                resolved.append(r)
                if r.path:  # "" is AT_EMPTY_PATH: the directory handle stays
                    path = r.path
                    if has_dirfd:
                        c_args[i - 1] = ctypes.c_long(AT_FDCWD)
            c_args.append(ctypes.c_char_p(path))
        # (every value below was checked against the call's schema: types and ranges)
        elif isinstance(kind, Str):
            c_args.append(ctypes.c_char_p(v))
        elif isinstance(kind, Flags):
            c_args.append(ctypes.c_long(wflags.open_from_wire(ARCH, v) if kind.family == "open" else v))
        elif isinstance(kind, (Int, Pid)):
            c_args.append(ctypes.c_long(v))
        elif isinstance(kind, BufIn):
            c_args.append(ctypes.create_string_buffer(v, len(v)))
            sizes[kind.size] = len(v)
        elif isinstance(kind, (BufOut, PathOut)):
            n = v
            buf = ctypes.create_string_buffer(n)
            c_args.append(buf)
            outputs[i] = (buf, kind)
            sizes[kind.size] = n
        elif isinstance(kind, StructIn):
            if v is None:
                c_args.append(ctypes.c_void_p(None))
            else:
                if len(v) != structs.SIZES[ARCH][kind.type]:
                    raise BadRequest(f"{kind.type}: wrong size")
                c_args.append(ctypes.create_string_buffer(v, len(v)))
        elif isinstance(kind, StructOut):
            buf = ctypes.create_string_buffer(structs.SIZES[ARCH][kind.type])
            c_args.append(buf)
            outputs[i] = (buf, kind)
        elif isinstance(kind, (IovIn, IovOut)):
            raise BadRequest(f"{sc.name}: iovec calls are sent as their plain forms")
    for i, n in sizes.items():
        c_args[i] = ctypes.c_long(n)
    nr = sc.number(ARCH)
    if nr is None:
        raise BadRequest(f"{sc.name} does not exist on this home node's architecture ({ARCH})")
    ctypes.set_errno(0)
    ret = _syscall(ctypes.c_long(nr), *c_args)
    if ret < 0:
        e = ctypes.get_errno()
        return -1, errno.errorcode.get(e, "EIO"), {}
    out: dict[str, Any] = {}
    for i, (buf, out_kind) in outputs.items():
        if isinstance(out_kind, StructOut):
            out[str(i)] = structs.struct_to_wire(ARCH, out_kind.type, buf.raw)
        else:
            out[str(i)] = buf.raw[:ret]
    return ret, None, out


def stat_to_wire(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
            st.st_size, st.st_blksize, st.st_blocks,
            st.st_atime_ns // 10**9, st.st_atime_ns % 10**9,
            st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9,
            st.st_ctime_ns // 10**9, st.st_ctime_ns % 10**9]


def is_copyable(st: os.stat_result, flags: int) -> bool:
    """Read-only opens of regular files become local copies on the execution host."""
    return (stat.S_ISREG(st.st_mode) and flags & os.O_ACCMODE == os.O_RDONLY
            and not flags & getattr(os, "O_PATH", 0o10000000))
