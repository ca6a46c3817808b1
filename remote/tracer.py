"""The tracer loop: `next_event()` waits for the kernel, `dispatch()` acts on one stop.

Job processes run under ptrace with a seccomp filter derived from the syscall table, so
only calls that may need the home node stop. Each stop is handled in a single seccomp
stop (skip the call and write its result) unless a handler asks to see the syscall's
exit too (fork results, wait results, installing placeholder fds). The handlers get the
stop and the job's services (remote/job.py); this module only follows processes.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable

from qrun.native import ffi, lib
from qrun.remote import forwarding
from qrun.remote.calls import HANDLERS
from qrun.remote.calls.waiting import park
from qrun.remote.channel import GoLocal, HomeBusy, HomeLost
from qrun.remote.fastpath import FastPath
from qrun.remote.job import Job
from qrun.remote.spawn import spawn, start_failure
from qrun.remote.stop import Stop
from qrun.remote.trace import CallTrace
from qrun.remote.tracee import FsState, Proc, Regs, Thread, restore_args, set_ret, skip
from qrun.syscalls import abi, bpf
from qrun.syscalls.abi import ARCH
from qrun.syscalls.model import Route, Syscall
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
SETTLED_MAX = 64  # the C loop's slots for exit stops it takes (Stop.rewrite_settled)

DEBUG = bool(os.environ.get("QRUN_DEBUG_TRACE"))


class Tracer:
    def __init__(self, job: Job, trace: CallTrace | None = None) -> None:
        self.job = job
        self.table = job.table
        self.trace = trace
        self.by_nr = by_number(ARCH)
        self.main_status: int | None = None
        self.regs = Regs()
        self.stopping = False
        self.on_stop_change: Callable[[], None] = lambda: None  # the main process stopped or went on
        # Traced calls must all reach Python, so a trace turns the C loop's shortcuts off.
        self.fast = FastPath(ARCH, self.by_nr, job.fds, job.policy, self.regs,
                             enabled=not DEBUG and trace is None)
        if job.loop is not None:
            job.loop.enabled = self.fast.enabled
        self._settle_in_c = self.fast.enabled  # (only the C loop takes exit stops)
        self._settled_tids = ffi.new("int[]", SETTLED_MAX)
        self._settled_rets = ffi.new("long[]", SETTLED_MAX)
        self.exec_err_fd = -1

    # ---- what the stdio thread asks ------------------------------------------------------
    @property
    def main_pid(self) -> int:
        return self.table.main_pid

    @property
    def threads(self) -> dict[int, Thread]:
        return self.table.threads

    @property
    def early(self) -> set[int]:
        return self.table.early

    def remote_pid(self, home_pid: int) -> int | None:
        return self.job.pids.remote_of.get(home_pid)

    @property
    def job_stopped(self) -> bool:
        """Whether the job's main process is stopped (home may be stopped as well)."""
        return self.table.main_pid in self.table.stopped

    # ---- starting the job ---------------------------------------------------------------
    def spawn(self, argv: list[str], env: dict[str, str], cwd: str, real_cwd: str,
              stdio: tuple[int, int, int], terminal: bool = False) -> int:
        pid, _, self.exec_err_fd = spawn(argv, env, real_cwd, stdio, bpf.assemble(ARCH), OPTIONS, terminal)
        self.table.main_pid = pid
        proc = Proc(pid, 0)
        self.table.procs[pid] = proc
        self.table.threads[pid] = Thread(pid, proc, FsState(cwd, os.umask(0o022)))
        os.umask(self.table.threads[pid].fs.umask)
        return pid

    def start_failure(self) -> dict[str, object]:
        """How the job's first process failed to start ({} if it started)."""
        return start_failure(self.exec_err_fd)

    # ---- the loop --------------------------------------------------------------------
    def run(self) -> int:
        status = ffi.new("int *")
        while self.table.threads or (self.stopping and self.table.early):
            pid, st = self.next_event(status)
            self.dispatch(pid, st)
        assert self.main_status is not None
        return self.main_status

    def next_event(self, status: object) -> tuple[int, int]:
        """The next stop Python must see (calls the C wait loop can settle never come here)."""
        pid = self.fast.wait(status, self.job.loop_answers_until())
        if pid < 0:
            raise OSError(-pid, "waitpid")
        self._settled()
        return pid, int(status[0])  # type: ignore[index]

    def _settled(self) -> None:
        """The results of the exit stops the C loop took (Stop.rewrite_settled) since
        Python last ran, to their callbacks."""
        n = lib.qr_settled(self._settled_tids, self._settled_rets, SETTLED_MAX)
        for i in range(n):
            t = self.table.threads.get(int(self._settled_tids[i]))
            if t is not None and t.settled is not None:
                cb, t.settled = t.settled, None
                self._settled_callback(cb, int(self._settled_rets[i]))

    def _settled_callback(self, cb: Callable[[int], None], ret: int) -> None:
        try:
            cb(ret)
        except HomeLost:
            raise
        except ProcessLookupError:
            pass  # (the thread is gone; its exit follows)
        except Exception as exc:  # (the call has returned: nothing to fail but a warning)
            self.job.warn_sink(f"internal error finishing a call: {type(exc).__name__}: {exc}")

    def dispatch(self, pid: int, status: int) -> None:
        if DEBUG:
            sys.stderr.write(f"[trace] pid={pid} status={status:#x} known={pid in self.table.threads}\n")
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._gone(pid, status)
            return
        if not os.WIFSTOPPED(status):
            return
        t = self.table.threads.get(pid)
        if t is None:
            if self.stopping:
                _kill(pid)  # born while the job is being taken down: it goes too
            self.table.early.add(pid)  # its parent's fork event will adopt it
            return
        try:
            if self._stop(t, os.WSTOPSIG(status), status >> 16):
                return
        except HomeLost:
            raise
        except ProcessLookupError:
            return  # killed under our feet (SIGKILL); its exit status follows
        self.resume(t)

    def _stop(self, t: Thread, sig: int, event: int) -> bool:
        """Act on one stop; True if the thread was resumed (or left stopped) already."""
        if event == EVENT_SECCOMP:
            return self._seccomp(t)
        elif sig == SYSCALL_STOP:
            self._syscall_exit(t)
        elif event in (EVENT_FORK, EVENT_VFORK, EVENT_CLONE):
            self._adopt(t, lib.qr_geteventmsg(t.tid))
        elif event == EVENT_EXEC:
            t.rewritten = None  # a new program: its registers are its own
            if t.settled is not None:  # (a thread of it exec'd while this one installed)
                lib.qr_settled_forget(t.tid)
                cb, t.settled = t.settled, None
                self._settled_callback(cb, -errno.ESRCH)
            t.proc.exe = t.proc.next_exe
            self.job.handles.sweep()
        elif event == EVENT_STOP:
            if sig in STOP_SIGNALS:
                self.group_stop(t)  # stopped, and stays so until SIGCONT
                return True
            # otherwise a new child's first stop (or an interrupt): it goes on
        else:
            self._signal(t, sig)
            return True
        return False

    def _signal(self, t: Thread, sig: int) -> None:
        """A signal-delivery stop: deliver the signal."""
        if sig == signal.SIGCONT and t.proc.tgid in self.table.stopped:
            self.table.stopped.discard(t.proc.tgid)
            if t.proc.tgid == self.table.main_pid:
                self.on_stop_change()
        self.resume(t, sig)

    def group_stop(self, t: Thread) -> None:
        """A job process was stopped (SIGSTOP, SIGTSTP, ...): keep it stopped, and let the
        kernel's SIGCONT end the stop, as for an untraced process."""
        self.table.stopped.add(t.proc.tgid)
        if t.proc.tgid == self.table.main_pid:
            self.on_stop_change()
        rc = lib.qr_listen(t.tid)
        if rc < 0 and rc != -errno.ESRCH:
            raise OSError(-rc, "PTRACE_LISTEN")

    def resume(self, t: Thread, sig: int = 0) -> None:
        rc = lib.qr_syscall(t.tid, sig) if self._wants_exit(t) else lib.qr_cont(t.tid, sig)
        if rc < 0 and rc != -errno.ESRCH:
            raise OSError(-rc, "ptrace resume")

    def _wants_exit(self, t: Thread) -> bool:
        return t.wants_exit_stop or (self.trace is not None and self.trace.waiting(t.tid))

    # ---- system call stops ---------------------------------------------------------------
    def _seccomp(self, t: Thread) -> bool:
        """Handle a trapped call; True if the thread was resumed already."""
        regs = self.regs if self.fast.have_regs else self.regs.load(t.tid)
        sc = self.by_nr.get(regs.nr)
        if sc is None:
            self.job.warn_once(f"syscall {regs.nr}", f"unsupported syscall number {regs.nr}: ENOSYS")
            skip(t.tid, -errno.ENOSYS)
            return False
        s = Stop(t, regs, sc, self.job.mem, ARCH, settle_in_c=self._settle_in_c)
        self._seen(s)
        if self.trace is not None:
            self.trace.begin(s)
        if self.stopping:
            s.skip(-errno.EINTR)
        else:
            self._handle(s)
        if s.result is None:
            return False
        rc = lib.qr_skip_resume(t.tid, s.result, int(self._wants_exit(t)))
        if rc < 0 and rc != -errno.ESRCH:
            raise OSError(-rc, "skip and resume")
        return True

    def _seen(self, s: Stop) -> None:
        kind, data = self.fast.seen()
        if kind == lib.QR_SEEN_PATH and s.sc.local_path_arg >= 0:
            s.seen_path, s.seen_addr = data, s.arg(s.sc.local_path_arg)
        elif kind == lib.QR_SEEN_FD_LINK:
            s.seen_fd_link = data.decode("utf-8", "surrogateescape")

    def _handle(self, s: Stop) -> None:
        try:
            route(s, self.job)
        except HomeLost:
            raise
        except HomeBusy:
            park(s)
        except GoLocal as g:
            forwarding.go_local(s, g.index, g.path)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise ProcessLookupError from exc
            # A bad pointer or the like: the kernel would have said EFAULT.
            s.skip(-(exc.errno or errno.EFAULT))
        except Exception as exc:  # a bug here must fail one call loudly, not kill the job
            self.job.warn_sink(f"internal error handling {s.sc.name}(): {type(exc).__name__}: {exc}; "
                               "the call failed with EIO")
            s.skip(-errno.EIO)

    def _syscall_exit(self, t: Thread) -> None:
        cb, t.on_exit = t.on_exit, None
        ret = self.regs.load(t.tid).ret
        restore_args(t)
        if cb is not None:
            self._exit_callback(cb, t, ret)
        if self.trace is not None:
            self.trace.end(t, self.regs.load(t.tid).ret if cb is not None else ret)

    def _exit_callback(self, cb: Callable[[Thread, int], None], t: Thread, ret: int) -> None:
        """A handler's continuation: like a handler, a bug in it fails the one call (EIO)."""
        try:
            cb(t, ret)
        except (HomeLost, ProcessLookupError):
            raise
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise ProcessLookupError from exc
            self._exit_failed(t, exc)
        except Exception as exc:
            self._exit_failed(t, exc)

    def _exit_failed(self, t: Thread, exc: Exception) -> None:
        self.job.warn_sink(f"internal error finishing a call: {type(exc).__name__}: {exc}; "
                           "the call failed with EIO")
        set_ret(t.tid, -errno.EIO)

    # ---- processes ----------------------------------------------------------------------
    def _adopt(self, parent: Thread, child_tid: int) -> None:
        flags = parent.clone_flags
        if flags & abi.CLONE_THREAD:
            proc = parent.proc
        else:
            proc = Proc(child_tid, parent.proc.tgid, exe=parent.proc.exe)
            self.table.procs[child_tid] = proc
        fs = parent.fs if flags & abi.CLONE_FS else parent.fs.copy()
        child = Thread(child_tid, proc, fs)
        self.table.threads[child_tid] = child
        if child_tid in self.table.early:
            self.table.early.discard(child_tid)
            self.resume(child)

    def _gone(self, pid: int, status: int) -> None:
        table = self.table
        t = table.threads.pop(pid, None)
        if self.trace is not None:
            self.trace.forget(pid)
        table.early.discard(pid)
        table.forking.discard(pid)
        table.stopped.discard(pid)
        if pid == table.main_pid:
            self.main_status = status
            self.kill_all()
        if t is None:
            return
        if t.proc.tgid == pid:
            table.procs.pop(pid, None)
        self.job.pids.exited(pid, is_leader=t.proc.tgid == pid, parent_known=t.proc.parent in table.procs,
                             main=pid == table.main_pid)
        self.job.handles.sweep()

    def kill_all(self) -> None:
        """The job ended: no process of it may outlive it."""
        self.stopping = True
        for tid in [*self.table.threads, *self.table.early]:  # early: stopped before we adopted them
            _kill(tid)


def route(s: Stop, job: Job) -> None:
    """Send the call where the table says it goes."""
    sc: Syscall = s.sc
    if sc.route is Route.DENY:
        job.warn_once(sc.name, f"{sc.name}() is not supported under qrun: "
                               f"{sc.errno}{' (' + sc.note + ')' if sc.note else ''}")
        s.skip(-getattr(errno, sc.errno))
    elif sc.route is Route.BY_PATH:
        forwarding.by_path(s, job)
    elif sc.route is Route.BY_FD:
        forwarding.by_fd(s, job)
    else:
        HANDLERS[sc.handler](s, job)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
