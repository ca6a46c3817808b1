"""The C wait loop's answers: the metadata cache's answers to calls on absolute home paths,
mirrored in C so that such a stop is answered without Python (native/_source.c).

The loop keys an answer by exactly what the job passed: the syscall number, the path as
written and the call's integer arguments (flags, mode, mask). Only a path the policy routes
home in its plain absolute form qualifies, so the key means the same request to home as
the metadata cache's key (`metacache.key_of`). The mirror holds only answers the cache
holds: an answer is offered once the cache keeps it (`offer`), and whenever the cache
forgets anything the whole mirror goes (`forget`: a new generation, no scan). Calls whose
answer is a buffer (readlink) stay Python's.

The loop answers only until a deadline Python gives each wait (`Job.loop_answers_until`):
a short window after the stub last took in home's drops, and never while a live file may
have changed here (its tail goes home first), nor while handles wait to be closed at home
(their locks must go at the next request). A change at home is therefore seen within the
window on top of what a drop takes to arrive.
"""

from __future__ import annotations

from typing import Any

from qrun.native import ffi, lib
from qrun.remote.stop import Stop
from qrun.syscalls import structs
from qrun.syscalls.model import BufOut, DirFd, Flags, Int, Path, PathOut, StructOut, Syscall

NBITS = 1024
WINDOW_NS = 2_000_000   # how long after the last look at home's drops the loop may answer
NEVER, NO_OUTPUT = -2, -1


def shape(sc: Syscall) -> tuple[int, int] | None:
    """(output argument or NO_OUTPUT, key bitmap) if the loop may answer `sc`: a cached
    call on one path whose other arguments are integers, a dirfd (ignored: the path is
    absolute) and at most one structure it fills."""
    if not sc.cached or len(sc.path_args) != 1:
        return None
    out, keys = NO_OUTPUT, 0
    for i, k in enumerate(sc.args):
        if isinstance(k, StructOut) and out == NO_OUTPUT:
            out = i
        elif isinstance(k, (Int, Flags)):
            keys |= 1 << i
        elif isinstance(k, (BufOut, PathOut)) or not isinstance(k, (Path, DirFd)):
            return None
    return out, keys


class LoopAnswers:
    def __init__(self, arch: str, calls: list[Syscall], enabled: bool = True) -> None:
        self.arch = arch
        self.enabled = enabled
        self.shapes: dict[int, tuple[int, int]] = {}
        out, keys = [NEVER] * NBITS, [0] * NBITS
        for sc in calls:
            nr, got = sc.number(arch), shape(sc)
            if nr is not None and nr < NBITS and got is not None:
                self.shapes[nr] = got
                out[nr], keys[nr] = got
        lib.qr_answers_setup(ffi.new("signed char[]", out), ffi.new("unsigned char[]", keys), NBITS)
        lib.qr_answers_clear()   # (a fresh generation: nothing from before is answered)
        self._args = ffi.new("unsigned long[6]")

    @property
    def hits(self) -> int:
        return int(lib.qr_answers_hits())

    def offer(self, s: Stop, rep: dict[str, Any], ret: int) -> None:
        """The cache keeps `rep`, the answer (`ret`) to stop `s`: the loop may give it too,
        if the stop named its path plainly and absolutely (the loop read it: s.seen_path)."""
        got = self.shapes.get(s.regs.nr)
        if not self.enabled or got is None or s.seen_path is None or s.sc.number(self.arch) != s.regs.nr:
            return
        out_arg, _ = got
        out = b""
        if out_arg >= 0 and not rep["e"]:
            kind = s.sc.args[out_arg]
            assert isinstance(kind, StructOut)
            out = structs.struct_from_wire(self.arch, kind.type, rep["o"].get(str(out_arg)))
        for i in range(6):
            self._args[i] = s.regs.arg(i)
        lib.qr_answers_put(s.regs.nr, s.seen_path, self._args, ret, out, len(out))

    def forget(self) -> None:
        lib.qr_answers_clear()
