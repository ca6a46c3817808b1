"""inotify events as the kernel writes them (struct inotify_event), for both sides: home's
directory watches and the stub's read-only copies."""

from __future__ import annotations

import struct

EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


def events(data: bytes) -> list[tuple[int, int, bytes]]:
    """(wd, mask, name) of each inotify_event in a read's bytes."""
    out = []
    off = 0
    while off + EVENT.size <= len(data):
        wd, mask, _cookie, length = EVENT.unpack_from(data, off)
        name = data[off + EVENT.size: off + EVENT.size + length].rstrip(b"\0")
        out.append((wd, mask, name))
        off += EVENT.size + length
    return out
