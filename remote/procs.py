"""The job's processes as the tracer knows them, shared by the services that need them."""

from __future__ import annotations

from dataclasses import dataclass, field

from qrun.remote.tracee import Proc, Thread


@dataclass
class ProcessTable:
    threads: dict[int, Thread] = field(default_factory=dict)
    procs: dict[int, Proc] = field(default_factory=dict)
    early: set[int] = field(default_factory=set)     # new children stopped before their parent's event
    # Threads inside fork/clone: their new child may already hold the parent's fds before we
    # hear of it, so no handle is closed while one is in flight.
    forking: set[int] = field(default_factory=set)
    stopped: set[int] = field(default_factory=set)   # thread groups in a group-stop
    main_pid: int = 0
