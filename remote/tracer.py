"""The tracer loop: `next_event()` waits for the kernel, `dispatch()` acts on one stop.

Job processes run under ptrace with a seccomp filter derived from the syscall table, so
only calls that may need the home node stop. Each stop is handled in a single
seccomp stop (skip the call and write its result) unless a handler asks to see the
syscall's exit too (fork results, wait results, installing placeholder fds).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from collections.abc import Callable

from qrun.native import ffi, lib
from qrun.remote import procpaths
from qrun.remote.channel import GoLocal, HomeBusy, HomeLost, Rpc
from qrun.remote.fds import FdSpace
from qrun.remote.handlers import Handlers
from qrun.remote.spawn import spawn, start_failure
from qrun.remote.tracee import CLONE_FS, CLONE_THREAD, FsState, Proc, Regs, Thread, restore_args, skip
from qrun.syscalls import bpf
from qrun.syscalls.model import Route
from qrun.syscalls.paths import PathPolicy
from qrun.syscalls.table import by_number

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000
OPTIONS = (PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK
           | PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESECCOMP
           | PTRACE_O_EXITKILL)

EVENT_FORK, EVENT_VFORK, EVENT_CLONE, EVENT_EXEC, EVENT_SECCOMP, EVENT_STOP = 1, 2, 3, 4, 7, 128
STOP_SIGNALS = (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
SYSCALL_STOP = signal.SIGTRAP | 0x80

DEBUG = bool(os.environ.get("QRUN_DEBUG_TRACE"))
ARCH = {0xC000003E: "x86_64", 0xC00000B7: "aarch64"}[lib.qr_arch() & 0xFFFFFFFF]


class SpawnError(Exception):
    def __init__(self, code: int, err: int, argv0: str) -> None:
        self.code, self.err = code, err
        what = "command not found" if code == 127 else os.strerror(err) if err else "cannot execute"
        super().__init__(f"{argv0}: {what}")


class Tracer(Handlers):
    def __init__(self, rpc: Rpc, fds: FdSpace, policy: PathPolicy, identity: dict,
                 warn: Callable[[str], None]) -> None:
        self.rpc = rpc
        self.fds = fds
        self.policy = policy
        self.identity = identity
        self.warn_sink = warn
        self.arch = ARCH
        self.by_nr = by_number(ARCH)
        self.threads: dict[int, Thread] = {}
        self.procs: dict[int, Proc] = {}
        self.early: set[int] = set()        # new children stopped before their parent's event
        self.home_of: dict[int, int] = {}   # remote tid -> home pid
        self.remote_of: dict[int, int] = {}  # home pid -> remote tid
        self.pending_handles: set[int] = set()  # placeholders being installed right now
        self.warned: set[str] = set()
        self.main_pid = 0
        self.main_status: int | None = None
        self.regs = Regs()
        self.stopping = False
        self.reaped_early: set[int] = set()
        self.open_handles: set[int] = set()  # home handles we installed placeholders for
        # Threads inside fork/clone: their new child may already hold the parent's fds
        # before we hear of it, so no handle is closed while one is in flight.
        self.forking: set[int] = set()
        self.sweep_deferred = False
        self.stopped: set[int] = set()   # thread groups in a group-stop
        self.zombies: dict[int, int] = {}  # exited, not yet reaped: remote pid -> its home pid
        self.on_stop_change: Callable[[], None] = lambda: None  # the main process stopped or went on
        self._local_ok = _bitmap(s.number(ARCH) for s in self.by_nr.values() if s.local_fd_native)
        self._copy_ok = _bitmap(s.number(ARCH) for s in self.by_nr.values() if s.copy_local)
        self._ph_prefix = os.fsencode(fds.ph_dir + "/")
        self._copy_prefix = os.fsencode(fds.copies_dir + "/")
        self._have_regs = ffi.new("int *")  # the C wait loop already read this stop's registers
        path_arg = [-1] * FAST_BITS
        for s in self.by_nr.values():
            n = s.number(ARCH)
            if n is not None and n < FAST_BITS:
                path_arg[n] = s.local_path_arg
        self._path_arg = ffi.new("signed char[]", path_arg)
        self._policy = b"".join(b"L" + os.fsencode(p) + b"\0" for p in policy.local) + \
            b"".join(b"H" + os.fsencode(p) + b"\0" for p in policy.home) + \
            b"".join(b"P" + os.fsencode(p) + b"\0" for p in procpaths.ASK_TRACER) + \
            b"".join(b"N" + os.fsencode(p) + b"\0" for p in procpaths.ASK_TRACER_NUMBERED)
        self.exec_err_fd = -1

    # ---- starting the job ---------------------------------------------------------------
    def spawn(self, argv: list[str], env: dict[str, str], cwd: str, real_cwd: str,
              stdio: tuple[int, int, int], terminal: bool = False) -> int:
        pid, _, self.exec_err_fd = spawn(argv, env, real_cwd, stdio, bpf.assemble(ARCH), OPTIONS, terminal)
        self.main_pid = pid
        proc = Proc(pid, 0)
        self.procs[pid] = proc
        self.threads[pid] = Thread(pid, proc, FsState(cwd, os.umask(0o022)))
        os.umask(self.threads[pid].fs.umask)
        return pid

    def start_failure(self) -> dict[str, object]:
        """How the job's first process failed to start ({} if it started)."""
        return start_failure(self.exec_err_fd)

    # ---- the loop --------------------------------------------------------------------
    def run(self) -> int:
        status = ffi.new("int *")
        while self.threads or (self.stopping and self.early):
            pid, st = self.next_event(status)
            self.dispatch(pid, st)
        assert self.main_status is not None
        return self.main_status

    def next_event(self, status: object) -> tuple[int, int]:
        """The next stop Python must see. Calls on local fds that need nothing from us are
        resumed inside the C wait loop (about half the cost of a stop handled here)."""
        if DEBUG:
            pid = lib.qr_wait(status)
        else:
            pid = lib.qr_wait_filtered(status, self._local_ok, self._copy_ok, FAST_BITS,
                                       self._ph_prefix, self._copy_prefix,
                                       self._path_arg, self._policy, len(self._policy),
                                       self.regs.raw, self._have_regs)
        if pid < 0:
            raise OSError(-pid, "waitpid")
        return pid, int(status[0])  # type: ignore[index]

    def dispatch(self, pid: int, status: int) -> None:
        if DEBUG:
            t0 = self.threads.get(pid)
            sys.stderr.write(f"[trace] pid={pid} status={status:#x} known={t0 is not None} "
                             f"on_exit={bool(t0 and t0.on_exit)} early={sorted(self.early)}\n")
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._gone(pid, status)
            return
        if not os.WIFSTOPPED(status):
            return
        t = self.threads.get(pid)
        if t is None:
            if self.stopping:
                _kill(pid)  # born while the job is being taken down: it goes too
            self.early.add(pid)  # its parent's fork event will adopt it
            return
        sig, event = os.WSTOPSIG(status), status >> 16
        try:
            if event == EVENT_SECCOMP:
                self._seccomp(t)
            elif sig == SYSCALL_STOP:
                self._syscall_exit(t)
            elif event in (EVENT_FORK, EVENT_VFORK, EVENT_CLONE):
                self._adopt(t, lib.qr_geteventmsg(pid))
            elif event == EVENT_EXEC:
                t.rewritten = None  # a new program: its registers are its own
                t.proc.exe = t.proc.next_exe
                self.sweep_handles()
            elif event == EVENT_STOP:
                if sig in STOP_SIGNALS:
                    self.group_stop(t)  # stopped, and stays so until SIGCONT
                    return
                # otherwise a new child's first stop (or an interrupt): it goes on below
            else:
                if sig == signal.SIGCONT and t.proc.tgid in self.stopped:
                    self.stopped.discard(t.proc.tgid)
                    if t.proc.tgid == self.main_pid:
                        self.on_stop_change()
                self.resume(t, sig)  # signal-delivery stop: deliver the signal
                return
        except HomeLost:
            raise
        except ProcessLookupError:
            return  # killed under our feet (SIGKILL); its exit status follows
        self.resume(t)

    def group_stop(self, t: Thread) -> None:
        """A job process was stopped (SIGSTOP, SIGTSTP, ...): keep it stopped, and let the
        kernel's SIGCONT end the stop, as for an untraced process."""
        self.stopped.add(t.proc.tgid)
        if t.proc.tgid == self.main_pid:
            self.on_stop_change()
        rc = lib.qr_listen(t.tid)
        if rc < 0 and rc != -errno.ESRCH:
            raise OSError(-rc, "PTRACE_LISTEN")

    @property
    def job_stopped(self) -> bool:
        """Whether the job's main process is stopped (home may be stopped as well)."""
        return self.main_pid in self.stopped

    def resume(self, t: Thread, sig: int = 0) -> None:
        exit_stop = t.wants_exit_stop
        rc = lib.qr_syscall(t.tid, sig) if exit_stop else lib.qr_cont(t.tid, sig)
        if DEBUG:
            sys.stderr.write(f"[trace]   resume {t.tid} sig={sig} syscall={exit_stop} rc={rc}\n")
        if rc < 0 and rc != -errno.ESRCH:
            raise OSError(-rc, "ptrace resume")

    # ---- stops ------------------------------------------------------------------------
    def _seccomp(self, t: Thread) -> None:
        regs = self.regs if self._have_regs[0] else self.regs.load(t.tid)
        sc = self.by_nr.get(regs.nr)
        if DEBUG:
            sys.stderr.write(f"[trace]   {t.tid} {sc.name if sc else regs.nr}\n")
        if sc is None:
            self.warn_once(f"syscall {regs.nr}", f"unsupported syscall number {regs.nr}: ENOSYS")
            skip(t.tid, -errno.ENOSYS)
            return
        if self.stopping:
            skip(t.tid, -errno.EINTR)
            return
        try:
            if sc.route is Route.DENY:
                self.warn_once(sc.name, f"{sc.name}() is not supported under qrun: "
                                        f"{sc.errno}{' (' + sc.note + ')' if sc.note else ''}")
                skip(t.tid, -getattr(errno, sc.errno))
            elif sc.route is Route.BY_PATH:
                self.by_path(t, regs, sc)
            elif sc.route is Route.BY_FD:
                self.by_fd(t, regs, sc)
            else:
                getattr(self, "h_" + sc.handler)(t, regs, sc)
        except HomeLost:
            raise
        except HomeBusy:
            self.park(t, regs)
        except GoLocal as g:
            self.go_local(t, regs, sc, g)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise ProcessLookupError from exc
            # A bad pointer or the like: the kernel would have said EFAULT.
            skip(t.tid, -(exc.errno or errno.EFAULT))
        except Exception as exc:  # a bug here must fail one call loudly, not kill the job
            self.warn_sink(f"internal error handling {sc.name}(): {type(exc).__name__}: {exc}; "
                           "the call failed with EIO")
            skip(t.tid, -errno.EIO)

    def _syscall_exit(self, t: Thread) -> None:
        cb, t.on_exit = t.on_exit, None
        ret = self.regs.load(t.tid).ret
        restore_args(t)
        if cb is not None:
            cb(t, ret)

    def _adopt(self, parent: Thread, child_tid: int) -> None:
        flags = parent.clone_flags
        if flags & CLONE_THREAD:
            proc = parent.proc
        else:
            proc = Proc(child_tid, parent.proc.tgid, exe=parent.proc.exe)
            self.procs[child_tid] = proc
        fs = parent.fs if flags & CLONE_FS else parent.fs.copy()
        child = Thread(child_tid, proc, fs)
        self.threads[child_tid] = child
        if child_tid in self.early:
            self.early.discard(child_tid)
            self.resume(child)

    def fork_done(self, tid: int) -> None:
        self.forking.discard(tid)
        if self.sweep_deferred:
            self.sweep_handles()

    def _gone(self, pid: int, status: int) -> None:
        t = self.threads.pop(pid, None)
        self.early.discard(pid)
        self.forking.discard(pid)
        self.stopped.discard(pid)
        if pid == self.main_pid:
            self.main_status = status
            self.kill_all()
        if t is None:
            return
        if t.proc.tgid != pid:
            self.retire(pid)  # threads are never waited for
        elif t.proc.parent not in self.procs or pid == self.main_pid or pid in self.reaped_early:
            self.reaped_early.discard(pid)
            self.retire(pid)
            self.procs.pop(pid, None)
        else:
            # A zombie until its parent reaps it. Its pid may be reused by a new child
            # before that, so its home pid is kept apart for the wait that reaps it.
            self.procs.pop(pid, None)
            hp = self.home_of.pop(pid, None)
            if hp is not None:
                self.zombies[pid] = hp  # (remote_of keeps it: the wait names it by hp)
        self.sweep_handles()

    def kill_all(self) -> None:
        """The job ended: no process of it may outlive it."""
        self.stopping = True
        for tid in [*self.threads, *self.early]:  # early: stopped before we adopted them
            _kill(tid)

    # ---- home pids ---------------------------------------------------------------------
    def home_pid(self, remote: int) -> int:
        if remote not in self.threads and remote in self.zombies:
            return self.zombies[remote]  # exited already (e.g. before its parent's fork returned)
        hp = self.home_of.get(remote)
        if hp is None:
            name = _comm(remote)
            if DEBUG:
                sys.stderr.write(f"[trace]   deputy for {remote} ({name}) ...\n")
            rep = self.rpc.call("deputy", [name], tid=remote)
            deadline = time.monotonic() + self.rpc.timeout
            while rep["e"] and rep["o"].get("busy") and time.monotonic() < deadline:
                # Home's fds are held by others for now. The new process exists already, so
                # the fork cannot be undone: wait here (heartbeats go on in the stdio thread).
                time.sleep(0.05)
                rep = self.rpc.call("deputy", [name], tid=remote)
            if DEBUG:
                sys.stderr.write(f"[trace]   deputy for {remote} = {rep['r']}\n")
            hp = rep["r"]
            if hp <= 0:
                raise OSError(errno.EAGAIN, "no deputy")
            self.home_of[remote] = hp
            self.remote_of[hp] = remote
        return hp

    def reap(self, remote: int, keep: bool = False) -> int:
        """The home pid of a child a wait just returned (and reaped, unless `keep`)."""
        hp = self.zombies.get(remote)
        if hp is None:
            hp = self.home_pid(remote)
            if not keep:
                self.reaped(remote)
        elif not keep:
            del self.zombies[remote]
            if self.remote_of.get(hp) == remote:
                del self.remote_of[hp]
            self.rpc.pending_retire.append(hp)
        return hp

    def retire(self, remote: int) -> None:
        hp = self.home_of.pop(remote, None)
        if hp is not None:
            self.remote_of.pop(hp, None)
            self.rpc.pending_retire.append(hp)

    # ---- home handles ------------------------------------------------------------------
    def sweep_handles(self, only: int | None = None) -> None:
        """Close home handles no job process refers to any more."""
        if not self.open_handles:
            return  # nothing to close: skip listing every process's fds (exits are frequent)
        if self.forking or self.early:
            self.sweep_deferred = True  # a child we do not know yet may hold any of them
            return
        self.sweep_deferred = False
        live: set[int] = set()
        for tgid in self.procs:
            live |= self.fds.handles_of(tgid)
        for h in list(self.open_handles):
            if (only is None or h == only) and h not in live and h not in self.pending_handles:
                self.open_handles.discard(h)
                self.fds.forget(h)
                self.rpc.pending_close.append(h)

    def warn_once(self, key: str, msg: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.warn_sink(msg)


FAST_BITS = 1024


def _bitmap(numbers: object) -> bytes:
    bits = bytearray(FAST_BITS // 8)
    for n in numbers:  # type: ignore[attr-defined]
        if n is not None and 0 <= n < FAST_BITS:
            bits[n // 8] |= 1 << (n % 8)
    return bytes(bits)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()[:15]
    except OSError:
        return "job"

