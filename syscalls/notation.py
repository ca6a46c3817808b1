"""The notation the syscall table is written in: one helper per route (P by-path, F by-fd,
X irregular, I identity, D denied, L local), the short names of common argument kinds
and tags, and the list the helpers append to."""

from __future__ import annotations

from qrun.syscalls.model import (
    ON_COPY,
    Addr,
    Argv,
    DirFd,
    Fd,
    Flags,
    Id,
    IdOut,
    Int,
    Level,
    Path,
    Pid,
    Route,
    Str,
    Syscall,
)

FULL, PARTIAL, LOCAL_LEVEL, DENIED = Level.FULL, Level.PARTIAL, Level.LOCAL, Level.DENIED

# Tags double as the user's selection language (`--trace=%file`), as in strace.
FILE, DESC, PROCESS, SIGNAL, IDENT = (frozenset({t}) for t in
                                      ("file", "desc", "process", "signal", "identity"))
MEMORY, NETWORK, IPC, TIME, SYSTEM, CREDS = (frozenset({t}) for t in
                                             ("memory", "network", "ipc", "time", "system", "creds"))

INT, ATFLAGS, OFLAGS = Int(), Flags("at"), Flags("open")
FD, DIRFD, PATH, LPATH, STR, PID = Fd(), DirFd(), Path(), Path(follow=False), Str(), Pid()
ADDR, ARGV, ID, IDOUT = Addr(), Argv(), Id(), IdOut()

TABLE: list[Syscall] = []

__all__ = ["TABLE", "A", "P", "F", "X", "I", "D", "L", "FULL", "PARTIAL", "LOCAL_LEVEL", "DENIED",
           "FILE", "DESC", "PROCESS", "SIGNAL", "IDENT", "MEMORY", "NETWORK", "IPC", "TIME", "SYSTEM",
           "CREDS", "INT", "ATFLAGS", "OFLAGS", "FD", "DIRFD", "PATH", "LPATH", "STR", "PID", "ADDR",
           "ARGV", "ID", "IDOUT", "UNTRAPPED_DATA"]


# The data calls on fds are never trapped: a home regular file is a local file here (a
# copy, written back if the job writes it), and a home directory a local empty one.
UNTRAPPED_DATA = ("a home regular file is a local file here, so the kernel runs it; on a home "
                  "directory it fails as natively (EISDIR); on a file the job may write but not "
                  "read, and on other home files that are neither, it fails with EBADF")


def A(*kinds: object) -> tuple:  # noqa: N802 - part of the table's notation
    return tuple(kinds)


def P(name: str, x: int | None, a: int | None, args: tuple,  # noqa: N802
      note: str = "", level: Level = FULL, tags: frozenset[str] = FILE, updates: str = "",
      cached: bool = False) -> None:
    """Path call: forwarded when its path routes home. `updates`: see Syscall.updates_copies;
    `cached`: see Syscall.cached."""
    TABLE.append(Syscall(name, x, a, args, Route.BY_PATH, tags, note=note, level=level,
                         updates_copies=updates, cached=cached))


def F(name: str, x: int | None, a: int | None, args: tuple,  # noqa: N802
      note: str = "", level: Level = FULL, tags: frozenset[str] = DESC,
      copy: str = "home", updates: str = "", seeks: bool = False) -> None:
    """Fd call: forwarded when its fd is a home file. `copy`: what it does on the fd of a
    local copy (model.ON_COPY); by default it is asked of home. `seeks`: see Syscall.seeks."""
    assert copy in ON_COPY, f"{name}: unknown copy= {copy!r}"
    TABLE.append(Syscall(name, x, a, args, Route.BY_FD, tags,
                         note=note, level=level, on_copy=copy, local_fd_native=True,
                         updates_copies=updates, seeks=seeks))


def X(name: str, x: int | None, a: int | None, handler: str, args: tuple,  # noqa: N802
      tags: frozenset[str], errno: str = "", note: str = "",
      level: Level = FULL, local_fd: bool = False, answer: tuple[str, ...] = (),
      ro_copy: bool = False) -> None:
    """Irregular call: handled by the code named `handler`. `local_fd`: on a local fd
    (argument 0) the handler would do nothing, so the call runs without it; `ro_copy`: on
    a read-only copy's fd neither (see Syscall.ro_copy_native)."""
    TABLE.append(Syscall(name, x, a, args, Route.IRREGULAR, tags, handler=handler,
                         errno=errno, note=note, level=level, local_fd_native=local_fd,
                         answer=answer, ro_copy_native=ro_copy))


def I(name: str, x: int | None, a: int | None, handler: str, args: tuple = (),  # noqa: N802, E741, E743
      answer: tuple[str, ...] = (), note: str = "") -> None:
    """Identity call: answered from the job's home identity (`answer` names its fields)."""
    TABLE.append(Syscall(name, x, a, args, Route.IDENTITY, IDENT, handler=handler,
                         note=note, answer=answer))


def D(name: str, x: int | None, a: int | None, errno: str, tags: frozenset[str],  # noqa: N802
      note: str = "") -> None:
    """Denied call: fails with `errno` and one warning line."""
    TABLE.append(Syscall(name, x, a, (), Route.DENY, tags, errno=errno, note=note,
                         level=DENIED))


def L(name: str, x: int | None, a: int | None, tags: frozenset[str], note: str = "") -> None:  # noqa: N802
    """Local call: never trapped."""
    TABLE.append(Syscall(name, x, a, (), Route.LOCAL, tags, level=LOCAL_LEVEL, note=note))
