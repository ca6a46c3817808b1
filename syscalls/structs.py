"""Kernel structures that cross the wire.

`stat` has a different layout on x86_64 and aarch64, so it travels in a portable form (a
list of 16 integers in FIELDS order); the other structures we pass have one 64-bit layout.
"""

from __future__ import annotations

import struct

STAT_FIELDS = ("dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize",
               "blocks", "atime", "atime_ns", "mtime", "mtime_ns", "ctime", "ctime_ns")

_STAT_X86_64 = struct.Struct("<QQQIIIiQqqqqqqqqq24x")
_STAT_AARCH64 = struct.Struct("<QQIIIIQ8xqi4xqqQqQqQ8x")

SIZES: dict[str, dict[str, int]] = {
    "x86_64": {"stat": _STAT_X86_64.size, "statx": 256, "statfs": 120, "timespec2": 32,
               "timeval2": 32, "utimbuf": 16, "flock": 32, "open_how": 24},
    "aarch64": {"stat": _STAT_AARCH64.size, "statx": 256, "statfs": 120, "timespec2": 32,
                "timeval2": 32, "utimbuf": 16, "flock": 32, "open_how": 24},
}


def stat_to_wire(arch: str, raw: bytes) -> list[int]:
    if arch == "x86_64":
        (dev, ino, nlink, mode, uid, gid, _pad, rdev, size, blksize, blocks,
         at, atn, mt, mtn, ct, ctn) = _STAT_X86_64.unpack(raw[:_STAT_X86_64.size])
    else:
        (dev, ino, mode, nlink, uid, gid, rdev, size, blksize, blocks,
         at, atn, mt, mtn, ct, ctn) = _STAT_AARCH64.unpack(raw[:_STAT_AARCH64.size])
    return [dev, ino, mode, nlink, uid, gid, rdev, size, blksize, blocks,
            at, atn, mt, mtn, ct, ctn]


def stat_from_wire(arch: str, v: list[int]) -> bytes:
    dev, ino, mode, nlink, uid, gid, rdev, size, blksize, blocks, at, atn, mt, mtn, ct, ctn = v
    if arch == "x86_64":
        return _STAT_X86_64.pack(dev, ino, nlink, mode, uid, gid, 0, rdev, size, blksize,
                                 blocks, at, atn, mt, mtn, ct, ctn)
    return _STAT_AARCH64.pack(dev, ino, mode, nlink, uid, gid, rdev, size, blksize, blocks,
                              at, atn, mt, mtn, ct, ctn)


def struct_to_wire(arch: str, type_: str, raw: bytes) -> object:
    return stat_to_wire(arch, raw) if type_ == "stat" else raw


def struct_from_wire(arch: str, type_: str, value: object) -> bytes:
    if type_ == "stat":
        if not (isinstance(value, list) and len(value) == 16 and all(isinstance(x, int) for x in value)):
            raise ValueError("malformed stat")
        return stat_from_wire(arch, value)
    if not isinstance(value, bytes) or len(value) > SIZES[arch][type_]:
        raise ValueError(f"malformed {type_}")
    return value
