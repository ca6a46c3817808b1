"""Calls that must wait for something at home (a lock another process holds) wait in the
job instead, so the tracer and the home node go on serving everyone else."""

from __future__ import annotations

from qrun.remote.stop import Stop
from qrun.remote.tracee import Thread, restart, signal_pending
from qrun.syscalls import structs

PARK_FIRST, PARK_MAX = 0.001, 0.05   # seconds between a waiting call's tries at home


def park(s: Stop) -> None:
    """The thread sleeps locally (in nanosleep, so a signal wakes it), then issues the
    call again. A signal that arrived meanwhile makes the call return ERESTARTSYS, so the
    kernel fails it with EINTR or restarts it per SA_RESTART, exactly as the real call."""
    t = s.t
    t.wait_delay = min(max(t.wait_delay * 2, PARK_FIRST), PARK_MAX)
    scratch = s.scratch()
    ts = scratch.put(structs.layout(s.arch, "timespec").pack(sec=0, nsec=int(t.wait_delay * 1e9)))
    scratch.commit()
    nr, args = s.regs.nr, s.args()
    s.rewrite(s.number_of("nanosleep"), [ts, 0, 0, 0, 0, 0])

    def again(th: Thread, ret: int) -> None:
        restart(th.tid, nr, args, signal_pending(th.tid))
    s.then(again)


def done_waiting(s: Stop) -> None:
    s.t.wait_delay = 0.0
