"""Checks for values that arrive on the wire: types, ranges, lengths.

Both the argument codecs (for table calls) and the home node's own operations build their
request schemas from these; a value that does not fit raises BadRequest, which the home
node answers as an error without running anything.
"""

from __future__ import annotations

from collections.abc import Callable

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


def pieces(max_len: int) -> Check:
    """Bulk data as the data frames of a message brought it (wire.REQUEST_DATA_OPS): a list
    of buffers, at most `max_len` bytes in all."""
    def check(v: object) -> None:
        if not isinstance(v, list) or not all(isinstance(p, memoryview) for p in v):
            raise BadRequest(f"data frames expected, got {type(v).__name__}")
        if sum(len(p) for p in v) > max_len:
            raise BadRequest(f"more than {max_len} bytes")
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
