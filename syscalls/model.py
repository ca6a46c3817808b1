"""Vocabulary of the syscall table: argument kinds, routes, support levels.

Everything here is plain data. The seccomp filter, the stub's marshalling, the home
node's executor, the docs page and the coverage tests are all computed from entries
built out of these types; nothing about one syscall is written down twice.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import NamedTuple


class Route(enum.Enum):
    LOCAL = "local"          # never trapped: runs on the execution host as is
    BY_PATH = "by-path"      # forwarded iff its path routes home (else run locally)
    BY_FD = "by-fd"          # forwarded iff its fd is a home placeholder (else run locally)
    IDENTITY = "identity"    # answered from the job's home identity (pids, uids, uname)
    DENY = "deny"            # refused with a fixed errno and one warning line
    IRREGULAR = "irregular"  # needs code: see `handler`


class Level(enum.Enum):
    FULL = "full"
    PARTIAL = "partial"
    LOCAL = "local"
    DENIED = "denied"


# ---- argument kinds -------------------------------------------------------------------
# Each kind says how the stub reads the argument out of the tracee and how the home
# node turns the wire value back into something it can pass to the kernel. Kinds are
# named tuples: both interpreters of every job build them, and a tuple class costs a
# sixth of a frozen dataclass to make. Only isinstance and type() tell kinds apart (two
# with equal fields compare equal, and one without fields is false).

class Int(NamedTuple):
    """A plain integer passed through unchanged."""


class Flags(NamedTuple):
    """An integer bit set; `family` names its portable encoding (see syscalls.flags)."""
    family: str = ""


class Fd(NamedTuple):
    """A file descriptor: the call is forwarded iff it names a home placeholder."""


class DirFd(NamedTuple):
    """The dirfd of an *at call; pairs with the following Path argument."""


class Path(NamedTuple):
    """A NUL-terminated path. `follow` is False when the final symlink is not followed;
    `null_is_fd`: a NULL path names the preceding dirfd itself (utimensat as futimens)."""
    follow: bool = True
    null_is_fd: bool = False


class Str(NamedTuple):
    """A NUL-terminated string passed verbatim (a symlink target, an xattr name)."""


class BufIn(NamedTuple):
    """Bytes the kernel reads: `size` is the index of the length argument."""
    size: int


class BufOut(NamedTuple):
    """Bytes the kernel fills: length from arg `size`; the return value counts them."""
    size: int


class StructIn(NamedTuple):
    """A fixed-size structure the kernel reads."""
    type: str


class StructOut(NamedTuple):
    """A fixed-size structure the kernel fills on success."""
    type: str


class PathOut(NamedTuple):
    """A path buffer the kernel fills (readlink): length from arg `size`."""
    size: int


class Pid(NamedTuple):
    """A pid in the job's (home) pid space; translated to the execution host's."""


class Addr(NamedTuple):
    """A user-space address the call keeps or writes later (set_tid_address, wait4's status):
    passed through, never read by qrun."""


class Argv(NamedTuple):
    """A NULL-terminated array of string pointers (execve's argv and envp)."""


class Id(NamedTuple):
    """A user or group id the job asks to take (the set*id family)."""


class IdOut(NamedTuple):
    """A pointer to one user or group id the kernel fills (getresuid)."""


class IdList(NamedTuple):
    """An array of group ids the kernel reads; `size` is the index of its length."""
    size: int


class IdListOut(NamedTuple):
    """An array of group ids the kernel fills; `size` is the index of its capacity."""
    size: int


ArgKind = (Int | Flags | Fd | DirFd | Path | Str | BufIn | BufOut | StructIn | StructOut
           | PathOut | Pid | Addr | Argv | Id | IdOut | IdList | IdListOut)

# ---- what an fd call does on a local copy's fd ------------------------------------------

ON_COPY = {
    "home": "forwarded to home's handle of the file (fstat, fchmod, ...)",
    "local": "runs on the local file; what it writes is written back",
    "cut": "runs on the local file; a cut below what stayed at home is noted first",
    "fill": "the part of the file that stayed at home is fetched, then it runs locally",
    "flush": "the file's changes are written back, then it is forwarded to home",
}

# ---- tags: classes a user can name (strace's %file style) -------------------------------

TAGS = ("file", "desc", "process", "signal", "identity", "memory", "network", "ipc",
        "time", "system", "creds")


@dataclass(frozen=True)
class Syscall:
    """One line of the table."""
    name: str
    x86_64: int | None
    aarch64: int | None
    args: tuple[ArgKind, ...] = ()
    route: Route = Route.LOCAL
    tags: frozenset[str] = frozenset()
    handler: str = ""        # IRREGULAR/IDENTITY: name of the code that handles it
    errno: str = ""          # DENY: the errno returned
    # BY_FD on an fd of a local copy (see ON_COPY): "home" forwards it to the copy's
    # handle, "local" lets the kernel run it (the data path), and so on.
    on_copy: str = "home"
    local_fd_native: bool = False  # on a local fd (arg 0) the call simply runs: decided in C
    # On a read-only copy's fd the call simply runs too, though it does not on a live one
    # (close: the stub learns of a read-only copy's last close from inotify, rocopies.py).
    ro_copy_native: bool = False
    level: Level = Level.FULL
    note: str = ""
    # Identity calls: the fields of the job's home identity they answer, in argument order
    # (getresuid: uid, euid, euid), or the one they return (getuid: uid).
    answer: tuple[str, ...] = ()
    # Forwarded calls that change a home file's data: how local copies of it are kept in
    # step ("truncate" by path, "ftruncate" of a placeholder).
    updates_copies: str = ""
    # Path calls whose answer depends only on the directory entries the path steps through
    # (stat, access, readlink, and their ENOENT): the stub keeps the answer until home says
    # one of those entries changed (homenode/watches.py).
    cached: bool = False
    # Fd calls that move a home handle's file position (a directory read): a home server
    # that takes a job over after its predecessor was killed puts the position back.
    seeks: bool = False

    @property
    def copy_local(self) -> bool:
        """Whether the kernel runs it on a local copy's fd without Python (decided in C)."""
        return self.on_copy == "local"

    @property
    def ro_copy_local(self) -> bool:
        """Whether the kernel runs it on a read-only copy's fd without Python (decided in C)."""
        return self.copy_local or self.ro_copy_native

    @property
    def trapped(self) -> bool:
        return self.route is not Route.LOCAL

    @property
    def forwardable(self) -> bool:
        """Whether this call may be executed by the home node's generic executor."""
        return self.route in (Route.BY_PATH, Route.BY_FD) and not self.handler

    @functools.cached_property
    def path_args(self) -> tuple[tuple[int, Path], ...]:
        """(index, kind) of every path argument (worked out once: every stop needs it)."""
        return tuple((i, k) for i, k in enumerate(self.args) if isinstance(k, Path))

    @functools.cached_property
    def at_flags_args(self) -> tuple[int, ...]:
        """Indices of the *at() flags arguments (where AT_EMPTY_PATH may be)."""
        return tuple(i for i, k in enumerate(self.args) if isinstance(k, Flags) and k.family == "at")

    @functools.cached_property
    def path_out_args(self) -> tuple[tuple[int, PathOut], ...]:
        return tuple((i, k) for i, k in enumerate(self.args) if isinstance(k, PathOut))

    @functools.cached_property
    def local_path_arg(self) -> int:
        """The argument index of the one path that decides this call's route, if an
        absolute local path there means "just run it" (-1 otherwise). Calls naming two
        paths, and chdir (which moves the virtual cwd), do not qualify."""
        paths = [i for i, _ in self.path_args]
        plain = self.route is Route.BY_PATH or (self.route is Route.IRREGULAR and
                                                self.handler in ("open", "creat", "openat2", "execve") and
                                                self.name != "execveat")
        return paths[0] if plain and len(paths) == 1 else -1

    def number(self, arch: str) -> int | None:
        return self.x86_64 if arch == "x86_64" else self.aarch64 if arch == "aarch64" else None
