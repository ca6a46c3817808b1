"""Portable encodings of flag words whose bits differ between architectures.

The wire carries x86_64's values; each side converts from/to its own ABI.
"""

from __future__ import annotations

# open(2) flags that aarch64 numbers differently from x86_64.
_OPEN_DIFF = {  # name: (x86_64, aarch64)
    "O_DIRECT": (0o40000, 0o200000),
    "O_LARGEFILE": (0o100000, 0o400000),
    "O_DIRECTORY": (0o200000, 0o40000),
    "O_NOFOLLOW": (0o400000, 0o100000),
}


def _convert(value: int, src: int, dst: int) -> int:
    moved = 0
    mask = 0
    for pair in _OPEN_DIFF.values():
        mask |= pair[src]
        if value & pair[src]:
            moved |= pair[dst]
    return (value & ~mask) | moved


def open_to_wire(arch: str, value: int) -> int:
    return value if arch == "x86_64" else _convert(value, 1, 0)


def open_from_wire(arch: str, value: int) -> int:
    return value if arch == "x86_64" else _convert(value, 0, 1)
