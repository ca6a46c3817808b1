"""One stopped system call, as handlers see it: the thread, its registers, its memory.

Handlers read arguments and tracee memory through a Stop and end the call through it:
`skip` answers the call without running it, `rewrite` makes the kernel run another call
(the job's own arguments come back at the exit stop), `then` asks for the exit stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from qrun.remote.tracee import Memory, Regs, Scratch, Thread, rewrite, settle_in_c
from qrun.syscalls.codecs import s32, s64
from qrun.syscalls.model import Syscall
from qrun.syscalls.table import BY_NAME


@dataclass
class Stop:
    t: Thread
    regs: Regs
    sc: Syscall
    mem: Memory
    arch: str
    # What the C wait loop already read for this stop (see fastpath.py): the path argument
    # at `seen_addr`, which it found does not route local, or the first fd's /proc link.
    seen_path: bytes | None = None
    seen_addr: int = 0
    seen_fd_link: str | None = None
    settle_in_c: bool = False  # the C wait loop may take this call's exit stop
    result: int | None = field(default=None, init=False)  # the answer `skip` gave, if any

    @property
    def tid(self) -> int:
        return self.t.tid

    def arg(self, i: int) -> int:
        return self.regs.arg(i)

    def sarg(self, i: int) -> int:
        """Argument i as a C int."""
        return s32(self.regs.arg(i))

    def larg(self, i: int) -> int:
        """Argument i as a C long."""
        return s64(self.regs.arg(i))

    def args(self) -> list[int]:
        return self.regs.args()

    def read(self, addr: int, size: int) -> bytes:
        return self.mem.read(self.t.tid, addr, size)

    def write(self, addr: int, data: bytes) -> None:
        self.mem.write(self.t.tid, addr, data)

    def cstr(self, addr: int) -> bytes:
        if self.known_home(addr):
            assert self.seen_path is not None
            return self.seen_path
        return self.mem.cstr(self.t.tid, addr)

    def known_home(self, addr: int) -> bool:
        """Whether the C loop found the path at `addr` does not route local."""
        return self.seen_path is not None and addr == self.seen_addr

    def ptr_array(self, addr: int) -> list[int]:
        return self.mem.ptr_array(self.t.tid, addr)

    def scratch(self) -> Scratch:
        return Scratch(self.t.tid, self.regs.sp, self.mem)

    def skip(self, ret: int) -> None:
        """The call does not run; it returns `ret` (-errno for an error). Applied when the
        tracer resumes the thread, in the same C call (the last answer given wins)."""
        self.result = ret

    def rewrite(self, nr: int, args: list[int]) -> None:
        rewrite(self.t, self.regs, nr, args)

    def rewrite_settled(self, nr: int, args: list[int], cb: Callable[[int], None]) -> None:
        """Like `rewrite` and `then`, but the C wait loop takes the exit stop: it puts the
        job's arguments back and resumes the thread without waking Python, which runs
        cb(result) when it next runs, the thread having gone on meanwhile. Falls back to
        `rewrite` and `then` where the loop cannot (tracing, or its table is full)."""
        if not (self.settle_in_c and settle_in_c(self.t, self.regs, nr, args, cb)):
            self.rewrite(nr, args)
            self.then(lambda th, ret: cb(ret))

    def then(self, cb: Callable[[Thread, int], None]) -> None:
        """Run cb(thread, result) at the call's exit stop."""
        self.t.on_exit = cb

    def number_of(self, name: str) -> int:
        """This architecture's number of another table call (for rewrites)."""
        nr = BY_NAME[name].number(self.arch)
        assert nr is not None, f"{name} does not exist on {self.arch}"
        return nr

