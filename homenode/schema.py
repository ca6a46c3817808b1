"""What the arguments of every request from a stub may be, checked before anything runs.

The stub is trusted with the job's identity, not with the home node's robustness: a
request of the wrong arity, a string where an integer belongs, an integer no C type holds
or a nested structure is answered with an error, never passed on to the code that acts.
Table calls get their checks from the syscall table's argument kinds (`for_syscall`); the
home node's own operations declare theirs in `OPS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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

MAX_BUF = 8 << 20       # largest buffer a single call moves (the stub splits larger ones)
MAX_STR = 4096          # PATH_MAX, and the longest string argument we pass on
MAX_FETCH = 64 << 20


class BadRequest(ValueError):
    """A request that does not fit its schema: answered with an error, never executed."""


Check = Callable[[object], None]


def integer(lo: int, hi: int, what: str = "integer") -> Check:
    def check(v: object) -> None:
        if not isinstance(v, int) or isinstance(v, bool):
            raise BadRequest(f"{what} expected, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise BadRequest(f"{what} out of range: {v}")
    return check


def optional(inner: Check) -> Check:
    def check(v: object) -> None:
        if v is not None:
            inner(v)
    return check


def boolean(v: object) -> None:
    if not isinstance(v, bool):
        raise BadRequest("boolean expected")


def data(max_len: int, nul_ok: bool = True, exact: int | None = None) -> Check:
    def check(v: object) -> None:
        if not isinstance(v, bytes):
            raise BadRequest(f"bytes expected, got {type(v).__name__}")
        if len(v) > max_len or (exact is not None and len(v) != exact):
            raise BadRequest(f"{len(v)} bytes where at most {exact or max_len} fit")
        if not nul_ok and b"\0" in v:
            raise BadRequest("string contains NUL")
    return check


HANDLE = integer(1, 2**62, "handle")
I32 = integer(-2**31, 2**31 - 1)
U32 = integer(0, 2**32 - 1)
I64 = integer(-2**63, 2**63 - 1)
SIZE = integer(0, 2**62)
STRING = data(MAX_STR, nul_ok=False)


def path(v: object) -> None:
    """A path: bytes without NUL, or [handle] (that handle's own file, see executor)."""
    if isinstance(v, list):
        if len(v) != 1:
            raise BadRequest("an fd path is [handle]")
        HANDLE(v[0])
        return
    STRING(v)


def list_of(inner: Check, n: int) -> Check:
    def check(v: object) -> None:
        if not isinstance(v, list) or len(v) != n:
            raise BadRequest(f"a list of {n} expected")
        for x in v:
            inner(x)
    return check


def nothing(v: object) -> None:
    if v is not None:
        raise BadRequest("nothing expected")


def _kill_pid(v: object) -> None:
    integer(-2**31, 2**31 - 1, "pid")(v)
    if v in (0, -1):
        raise BadRequest("kill: pid 0 and -1 are the job's own business")


# The home node's own operations (HomeServer.op_<name>), argument by argument.
OPS: dict[str, tuple[Check, ...]] = {
    # flags and mode are 64-bit for openat2 (open_how), 32-bit otherwise
    "open": (optional(HANDLE), path, integer(0, 2**64 - 1, "flags"), integer(0, 2**64 - 1, "mode"), boolean,
             optional(list_of(I64, 4)), optional(integer(0, 2**64 - 1, "resolve"))),
    "chdir": (optional(HANDLE), path),
    "fetch": (HANDLE, SIZE, integer(0, MAX_FETCH, "size")),
    "deputy": (lambda v: _name(v),),
    "kill": (_kill_pid, integer(0, 64, "signal")),
    "fcntl": (HANDLE, I32, U32),
    "flock": (HANDLE, I32),
    "fcntl_lock": (HANDLE, I32, data(32, exact=32)),
}


def _name(v: object) -> None:
    if not isinstance(v, str) or len(v) > 64:
        raise BadRequest("a process name (a short string) expected")


def _kind_check(kind: object) -> Check:
    if isinstance(kind, Fd):
        return HANDLE
    if isinstance(kind, DirFd):
        return optional(HANDLE)
    if isinstance(kind, Path):
        return optional(path)
    if isinstance(kind, Str):
        return STRING
    if isinstance(kind, Flags):
        return U32
    if isinstance(kind, Int):
        return I64
    if isinstance(kind, Pid):
        return I32
    if isinstance(kind, BufIn):
        return data(MAX_BUF)
    if isinstance(kind, (BufOut, PathOut)):
        return integer(0, MAX_BUF, "buffer size")
    if isinstance(kind, StructIn):
        return optional(data(4096))
    if isinstance(kind, StructOut):
        return nothing
    if isinstance(kind, (IovIn, IovOut)):
        def refuse(v: object) -> None:
            raise BadRequest("iovec calls are sent as their plain forms")
        return refuse
    raise AssertionError(f"no check for argument kind {kind!r}")


def for_syscall(sc: Syscall) -> tuple[Check, ...]:
    return tuple(_kind_check(k) for k in sc.args)


def check(name: str, checks: Sequence[Check], args: object) -> list[Any]:
    """args, if they fit `checks` (arity first); else BadRequest naming the argument."""
    if not isinstance(args, list):
        raise BadRequest(f"{name}: arguments must be a list")
    if len(args) != len(checks):
        raise BadRequest(f"{name}: {len(checks)} arguments expected, got {len(args)}")
    for i, (c, v) in enumerate(zip(checks, args, strict=True)):
        try:
            c(v)
        except BadRequest as exc:
            raise BadRequest(f"{name}: argument {i}: {exc}") from None
    return args


def each(name: str, item: Check, values: object) -> list[Any]:
    """A list of any length whose every element fits `item`."""
    if not isinstance(values, list) or len(values) > 1 << 16:
        raise BadRequest(f"{name}: a list expected")
    return check(name, [item] * len(values), values)
