"""What the arguments of every request from a stub may be, checked before anything runs.

The stub is trusted with the job's identity, not with the home node's robustness: a
request of the wrong arity, a string where an integer belongs, an integer no C type holds
or a nested structure is answered with an error, never passed on to the code that acts.
Table calls get their checks from the syscall table's argument kinds (`for_syscall`); the
home node's own operations declare theirs in `OPS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qrun.syscalls.codecs import codec
from qrun.syscalls.model import Syscall
from qrun.syscalls.wirecheck import (  # noqa: F401 - part of this module's interface
    HANDLE,
    I32,
    I64,
    MAX_BUF,
    MAX_FETCH,
    MAX_STR,
    SIZE,
    STRING,
    U32,
    BadRequest,
    Check,
    boolean,
    data,
    integer,
    list_of,
    nothing,
    optional,
    path,
    pieces,
)


def _kill_pid(v: object) -> None:
    integer(-2**31, 2**31 - 1, "pid")(v)
    if v in (0, -1):
        raise BadRequest("kill: pid 0 and -1 are the job's own business")


# The home node's own operations (HomeOps.op_<name>), argument by argument.
OPS: dict[str, tuple[Check, ...]] = {
    # flags and mode are 64-bit for openat2 (open_how), 32-bit otherwise
    "open": (optional(HANDLE), path, integer(0, 2**64 - 1, "flags"), integer(0, 2**64 - 1, "mode"), boolean,
             optional(list_of(I64, 4)), optional(integer(0, 2**64 - 1, "resolve"))),
    "chdir": (optional(HANDLE), path),
    "fetch": (HANDLE, SIZE, integer(0, MAX_FETCH, "size")),
    # (the data last: it travels as the request's data frame, wire.REQUEST_DATA_OPS)
    "writeback": (HANDLE, SIZE, optional(SIZE), pieces(MAX_FETCH)),
    "deputy": (lambda v: _name(v),),
    "kill": (_kill_pid, integer(0, 64, "signal")),
    "fcntl": (HANDLE, I32, U32),
    "flock": (HANDLE, I32),
    "fcntl_lock": (HANDLE, I32, data(32, exact=32)),
}


def _name(v: object) -> None:
    if not isinstance(v, str) or len(v) > 64:
        raise BadRequest("a process name (a short string) expected")


def for_syscall(sc: Syscall) -> tuple[Check, ...]:
    return tuple(codec(k).checker(k) for k in sc.args)


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
