"""How a job's followers (its record) hear of it, as the home server runs it. Kept apart
from the server's modules: interactive `qrun` builds its hooks before it starts the
launcher, and must not load the home server then (that happens while the stub starts)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qrun.homenode.launchers import Launch
    from qrun.homenode.server_outcome import Outcome


@dataclass
class JobHooks:
    """Who follows the job (its record): told where it goes (the launch), when its stub
    called home, and how it ended (the outcome, None if it never ran, and qrun's exit
    status). A batch job's (`batch`) waits for Slurm as long as Slurm keeps it queued, and
    gets `term_grace` seconds between a cancel's SIGTERM and SIGKILL. `relaunch` turns the
    launch chosen for the job into the one used (for a stub Slurm has already started)."""
    placed: Callable[[Launch], None]
    contact: Callable[[], None]
    ended: Callable[[Outcome | None, int], None]
    batch: bool = False
    term_grace: float | None = None
    relaunch: Callable[[Launch], Launch] | None = None
    # A batch job's: where its home server leaves what a successor needs (servestate.py).
    serving: str = ""
    # A cancel asked for while no home server served the job (between a shepherd's death
    # and its successor): the successor passes it on as soon as it serves.
    cancelled: bool = False
