"""Kernel structures qrun reads, writes or sends, by name, for both architectures.

Every layout a handler or the home node needs is here, so no offset is written anywhere
else. `stat` differs between x86_64 and aarch64 and travels in a portable form (a list of
16 integers in STAT_FIELDS order); the other structures share one 64-bit layout and travel
as their bytes.
"""

from __future__ import annotations

import operator
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STAT_FIELDS = ("dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize",
               "blocks", "atime", "atime_ns", "mtime", "mtime_ns", "ctime", "ctime_ns")


@dataclass(frozen=True)
class Layout:
    """One C structure: its struct format and field names (padding has no name)."""
    fmt: str
    fields: tuple[str, ...]

    @property
    def size(self) -> int:
        return struct.calcsize(self.fmt)

    def unpack(self, raw: bytes) -> dict[str, Any]:
        return dict(zip(self.fields, struct.unpack_from(self.fmt, raw), strict=True))

    def pack(self, **values: int) -> bytes:
        return struct.pack(self.fmt, *(values.get(f, 0) for f in self.fields))

    def offset(self, name: str) -> int:
        """Where field `name` starts (for reading or patching one field in place)."""
        before, named = self.fmt[0], 0
        for code in _codes(self.fmt[1:]):
            if code[-1] != "x":
                if self.fields[named] == name:
                    return struct.calcsize(before)
                named += 1
            before += code
        raise KeyError(name)

    def field_format(self, name: str) -> str:
        codes = [c for c in _codes(self.fmt[1:]) if c[-1] != "x"]
        return self.fmt[0] + codes[self.fields.index(name)]


def _codes(fmt: str) -> list[str]:
    """'hh4xq' -> ['h', 'h', '4x', 'q'] (a count sticks to its code)."""
    out, count = [], ""
    for ch in fmt:
        if ch.isdigit():
            count += ch
        else:
            out.append(count + ch)
            count = ""
    return out


def _opaque(size: int) -> Layout:
    return Layout(f"<{size}s", ("raw",))


_STAT_X86_64 = Layout("<QQQIIIiQqqqqqqqqq24x",
                      ("dev", "ino", "nlink", "mode", "uid", "gid", "pad", "rdev", "size", "blksize",
                       "blocks", "atime", "atime_ns", "mtime", "mtime_ns", "ctime", "ctime_ns"))
_STAT_AARCH64 = Layout("<QQIIIIQ8xqi4xqqQqQqQ8x",
                       ("dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize",
                        "blocks", "atime", "atime_ns", "mtime", "mtime_ns", "ctime", "ctime_ns"))
_COMMON: dict[str, Layout] = {
    "statx": _opaque(256),
    "statfs": _opaque(120),
    "timespec2": _opaque(32),
    "timeval2": _opaque(32),
    "utimbuf": _opaque(16),
    "flock": Layout("<hh4xqqi4x", ("type", "whence", "start", "len", "pid")),
    "open_how": Layout("<QQQ", ("flags", "mode", "resolve")),
    "timespec": Layout("<qq", ("sec", "nsec")),
    "siginfo": Layout("<iii4xii104x", ("signo", "errno", "code", "pid", "uid")),
    "clone_args": Layout("<QQQQQQQQQQQ", ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal",
                                          "stack", "stack_size", "tls", "set_tid", "set_tid_size",
                                          "cgroup")),
    "utsname": Layout("<65s65s65s65s65s65s", ("sysname", "nodename", "release", "version",
                                              "machine", "domainname")),
    "id": Layout("<I", ("value",)),          # uid_t / gid_t
    "pid": Layout("<i", ("value",)),         # pid_t in memory (TIOCGPGRP and the like)
    "pointer": Layout("<Q", ("value",)),
    "winsize": Layout("<HHHH", ("rows", "cols", "xpixel", "ypixel")),
}
LAYOUTS: dict[str, dict[str, Layout]] = {
    "x86_64": {"stat": _STAT_X86_64, **_COMMON},
    "aarch64": {"stat": _STAT_AARCH64, **_COMMON},
}
SIZES: dict[str, dict[str, int]] = {arch: {name: lay.size for name, lay in by.items()}
                                    for arch, by in LAYOUTS.items()}


def layout(arch: str, name: str) -> Layout:
    return LAYOUTS[arch][name]


def stat_to_wire(arch: str, raw: bytes) -> list[int]:
    st = LAYOUTS[arch]["stat"].unpack(raw)
    return [st[f] for f in STAT_FIELDS]


def stat_result_to_wire(st: os.stat_result) -> list[int]:
    """The wire form of a stat the home node made with os.stat."""
    return [st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
            st.st_size, st.st_blksize, st.st_blocks,
            st.st_atime_ns // 10**9, st.st_atime_ns % 10**9,
            st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9,
            st.st_ctime_ns // 10**9, st.st_ctime_ns % 10**9]


def _stat_packer(arch: str) -> Callable[[list[int]], bytes]:
    """The wire form of a stat to the architecture's struct stat, in two C calls (every
    stat the stub answers from its cache goes through here)."""
    lay = LAYOUTS[arch]["stat"]
    packer = struct.Struct(lay.fmt)
    # (the wire form with a 0 appended: named fields that do not travel, "pad", read it)
    where = [STAT_FIELDS.index(f) if f in STAT_FIELDS else len(STAT_FIELDS) for f in lay.fields]
    pick = operator.itemgetter(*where)
    return lambda v: packer.pack(*pick([*v, 0]))


_STAT_PACKERS = {arch: _stat_packer(arch) for arch in LAYOUTS}


def stat_from_wire(arch: str, v: list[int]) -> bytes:
    return _STAT_PACKERS[arch](v)


def struct_to_wire(arch: str, type_: str, raw: bytes) -> object:
    return stat_to_wire(arch, raw) if type_ == "stat" else raw


def struct_from_wire(arch: str, type_: str, value: object) -> bytes:
    if type_ == "stat":
        if not isinstance(value, list) or len(value) != len(STAT_FIELDS):
            raise ValueError("malformed stat")
        try:
            return stat_from_wire(arch, value)
        except struct.error:  # (a field that is no integer, or does not fit)
            raise ValueError("malformed stat") from None
    if not isinstance(value, bytes) or len(value) > SIZES[arch][type_]:
        raise ValueError(f"malformed {type_}")
    return value
