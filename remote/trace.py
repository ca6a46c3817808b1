"""`qrun --trace[=SET]`: each trapped call of the job, with decoded arguments, its route
(local, home, copy, answered, denied), its result and its time, as strace prints them.

SET is strace's selection language over the table: `%file,%process` names tag classes,
`openat,stat` names calls, `!` or `-` before an entry excludes it; empty means all.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from qrun.remote.stop import Stop
from qrun.remote.tracee import Thread
from qrun.syscalls import abi
from qrun.syscalls import flags as wflags
from qrun.syscalls import model as m
from qrun.syscalls.codecs import s64
from qrun.syscalls.model import Route, Syscall
from qrun.syscalls.table import BY_NAME, TABLE


class BadSelection(ValueError):
    """A --trace set naming no call or class of the table."""


def select(spec: str) -> frozenset[str]:
    """The names of the calls a --trace SET selects."""
    trapped = {s.name for s in TABLE if s.trapped}
    chosen: set[str] = set()
    excluded: set[str] = set()
    items = [x.strip() for x in spec.split(",") if x.strip()]
    for item in items:
        neg = item[0] in "!-"
        name = item[1:] if neg else item
        names = _names(name, trapped)
        (excluded if neg else chosen).update(names)
    if not any(item[0] not in "!-" for item in items):
        chosen = set(trapped)
    return frozenset(chosen - excluded)


def _names(item: str, trapped: set[str]) -> set[str]:
    if item.startswith("%"):
        tag = item[1:]
        if tag not in m.TAGS:
            raise BadSelection(f"unknown class %{tag} (known: {', '.join('%' + t for t in m.TAGS)})")
        return {s.name for s in TABLE if tag in s.tags and s.name in trapped}
    if item == "all":
        return set(trapped)
    if item not in BY_NAME:
        raise BadSelection(f"unknown system call {item!r}")
    if item not in trapped:
        raise BadSelection(f"{item} is never trapped (it runs untouched on the execution host)")
    return {item}


@dataclass
class _Pending:
    sc: Syscall
    text: str
    seq: int
    start: float


class CallTrace:
    def __init__(self, names: frozenset[str], out: IO[str], home_pid: Callable[[int], int],
                 rpc_seq: Callable[[], int], mark: str = "") -> None:
        self.names = names
        self.mark = mark  # before each line, so home can tell trace lines from warnings
        self.out = out
        self.home_pid = home_pid
        self.rpc_seq = rpc_seq
        self._pending: dict[int, _Pending] = {}

    def forget(self, tid: int) -> None:
        """The thread is gone in the middle of a call (killed, or exec by another thread)."""
        self._pending.pop(tid, None)

    def waiting(self, tid: int) -> bool:
        """Whether the thread's traced call still needs its exit stop."""
        return tid in self._pending

    def begin(self, s: Stop) -> None:
        if s.sc.name in self.names:
            self._pending[s.tid] = _Pending(s.sc, _call_text(s), self.rpc_seq(), time.monotonic())

    def end(self, t: Thread, ret: int) -> None:
        p = self._pending.pop(t.tid, None)
        if p is None:
            return
        where = _route(p.sc, went_home=self.rpc_seq() > p.seq)
        took = time.monotonic() - p.start
        try:
            pid = self.home_pid(t.tid)
        except OSError:
            pid = t.tid
        self.out.write(f"{self.mark}[pid {pid}] {p.text} = {_result(ret)} <{where}> <{took:.6f}>\n")
        self.out.flush()


def _route(sc: Syscall, went_home: bool) -> str:
    if sc.route is Route.DENY:
        return "denied"
    if went_home:
        return "home"
    if sc.route is Route.IDENTITY:
        return "answered"
    return "local"


def _result(ret: int) -> str:
    r = s64(ret)
    if -4096 < r < 0:
        name = errno.errorcode.get(-r, str(-r))
        return f"-1 {name} ({os.strerror(-r)})"
    return str(r) if r < 1 << 20 else hex(r)


def _call_text(s: Stop) -> str:
    return f"{s.sc.name}({', '.join(_arg(s, i, k) for i, k in enumerate(s.sc.args))})"


def _arg(s: Stop, i: int, kind: object) -> str:
    v = s.arg(i)
    try:
        if isinstance(kind, (m.Path, m.Str)):
            return "NULL" if v == 0 else _quote(s.cstr(v))
    except OSError:
        return hex(v)
    if isinstance(kind, (m.Fd, m.DirFd, m.Pid, m.Id)):
        fd = s.sarg(i)
        return "AT_FDCWD" if isinstance(kind, m.DirFd) and fd == -100 else str(fd)
    if isinstance(kind, m.Flags):
        return _flags(kind.family, s.arch, v)
    if isinstance(kind, m.Int):
        return str(s.larg(i))
    return "NULL" if v == 0 else hex(v)


# at-flags: python-ptrace has no table of them.
_AT_FLAGS = ((abi.AT_SYMLINK_NOFOLLOW, "AT_SYMLINK_NOFOLLOW"), (0x200, "AT_REMOVEDIR"),
             (abi.AT_SYMLINK_FOLLOW, "AT_SYMLINK_FOLLOW"), (0x800, "AT_NO_AUTOMOUNT"),
             (abi.AT_EMPTY_PATH, "AT_EMPTY_PATH"))


def _flags(family: str, arch: str, v: int) -> str:
    """Flag words by name, as strace shows them; python-ptrace's tables for open(2) and
    clone(2) flags (whose bits it knows in x86_64's numbering: the wire's)."""
    from ptrace.syscall.posix_arg import CLONE_FLAGS_BITMASK, OPEN_FLAGS_BITMASK
    from ptrace.tools import readBits
    v &= 0xFFFFFFFF
    if family == "open":
        names = readBits(wflags.open_to_wire(arch, v), OPEN_FLAGS_BITMASK)
        if not names or names[0] not in ("O_WRONLY", "O_RDWR"):
            names.insert(0, "O_RDONLY")
        return "|".join(names)
    table = {"clone": CLONE_FLAGS_BITMASK, "at": _AT_FLAGS}.get(family)
    if table is None or v == 0:
        return hex(v) if v else "0"
    return "|".join(readBits(v, table))


def _quote(raw: bytes, limit: int = 64) -> str:
    text = raw[:limit].decode("utf-8", "backslashreplace").replace('"', '\\"')
    return f'"{text}"' + ("..." if len(raw) > limit else "")
