"""Home handles the job's fds refer to, and closing the ones no job process holds any more."""

from __future__ import annotations

from qrun.remote.channel import Rpc
from qrun.remote.fds import FdSpace
from qrun.remote.keptopens import KeptOpens
from qrun.remote.procs import ProcessTable
from qrun.remote.writeback import LiveFiles


class HandleSweeper:
    def __init__(self, rpc: Rpc, fds: FdSpace, table: ProcessTable, live: LiveFiles,
                 kept: KeptOpens) -> None:
        self.rpc = rpc
        self.fds = fds
        self.table = table
        self.live = live
        self.kept = kept
        self.open: set[int] = set()      # home handles we installed placeholders or copies for
        self.pending: set[int] = set()   # being installed right now (not in any fd table yet)
        self.deferred = False

    def installing(self, h: int) -> None:
        self.open.add(h)
        self.pending.add(h)

    def installed(self, h: int, ok: bool) -> None:
        self.pending.discard(h)
        if not ok:
            self.sweep(only=h)

    def fork_done(self, tid: int) -> None:
        self.table.forking.discard(tid)
        if self.deferred:
            self.sweep()

    def sweep(self, only: int | None = None) -> None:
        """Close home handles no job process refers to any more."""
        if not self.open and not self.live.kept:
            return  # nothing to close: skip listing every process's fds (exits are frequent)
        if self.table.forking or self.table.early:
            self.deferred = True  # a child we do not know yet may hold any of them
            return
        self.deferred = False
        live: set[int] = set()
        for tgid in self.table.procs:
            live |= self.fds.handles_of(tgid)
        for h in list(self.open):
            if (only is None or h == only) and h not in live and h not in self.pending:
                self.open.discard(h)
                self.fds.forget(h)
                # (a live file's write-back handle stays, and so does a kept open's)
                if not self.live.release(h) and not self._kept(h):
                    self.rpc.pending_close.append(h)
        self.live.reap()

    def _kept(self, h: int) -> bool:
        kept, evicted = self.kept.keep(h)
        if evicted is not None:
            self.rpc.pending_close.append(evicted)
        return kept
