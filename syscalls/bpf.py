"""Derive the seccomp filter from the table: trapped entries stop, LOCAL ones run.

The program is a binary search over runs of syscall numbers that share an action, so
any syscall costs about log2(runs) comparisons (~8) instead of a linear scan.
"""

from __future__ import annotations

import struct

from qrun.syscalls.model import Route
from qrun.syscalls.table import TABLE

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

RET_ALLOW = 0x7FFF0000
RET_TRACE = 0x7FF00000
RET_ERRNO = 0x00050000
ENOSYS = 38
X32_SYSCALL_BIT = 0x40000000

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JA = 0x05
_RET_K = 0x06

Insn = tuple[int, int, int, int]


def actions(arch: str) -> list[tuple[int, int]]:
    """(first syscall number, action) runs covering 0..infinity."""
    allowed = {n for s in TABLE if s.route is Route.LOCAL and (n := s.number(arch)) is not None}
    top = max(n for s in TABLE if (n := s.number(arch)) is not None) + 1
    runs: list[tuple[int, int]] = []
    for nr in range(top + 1):
        act = RET_ALLOW if nr in allowed else RET_TRACE
        if not runs or runs[-1][1] != act:
            runs.append((nr, act))
    return runs


def _tree(runs: list[tuple[int, int]]) -> list[Insn]:
    if len(runs) == 1:
        return [(_RET_K, 0, 0, runs[0][1])]
    mid = len(runs) // 2
    left, right = _tree(runs[:mid]), _tree(runs[mid:])
    # JGE falls through to a JA over the left subtree: conditional jumps only reach 255
    # instructions, JA reaches any distance.
    return [(_JGE_K, 0, 1, runs[mid][0]), (_JA, 0, 0, len(left))] + left + right


def program(arch: str) -> list[Insn]:
    prog: list[Insn] = [
        (_LD_W_ABS, 0, 0, 4),                       # seccomp_data.arch
        (_JEQ_K, 1, 0, AUDIT_ARCH[arch]),
        (_RET_K, 0, 0, RET_ERRNO | ENOSYS),         # another ABI (i386 int 0x80): refuse
        (_LD_W_ABS, 0, 0, 0),                       # seccomp_data.nr
    ]
    if arch == "x86_64":
        prog += [(_JGE_K, 0, 1, X32_SYSCALL_BIT), (_RET_K, 0, 0, RET_ERRNO | ENOSYS)]
    return prog + _tree(actions(arch))


def assemble(arch: str) -> bytes:
    return b"".join(struct.pack("<HBBI", *insn) for insn in program(arch))


def evaluate(prog: list[Insn], arch_value: int, nr: int) -> int:
    """A tiny interpreter for the subset we emit, so tests can check the filter offline."""
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == _LD_W_ABS:
            acc = arch_value if k == 4 else nr
            pc += 1
        elif code == _JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == _JGE_K:
            pc += 1 + (jt if acc >= k else jf)
        elif code == _JA:
            pc += 1 + k
        elif code == _RET_K:
            return k
        else:  # pragma: no cover - we never emit anything else
            raise ValueError(f"unknown BPF opcode {code:#x}")
