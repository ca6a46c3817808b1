"""The irregular handlers, by family, registered in one mapping from the table's handler
names. Importing this package checks the mapping against the table both ways, so a table
line naming a missing handler (or a handler no line names) fails at once."""

from __future__ import annotations

from collections.abc import Callable

from qrun.remote.calls import cwd, exec, fdops, identity, open, process
from qrun.remote.job import Job
from qrun.remote.stop import Stop
from qrun.syscalls.model import Route
from qrun.syscalls.table import TABLE

Handler = Callable[[Stop, Job], None]


def _collect() -> dict[str, Handler]:
    found: dict[str, Handler] = {}
    for module in (open, exec, cwd, fdops, process, identity):
        for name, fn in vars(module).items():
            if name.startswith("h_") and callable(fn):
                assert name[2:] not in found, f"handler {name} is defined twice"
                found[name[2:]] = fn
    return found


HANDLERS: dict[str, Handler] = _collect()


def _check_against_table() -> None:
    named = {sc.handler for sc in TABLE if sc.route in (Route.IRREGULAR, Route.IDENTITY)}
    missing = named - HANDLERS.keys()
    unused = HANDLERS.keys() - named
    if missing or unused:
        raise ImportError(f"syscall table and handlers disagree: no handler for {sorted(missing)}, "
                          f"no table line for {sorted(unused)}")


_check_against_table()
