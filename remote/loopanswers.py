"""The C wait loop's answers: the metadata cache's answers to calls on absolute home paths,
mirrored in C so that such a stop is answered without Python (native/_source.c).

The loop keys an answer by exactly what the job passed: the syscall number, the path as
written and the call's integer arguments (flags, mode, mask). Only a path the policy routes
home in its plain absolute form qualifies, so the key means the same request to home as
the metadata cache's key (`metacache.key_of`). The mirror holds only answers the cache
holds: an answer is offered once the cache keeps it (`offer`), and whenever the cache
forgets anything the whole mirror goes (`forget`: a new generation, no scan). A readlink
answer is the whole link target, kept only when it fitted the job's buffer; the loop
gives as much of it as the asking call's buffer holds, as the kernel would.

The loop answers only until a deadline Python gives each wait (`Job.loop_answers_until`):
a short window after the stub last took in home's drops, and never while a live file may
have changed here (its tail goes home first), nor while handles wait to be closed at home
(their locks must go at the next request). A change at home is therefore seen within the
window on top of what a drop takes to arrive.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from qrun.native import ffi, lib
from qrun.remote.stop import Stop
from qrun.syscalls import structs
from qrun.syscalls.model import DirFd, Flags, Int, Path, PathOut, StructOut, Syscall

NBITS = 1024
WINDOW_NS = 2_000_000   # how long after the last look at home's drops the loop may answer
NEVER, NO_OUTPUT = -2, -1


class Shape(NamedTuple):
    out: int     # the argument the answer's bytes are written at, or NO_OUTPUT
    size: int    # the argument that bounds them (readlink's buffer size), or -1
    keys: int    # bit i: integer argument i is part of the key


def shape(sc: Syscall) -> Shape | None:
    """How the loop may answer `sc`, if it may: a cached call on one path whose other
    arguments are integers, a dirfd (ignored: the path is absolute) and at most one
    output, a structure or a link target (then as much of it as the buffer holds)."""
    if not sc.cached or len(sc.path_args) != 1:
        return None
    out, size = NO_OUTPUT, -1
    for i, k in enumerate(sc.args):
        if isinstance(k, (StructOut, PathOut)):
            if out != NO_OUTPUT:
                return None
            out, size = i, k.size if isinstance(k, PathOut) else -1
        elif not isinstance(k, (Int, Flags, Path, DirFd)):
            return None
    keys = sum(1 << i for i, k in enumerate(sc.args) if isinstance(k, (Int, Flags)) and i != size)
    return Shape(out, size, keys)


class LoopAnswers:
    def __init__(self, arch: str, calls: list[Syscall], enabled: bool = True) -> None:
        self.arch = arch
        self.enabled = enabled
        self.shapes: dict[int, Shape] = {}
        out, size, keys = [NEVER] * NBITS, [-1] * NBITS, [0] * NBITS
        for sc in calls:
            nr, got = sc.number(arch), shape(sc)
            if nr is not None and nr < NBITS and got is not None:
                self.shapes[nr] = got
                out[nr], size[nr], keys[nr] = got
        lib.qr_answers_setup(ffi.new("signed char[]", out), ffi.new("signed char[]", size),
                             ffi.new("unsigned char[]", keys), NBITS)
        lib.qr_answers_clear()   # (a fresh generation: nothing from before is answered)
        self._args = ffi.new("unsigned long[6]")

    @property
    def hits(self) -> int:
        return int(lib.qr_answers_hits())

    def offer(self, s: Stop, rep: dict[str, Any], ret: int) -> None:
        """The cache keeps `rep`, the answer (`ret`) to stop `s`: the loop may give it too,
        if the stop named its path plainly and absolutely (the loop read it: s.seen_path)."""
        got = self.shapes.get(s.regs.nr)
        if (not self.enabled or got is None or s.seen_path is None or not s.seen_path.startswith(b"/")
                or s.sc.number(self.arch) != s.regs.nr):
            return  # (the loop looks up only absolute paths)
        out = b""
        if got.out >= 0 and not rep["e"]:
            kind, value = s.sc.args[got.out], rep["o"].get(str(got.out))
            if isinstance(kind, StructOut):
                out = structs.struct_from_wire(self.arch, kind.type, value)
            elif not isinstance(value, bytes) or len(value) >= s.arg(got.size):
                return  # (a link target that may have been cut to the buffer: not all of it)
            else:
                out = value
        for i in range(6):
            self._args[i] = s.regs.arg(i)
        lib.qr_answers_put(s.regs.nr, s.seen_path, self._args, ret, out, len(out))

    def forget(self) -> None:
        lib.qr_answers_clear()
