"""Per-tracee state, grouped by how the kernel shares it across clone flags (as proot does),
and the register/memory primitives the handlers use."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

from qrun.native import ffi, lib

CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_VFORK = 0x4000
CLONE_THREAD = 0x10000

_U64 = 1 << 64


@dataclass
class FsState:
    """cwd and umask: shared by threads and by clone(CLONE_FS) children."""
    cwd: str
    umask: int

    def copy(self) -> FsState:
        return FsState(self.cwd, self.umask)


@dataclass
class Proc:
    """A thread group."""
    tgid: int
    parent: int  # remote tgid of the parent, 0 when it is not a job process
    exe: str | None = None       # home path of the program it runs (None: a local one)
    next_exe: str | None = None  # what `exe` becomes if the execve in progress succeeds


@dataclass
class Thread:
    tid: int
    proc: Proc
    fs: FsState
    on_exit: Callable[[Thread, int], None] | None = None  # run at the syscall-exit stop
    clone_flags: int = 0       # flags of the clone/fork this thread is executing
    wait_delay: float = 0.0    # a call waiting at home (a lock): seconds until its next try
    # The job's own (nr, args) of the call in progress, if qrun rewrote them: put back at
    # the exit stop (see `rewrite`).
    rewritten: tuple[int, list[int]] | None = None
    # A rewritten call whose exit stop the C wait loop takes: run with its result later.
    settled: Callable[[int], None] | None = None

    @property
    def wants_exit_stop(self) -> bool:
        return self.on_exit is not None or self.rewritten is not None or self.settled is not None


class Regs:
    """One tracee's registers at a seccomp stop, in architecture-neutral form."""

    __slots__ = ("_r",)

    def __init__(self) -> None:
        self._r = ffi.new("struct qr_regs *")

    @property
    def raw(self) -> object:
        """The C struct, for calls that fill it directly."""
        return self._r

    def load(self, tid: int) -> Regs:
        rc = lib.qr_get_regs(tid, self._r)
        if rc < 0:
            raise OSError(-rc, "PTRACE_GETREGS")
        return self

    @property
    def nr(self) -> int:
        return int(self._r.nr)

    @property
    def sp(self) -> int:
        return int(self._r.sp)

    @property
    def ret(self) -> int:
        return int(self._r.ret)

    def arg(self, i: int) -> int:
        return int(self._r.args[i])

    def args(self) -> list[int]:
        return [int(self._r.args[i]) for i in range(6)]


class Memory:
    """Reads and writes tracee memory (process_vm_*v, /proc/PID/mem for protected pages)."""

    def __init__(self) -> None:
        self._str = ffi.new("char[]", 4097)

    def read(self, tid: int, addr: int, size: int) -> bytes:
        if size <= 0:
            return b""
        buf = ffi.new("char[]", size)
        n = lib.qr_read_mem(tid, addr, buf, size)
        if n < 0:
            raise OSError(-n, "read tracee memory")
        if n != size:
            raise OSError(errno.EFAULT, "short read of tracee memory")
        return ffi.buffer(buf, n)[:]

    def write(self, tid: int, addr: int, data: bytes) -> None:
        if not data:
            return
        n = lib.qr_write_mem(tid, addr, ffi.from_buffer(data), len(data))
        if n != len(data):
            raise OSError(-n if n < 0 else errno.EFAULT, "write tracee memory")

    def cstr(self, tid: int, addr: int) -> bytes:
        n = lib.qr_read_cstr(tid, addr, self._str, 4097)
        if n < 0:
            raise OSError(-n, "read string from tracee")
        return ffi.buffer(self._str, n)[:]

    def ptr_array(self, tid: int, addr: int, limit: int = 1 << 16) -> list[int]:
        """A NULL-terminated array of pointers (argv, envp)."""
        out: list[int] = []
        while len(out) < limit:
            p = int.from_bytes(self.read(tid, addr + 8 * len(out), 8), "little")
            if p == 0:
                return out
            out.append(p)
        raise OSError(errno.E2BIG, "argument list too long")


def skip(tid: int, retval: int) -> None:
    rc = lib.qr_skip(tid, retval)
    if rc < 0:
        raise OSError(-rc, "skip syscall")


def set_ret(tid: int, retval: int) -> None:
    rc = lib.qr_set_ret(tid, retval)
    if rc < 0:
        raise OSError(-rc, "set return value")


def restart(tid: int, nr: int, args: list[int], interrupted: bool) -> None:
    rc = lib.qr_restart(tid, nr, _words(args), int(interrupted))
    if rc < 0:
        raise OSError(-rc, "restart syscall")


def signal_pending(tid: int) -> bool:
    """Whether a signal the thread does not block is pending for it."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{tid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("SigPnd", "ShdPnd", "SigBlk"):
                    fields[key] = int(value, 16)
    except (OSError, ValueError):
        return False
    return bool((fields.get("SigPnd", 0) | fields.get("ShdPnd", 0)) & ~fields.get("SigBlk", 0))


def _words(args: list[int]) -> object:
    return ffi.new("unsigned long[6]", [a & (_U64 - 1) for a in args])


def rewrite(t: Thread, regs: Regs, nr: int, args: list[int]) -> None:
    """Make the kernel run (nr, args) for the call `t` is stopped in. The job's own number
    and arguments come back at the exit stop: the syscall ABI keeps argument registers
    (inline `syscall` code relies on that), and a call the kernel restarts after a signal
    must reach the handlers as the job made it, not as already rewritten (a home pid
    translated twice names some other process)."""
    if t.rewritten is None:
        t.rewritten = (regs.nr, regs.args())
    _set_args(t, nr, args)


def _set_args(t: Thread, nr: int, args: list[int]) -> None:
    rc = lib.qr_set_args(t.tid, nr, _words(args))
    if rc < 0:
        raise OSError(-rc, "set syscall arguments")


def settle_in_c(t: Thread, regs: Regs, nr: int, args: list[int], cb: Callable[[int], None]) -> bool:
    """`rewrite`, with the exit stop left to the C wait loop (Stop.rewrite_settled); False
    if it has no room for one more (nothing was changed then)."""
    if lib.qr_settle_exit(t.tid, regs.nr, nr, _words(regs.args())) < 0:
        return False
    try:
        _set_args(t, nr, args)
    except OSError:
        lib.qr_settled_forget(t.tid)
        raise
    t.settled = cb
    return True


def restore_args(t: Thread) -> None:
    """At the exit stop: undo `rewrite`, keeping the call's result."""
    if t.rewritten is None:
        return
    (nr, args), t.rewritten = t.rewritten, None
    rc = lib.qr_restore_args(t.tid, nr, _words(args))
    if rc < 0 and rc != -errno.ESRCH:
        raise OSError(-rc, "restore syscall arguments")


@dataclass
class Scratch:
    """Builds strings and pointer arrays in tracee memory below the stack's red zone.

    A rewritten syscall reads them before the tracee runs any user code again, and the
    region is below anything the interrupted frame owns."""
    tid: int
    sp: int
    mem: Memory
    parts: list[tuple[int, bytes]] = field(default_factory=list)
    top: int = 0

    def __post_init__(self) -> None:
        self.top = (self.sp - 256) & ~15

    def put(self, data: bytes) -> int:
        self.top = (self.top - len(data)) & ~15
        self.parts.append((self.top, data))
        return self.top

    def put_str(self, s: bytes) -> int:
        return self.put(s + b"\0")

    def put_ptrs(self, ptrs: list[int]) -> int:
        return self.put(b"".join(p.to_bytes(8, "little") for p in ptrs + [0]))

    def commit(self) -> None:
        for addr, data in self.parts:
            self.mem.write(self.tid, addr, data)
