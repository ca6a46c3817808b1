"""Where a job's path leads at home, decided by the kernel before the call uses it.

A path a job names is resolved here into a descriptor first (`openat2`), and the call then
acts on that descriptor (through /proc/self/fd/N), so what was checked is what is used:
- its route is decided on where it really leads (through `..`, symlinks, a directory
  handle), not on how it was written: a home symlink into a tree the path policy keeps on
  the execution host (/usr, /proc, a --local dir) answers "run it there" (`Local`), so
  nothing under home's /proc is ever reached (/proc/self would be the home node itself);
- with home roots (--home-root), only what lies beneath them is reachable at all:
  RESOLVE_BENEATH from a descriptor of the root, so `..`, absolute symlinks and symlinks
  swapped during the call cannot lead out;
- magic links (/proc/PID/fd/N and friends) are never followed on the job's behalf.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from qrun.native import ffi, lib
from qrun.syscalls import structs
from qrun.syscalls.abi import ARCH, AT_FDCWD, O_PATH
from qrun.syscalls.paths import PathPolicy, normalize

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
HOME_PROC = "/proc"


class Refused(Exception):
    """Not reachable by the job: fails with `err`, with one line saying why."""

    def __init__(self, err: int, why: str) -> None:
        super().__init__(why)
        self.errno = err


class Local(Exception):
    """The path leads into a tree the execution host serves: the stub runs the call there,
    with argument `index` replaced by `path`."""

    def __init__(self, path: str, index: int = -1) -> None:
        super().__init__(path)
        self.path = path
        self.index = index


@dataclass
class Resolved:
    """What to pass to the call instead of (dirfd, path); `fds` are closed after it."""
    path: bytes
    fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def openat2(dirfd: int, path: bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
    lay = structs.layout(ARCH, "open_how")
    raw = lay.pack(flags=flags & (2**64 - 1), mode=mode & (2**64 - 1), resolve=resolve)
    fd = lib.qr_openat2(dirfd, path, ffi.new("char[]", raw), lay.size)
    if fd < 0:
        raise OSError(-fd, os.strerror(-fd))
    return int(fd)


class Resolver:
    def __init__(self, policy: PathPolicy, roots: list[str] | None = None) -> None:
        self.policy = policy
        self.roots: list[tuple[str, int]] = []
        for r in roots or []:
            real = os.path.realpath(r)
            self.roots.append((real, os.open(real, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)))

    def close(self) -> None:
        for _, fd in self.roots:
            os.close(fd)
        self.roots.clear()

    # -- where resolution starts ------------------------------------------------------
    def start(self, dirfd: int | None, path: bytes) -> tuple[int, bytes, int]:
        """(descriptor, path relative to it, RESOLVE_* flags) to resolve `path` from."""
        flags = RESOLVE_NO_MAGICLINKS
        if not self.roots:
            return (AT_FDCWD if dirfd is None else dirfd), path, flags
        if dirfd is not None:
            base = os.readlink(f"/proc/self/fd/{dirfd}")
            path = os.fsencode(base.rstrip("/")) + b"/" + path
        if not path.startswith(b"/"):
            raise Refused(errno.EACCES, "a relative path without a directory")
        lexical = normalize(os.fsdecode(path))
        for root, fd in self.roots:
            if lexical == root or lexical.startswith(root.rstrip("/") + "/"):
                rest = os.fsencode(os.fsdecode(path)[len(root):].lstrip("/")) or b"."
                return fd, rest, flags | RESOLVE_BENEATH
        raise Refused(errno.EACCES, f"{lexical} is outside the home roots")

    # -- resolution -------------------------------------------------------------------
    def resolve(self, dirfd: int | None, path: bytes, follow: bool) -> Resolved:
        if path == b"":
            return Resolved(path)  # AT_EMPTY_PATH: the handle itself, already checked
        start, rel, flags = self.start(dirfd, path)
        stripped = rel.rstrip(b"/")
        if follow or stripped in (b"", b"."):  # followed, or the start directory itself
            try:
                fd = self._open(start, rel, flags)
            except FileNotFoundError:
                if not follow or stripped in (b"", b"."):
                    raise
            else:
                self._check(fd, None)
                return Resolved(f"/proc/self/fd/{fd}".encode(), [fd])
        # The last component itself is used (lstat, unlink, rmdir, rename) or made (mkdir,
        # link): resolve its directory, and name it from there.
        parent, _, base = stripped.rpartition(b"/")
        if not parent:
            parent = b"/" if stripped.startswith(b"/") else b"."
        fd = self._open(start, parent, flags, directory=True)
        self._check(fd, os.fsdecode(base))
        tail = b"/" if rel.endswith(b"/") else b""
        return Resolved(f"/proc/self/fd/{fd}/".encode() + base + tail, [fd])

    def open_file(self, dirfd: int | None, path: bytes, flags: int, mode: int, resolve: int) -> int:
        """openat2 of the job's own open, confined the same way; returns the fd."""
        start, rel, confine = self.start(dirfd, path)
        try:
            fd = openat2(start, rel, flags, mode, resolve | confine)
        except OSError as exc:
            if exc.errno == errno.EXDEV and confine & RESOLVE_BENEATH and not resolve & RESOLVE_BENEATH:
                raise Refused(errno.EACCES, f"{os.fsdecode(path)} leads outside the home roots") from None
            raise
        try:
            self._check(fd, None)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open(self, start: int, rel: bytes, flags: int, directory: bool = False) -> int:
        try:
            return openat2(start, rel, O_PATH | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0),
                           0, flags)
        except OSError as exc:
            if exc.errno == errno.EXDEV and flags & RESOLVE_BENEATH:
                raise Refused(errno.EACCES, f"{os.fsdecode(rel)} leads outside the home roots") from None
            if exc.errno == errno.ELOOP and not flags & RESOLVE_BENEATH:
                raise  # a symlink loop, or a magic link: the kernel's own answer
            raise

    def tree_is_home(self, real: str) -> bool:
        """Whether everything in directory `real` (a physical path at home) is home's to
        serve: no tree the path policy keeps local, nor /proc, lies in it."""
        if not real.startswith("/") or not self.policy.routes_home(real):
            return False
        inside = [*self.policy.local, HOME_PROC]
        return not any(_under(p, real) for p in inside) and not _under(real, HOME_PROC)

    def _check(self, fd: int, name: str | None) -> None:
        """Where the resolved object really is, against home's /proc and the path policy."""
        real = os.readlink(f"/proc/self/fd/{fd}")
        if name is not None:
            real = real.rstrip("/") + "/" + name
        if _under(real, HOME_PROC) and not any(_under(real, h) for h in self.policy.home):
            # Never home's own: /proc is the execution host's, and what resolved to this
            # process here (/proc/self) is the job's own process there.
            own = f"{HOME_PROC}/{os.getpid()}"
            raise Local("/proc/self" + real[len(own):] if _under(real, own) else real)
        if not real.startswith("/"):
            raise Refused(errno.EACCES, f"{real} is not a file at home")  # anon inodes, sockets
        if not self.policy.routes_home(real):
            raise Local(real)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")
