"""The C wait loop's share of the table: which stops it may settle without Python.

Calls on local fds that need nothing from the tracer, and path calls whose (absolute)
path the policy keeps local, are resumed inside `qr_wait_filtered` (about half the cost of
a stop handled in Python). Everything it is given is computed here from the syscall table
and the same PathPolicy the Python side uses, so the two cannot drift apart.
"""

from __future__ import annotations

import os

from qrun.native import ffi, lib
from qrun.remote import procpaths
from qrun.remote.fds import FdSpace
from qrun.remote.tracee import Regs
from qrun.syscalls.model import DirFd, Syscall
from qrun.syscalls.paths import PathPolicy

FAST_BITS = 1024


def policy_bytes(policy: PathPolicy) -> bytes:
    """The path policy as the C loop reads it: kind letter, prefix, NUL, for each entry
    (L local, H home, P and N: /proc and /dev paths only the tracer may decide)."""
    def entries(kind: bytes, prefixes: list[str]) -> bytes:
        return b"".join(kind + os.fsencode(p) + b"\0" for p in prefixes)
    return (entries(b"L", policy.local) + entries(b"H", policy.home)
            + entries(b"P", list(procpaths.ASK_TRACER)) + entries(b"N", list(procpaths.ASK_TRACER_NUMBERED)))


def _bitmap(numbers: object) -> bytes:
    bits = bytearray(FAST_BITS // 8)
    for n in numbers:  # type: ignore[attr-defined]
        if n is not None and 0 <= n < FAST_BITS:
            bits[n // 8] |= 1 << (n % 8)
    return bytes(bits)


class FastPath:
    def __init__(self, arch: str, by_nr: dict[int, Syscall], fds: FdSpace, policy: PathPolicy,
                 regs: Regs, enabled: bool = True) -> None:
        self.enabled = enabled
        self.regs = regs
        calls = list(by_nr.values())
        self._local_ok = _bitmap(s.number(arch) for s in calls if s.local_fd_native)
        self._copy_ok = _bitmap(s.number(arch) for s in calls if s.copy_local)
        self._ro_ok = _bitmap(s.number(arch) for s in calls if s.ro_copy_local)
        self._ph_prefix = os.fsencode(fds.ph_dir + "/")
        self._copy_prefix = os.fsencode(fds.copies_dir + "/")
        self._ro_prefix = os.fsencode(fds.ro_dir + "/")
        self._have_regs = ffi.new("int *")  # the C wait loop already read this stop's registers
        # By number: the path argument the loop routes by, and the dirfd before it that an
        # empty path names (AT_EMPTY_PATH): on a local fd such a call runs in the loop too
        # (glibc's fstat is newfstatat(fd, "", buf, AT_EMPTY_PATH)).
        path_arg, empty = [-1] * FAST_BITS, [-1] * FAST_BITS
        for s in calls:
            n, pa = s.number(arch), s.local_path_arg
            if n is not None and n < FAST_BITS:
                path_arg[n] = pa
                if pa > 0 and isinstance(s.args[pa - 1], DirFd):
                    empty[n] = pa - 1
        self._path_arg = ffi.new("signed char[]", path_arg)
        lib.qr_set_empty_path_dirfd(ffi.new("signed char[]", empty), FAST_BITS)
        self._policy = policy_bytes(policy)
        self._seen = ffi.new("char[]", 4096)
        self._seen_kind = ffi.new("int *")

    @property
    def have_regs(self) -> bool:
        return bool(self._have_regs[0])

    def seen(self) -> tuple[int, bytes]:
        """What the C loop read to decide the stop it returned: (QR_SEEN_*, the bytes)."""
        kind = int(self._seen_kind[0])
        return kind, (ffi.string(self._seen) if kind != lib.QR_SEEN_NONE else b"")

    def wait(self, status: object, answers_until: int = 0) -> int:
        """The next stop for Python; `answers_until`: the deadline for the loop's own
        answers (loopanswers.py)."""
        if not self.enabled:
            self._have_regs[0] = 0
            self._seen_kind[0] = lib.QR_SEEN_NONE
            return int(lib.qr_wait(status))
        return int(lib.qr_wait_filtered(status, self._local_ok, self._copy_ok, self._ro_ok,
                                        FAST_BITS, self._ph_prefix, self._copy_prefix,
                                        self._ro_prefix, self._path_arg, self._policy,
                                        len(self._policy), self.regs.raw, self._have_regs,
                                        self._seen, 4096, self._seen_kind, answers_until))
