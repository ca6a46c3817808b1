"""Keeping one job's record while it runs: where it runs, and how it ended. Used by a
batch job's shepherd and by interactive `qrun`, whose job is recorded once it has a host
(a record that cannot be written costs the job nothing but one warning)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qrun.homenode import exitcodes
from qrun.homenode.jobstore import CANCELLED, DONE, FAILED, LOST, NewJob, Store, StoreError

if TYPE_CHECKING:
    from qrun.homenode.launchers import Launch
    from qrun.homenode.server_outcome import Outcome


def final_state(code: int, cancelled: bool) -> str:
    """A finished job's state from the status qrun returns for it."""
    if cancelled:
        return CANCELLED
    if code == 0:
        return DONE
    return LOST if code == exitcodes.LOST else FAILED


@dataclass
class JobRecord:
    store: Store | None
    job_id: int | None = None      # None: an interactive job, added once it has a host
    new: NewJob | None = None
    requeue: bool = False
    attempt: int = 0
    warned: bool = False

    def placed(self, launch: Launch) -> None:
        try:
            if self.store is None:
                self.store = Store()
            if self.job_id is None:
                assert self.new is not None
                self.job_id = self.store.add(self.new, pid=os.getpid())
            self.store.placed(self.job_id, launch.describe, launch.kind, launch.name,
                              f"waiting for {launch.waiting_for}" if launch.waiting_for else "")
        except StoreError as exc:
            self._warn(exc)

    def contact(self) -> None:
        if self.store is not None and self.job_id is not None:
            try:
                self.store.running(self.job_id)
            except StoreError as exc:
                self._warn(exc)

    def ended(self, outcome: Outcome | None, code: int, reason: str = "") -> None:
        if self.store is None or self.job_id is None:
            return
        try:
            rec = self.store.get(self.job_id)
            state = final_state(code, rec is not None and rec["cancelled"] is not None)
            why = f"requeued: its host was lost in attempt {self.attempt}"
            if state == LOST and self.requeue and self.store.requeued(self.job_id, why):
                return
            if outcome is None and not reason:
                reason = f"qrun: {exitcodes.DOC.get(code, f'exit status {code}')}"
            self.store.ended(self.job_id, state, code, outcome.status.get("signal") if outcome else None,
                             outcome.usage if outcome is not None else None, reason)
        except StoreError as exc:
            self._warn(exc)

    def _warn(self, exc: StoreError) -> None:
        if not self.warned:
            self.warned = True
            sys.stderr.write(f"qrun: the job is not recorded: {exc}\n")
