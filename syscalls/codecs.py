"""One codec per argument kind: everything qrun knows about a kind of syscall argument.

A codec says
- how the stub reads the argument out of the stopped tracee into its wire form
  (`encode`), and writes a reply's output for it back into the tracee (`decode`);
- what that wire form may be (`check`: the home node applies it before anything runs);
- how the home node turns the wire form into the C argument of the real call (`to_c`),
  and reads the argument's output after it (`output`).

Adding an argument kind is one class here and one entry in CODECS; a test checks that every
kind of the model has a codec. Kinds that never travel (identity and process calls are not
forwarded) encode to nothing and refuse to be executed at home.
"""

from __future__ import annotations

from typing import Any, Protocol

from qrun.syscalls import flags as wflags
from qrun.syscalls import model as m
from qrun.syscalls import structs
from qrun.syscalls.wirecheck import (
    HANDLE,
    I32,
    I64,
    MAX_BUF,
    STRING,
    U32,
    BadRequest,
    Check,
    data,
    integer,
    nothing,
    optional,
    path,
)

MAX_IO = 8 << 20      # larger buffers to and from home (getdents, xattrs) are cut, as POSIX allows


def s64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


class Tracee(Protocol):
    """The stub's view of one stopped call."""
    arch: str

    def arg(self, i: int) -> int: ...
    def read(self, addr: int, size: int) -> bytes: ...
    def write(self, addr: int, data: bytes) -> None: ...
    def cstr(self, addr: int) -> bytes: ...


class Outgoing(Protocol):
    """What the stub resolved before marshalling: where paths lead, the home handle."""
    handle: int | None

    def wire_path(self, i: int) -> bytes | list[int] | None: ...
    def wire_dirfd(self, i: int) -> int | None: ...


class HomeCall(Protocol):
    """The home node's side of one call being built."""
    arch: str

    def fd(self, handle: object) -> int: ...
    def dirfd(self, i: int, handle: object) -> int: ...
    def path(self, i: int, value: object) -> int: ...
    def buffer(self, data: bytes | int) -> Any: ...
    def address(self, buf: Any) -> int: ...
    def contents(self, buf: Any, size: int | None = None) -> bytes: ...
    def size_is(self, i: int, n: int) -> None: ...


class Codec:
    """An argument that travels as a plain integer."""
    check = staticmethod(I64)

    def encode(self, kind: Any, i: int, t: Tracee, out: Outgoing) -> Any:
        return s64(t.arg(i))

    def decode(self, kind: Any, i: int, t: Tracee, value: object) -> None:
        raise BadRequest("this argument has no output")

    def to_c(self, kind: Any, i: int, v: Any, h: HomeCall) -> tuple[int, Any]:
        """(the C argument, a buffer whose contents `output` returns, or None)."""
        return int(v), None

    def output(self, kind: Any, h: HomeCall, buf: Any, ret: int) -> Any:
        return None

    def checker(self, kind: Any) -> Check:
        return self.check


class FlagsCodec(Codec):
    check = staticmethod(U32)

    def encode(self, kind: m.Flags, i: int, t: Tracee, out: Outgoing) -> Any:
        v = t.arg(i) & 0xFFFFFFFF
        return wflags.open_to_wire(t.arch, v) if kind.family == "open" else v

    def to_c(self, kind: m.Flags, i: int, v: Any, h: HomeCall) -> tuple[int, Any]:
        return (wflags.open_from_wire(h.arch, v) if kind.family == "open" else v), None


class PidCodec(Codec):
    check = staticmethod(I32)

    def encode(self, kind: Any, i: int, t: Tracee, out: Outgoing) -> Any:
        return s32(t.arg(i))


class FdCodec(Codec):
    check = staticmethod(HANDLE)

    def encode(self, kind: Any, i: int, t: Tracee, out: Outgoing) -> Any:
        return out.handle

    def to_c(self, kind: Any, i: int, v: Any, h: HomeCall) -> tuple[int, Any]:
        return h.fd(v), None


class DirFdCodec(Codec):
    check = staticmethod(optional(HANDLE))

    def encode(self, kind: Any, i: int, t: Tracee, out: Outgoing) -> Any:
        return out.wire_dirfd(i + 1)

    def to_c(self, kind: Any, i: int, v: Any, h: HomeCall) -> tuple[int, Any]:
        return h.dirfd(i, v), None


class PathCodec(Codec):
    check = staticmethod(optional(path))

    def encode(self, kind: Any, i: int, t: Tracee, out: Outgoing) -> Any:
        return out.wire_path(i)

    def to_c(self, kind: Any, i: int, v: Any, h: HomeCall) -> tuple[int, Any]:
        return h.path(i, v), None


class StrCodec(Codec):
    check = staticmethod(STRING)

    def encode(self, kind: Any, i: int, t: Tracee, out: Outgoing) -> Any:
        return t.cstr(t.arg(i))

    def to_c(self, kind: Any, i: int, v: Any, h: HomeCall) -> tuple[int, Any]:
        return h.address(h.buffer(v + b"\0")), None


def _clamped(t: Tracee, size_index: int) -> int:
    return max(0, min(s64(t.arg(size_index)), MAX_IO))


class BufInCodec(Codec):
    check = staticmethod(data(MAX_BUF))

    def encode(self, kind: m.BufIn, i: int, t: Tracee, out: Outgoing) -> Any:
        return t.read(t.arg(i), _clamped(t, kind.size))

    def to_c(self, kind: m.BufIn, i: int, v: Any, h: HomeCall) -> tuple[int, Any]:
        h.size_is(kind.size, len(v))
        return h.address(h.buffer(v)), None


class BufOutCodec(Codec):
    """BufOut and PathOut: the home node allocates, the return value counts the bytes."""
    check = staticmethod(integer(0, MAX_BUF, "buffer size"))

    def encode(self, kind: m.BufOut, i: int, t: Tracee, out: Outgoing) -> Any:
        return _clamped(t, kind.size)

    def decode(self, kind: m.BufOut, i: int, t: Tracee, value: object) -> None:
        if not isinstance(value, bytes):
            raise BadRequest("output bytes expected")
        t.write(t.arg(i), value[:_clamped(t, kind.size)])

    def to_c(self, kind: m.BufOut, i: int, v: Any, h: HomeCall) -> tuple[int, Any]:
        buf = h.buffer(int(v))
        h.size_is(kind.size, int(v))
        return h.address(buf), buf

    def output(self, kind: Any, h: HomeCall, buf: Any, ret: int) -> Any:
        return h.contents(buf, ret)


class StructInCodec(Codec):
    def checker(self, kind: m.StructIn) -> Check:
        return optional(data(4096))

    def encode(self, kind: m.StructIn, i: int, t: Tracee, out: Outgoing) -> Any:
        v = t.arg(i)
        return None if v == 0 else t.read(v, structs.SIZES[t.arch][kind.type])

    def to_c(self, kind: m.StructIn, i: int, v: Any, h: HomeCall) -> tuple[int, Any]:
        if v is None:
            return 0, None
        if len(v) != structs.SIZES[h.arch][kind.type]:
            raise BadRequest(f"{kind.type}: wrong size")
        return h.address(h.buffer(v)), None


class StructOutCodec(Codec):
    check = staticmethod(nothing)

    def encode(self, kind: Any, i: int, t: Tracee, out: Outgoing) -> Any:
        return None

    def decode(self, kind: m.StructOut, i: int, t: Tracee, value: object) -> None:
        try:
            t.write(t.arg(i), structs.struct_from_wire(t.arch, kind.type, value))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    def to_c(self, kind: m.StructOut, i: int, v: Any, h: HomeCall) -> tuple[int, Any]:
        buf = h.buffer(structs.SIZES[h.arch][kind.type])
        return h.address(buf), buf

    def output(self, kind: m.StructOut, h: HomeCall, buf: Any, ret: int) -> Any:
        return structs.struct_to_wire(h.arch, kind.type, h.contents(buf))


class LocalOnlyCodec(Codec):
    """Kinds of calls the stub answers itself (identity, processes): never sent home."""

    def checker(self, kind: Any) -> Check:
        def refuse(v: object) -> None:
            raise BadRequest(f"{type(kind).__name__} arguments are never executed at home")
        return refuse

    def to_c(self, kind: Any, i: int, v: Any, h: HomeCall) -> tuple[int, Any]:
        raise BadRequest(f"{type(kind).__name__} arguments are never executed at home")


_BUF_OUT = BufOutCodec()
_LOCAL = LocalOnlyCodec()
CODECS: dict[type, Codec] = {
    m.Int: Codec(), m.Flags: FlagsCodec(), m.Fd: FdCodec(), m.DirFd: DirFdCodec(),
    m.Path: PathCodec(), m.Str: StrCodec(), m.BufIn: BufInCodec(), m.BufOut: _BUF_OUT,
    m.PathOut: _BUF_OUT, m.StructIn: StructInCodec(),
    m.StructOut: StructOutCodec(), m.Pid: PidCodec(),
    m.Addr: _LOCAL, m.Argv: _LOCAL, m.Id: _LOCAL, m.IdOut: _LOCAL, m.IdList: _LOCAL,
    m.IdListOut: _LOCAL,
}


def codec(kind: object) -> Codec:
    return CODECS[type(kind)]
