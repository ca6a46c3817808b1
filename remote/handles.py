"""Home handles the job's fds refer to, and closing the ones no job process holds any more."""

from __future__ import annotations

from qrun.remote.channel import Rpc
from qrun.remote.fds import FdSpace
from qrun.remote.keptopens import KeptOpens
from qrun.remote.procs import ProcessTable
from qrun.remote.rocopies import ReadOnlyCopies
from qrun.remote.writeback import LiveFiles


class HandleSweeper:
    def __init__(self, rpc: Rpc, fds: FdSpace, table: ProcessTable, live: LiveFiles,
                 kept: KeptOpens) -> None:
        self.rpc = rpc
        self.fds = fds
        self.table = table
        self.live = live
        self.kept = kept
        self.open: set[int] = set()      # home handles of placeholders and live copies
        self.pending: set[int] = set()   # being installed right now (not in any fd table yet)
        # The handles of read-only copies (None: inotify could not be had, and every copy
        # is swept as a live one is)
        self.read_only = _read_only_copies(fds.ro_dir)
        self.installing_ro: set[int] = set()  # read-only copies whose install has not ended
        self.deferred = False

    def installing(self, h: int, read_only: bool = False) -> None:
        """`h` is being installed; a read-only copy's handle is let go when the kernel says
        its last description closed (rocopies.py), the others by the fd tables."""
        if read_only and self.read_only is not None:
            self.read_only.add(h)
            self.installing_ro.add(h)
            return
        self.open.add(h)
        self.pending.add(h)

    def installed(self, h: int, ok: bool) -> None:
        """The install of `h` ended (`ok`: the open succeeded; not ok: it failed, or its
        thread died or exec'd first, in which case the open may have run all the same)."""
        self.installing_ro.discard(h)
        if self.read_only is not None and h in self.read_only:
            if not ok:
                # What the kernel says decides: an open that ran has queued its IN_OPEN.
                self.let_go_closed(thorough=True)
                if self.read_only.never_opened(h):
                    self.read_only.discard(h)
                    self._release(h)
            return
        self.pending.discard(h)
        if not ok:
            self.sweep(only=h)

    def locking(self, h: int | None) -> None:
        """A lock is taken on `h`: a fresh open would not have it, so it is never kept, and
        the lock must go at home once the job lets go of the handle. A read-only copy's
        untrapped close would not tell in time, so its name moves to copies/ (its close is
        trapped again) and the fd tables decide from now on."""
        self.kept.changed(h)
        if h is None or self.read_only is None or h not in self.read_only:
            return
        self.fds.to_copies(h)
        self.read_only.discard(h)
        self.open.add(h)

    def let_go_closed(self, thorough: bool = False) -> None:
        """Let go of the read-only copies' handles the job closed for good (cheap: no
        system call unless the job may have closed one)."""
        if self.read_only is None:
            return
        closed, lost = self.read_only.let_go(thorough)
        for h in closed:
            self._release(h)
        # Counts lost: the fd tables decide for these (once installed).
        self.open.update(lost)
        self.pending.update(h for h in lost if h in self.installing_ro)

    def fork_done(self, tid: int) -> None:
        self.table.forking.discard(tid)
        if self.deferred:
            self.sweep()

    def sweep(self, only: int | None = None) -> None:
        """Close home handles no job process refers to any more."""
        self.let_go_closed(thorough=True)
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
                self._release(h)
        self.live.reap()

    def _release(self, h: int) -> None:
        """No job process holds `h`: its local name goes, and the handle is closed at home
        unless a live file's write-back or a kept open still needs it."""
        live = self.live.release(h)
        kept = not live and self._kept(h)
        self.fds.forget(h, keep_name=kept)
        if not live and not kept:
            self.rpc.pending_close.append(h)

    @property
    def read_only_copies(self) -> bool:
        """Whether read-only copies get names of their own (their close untrapped)."""
        return self.read_only is not None

    def _kept(self, h: int) -> bool:
        kept, evicted = self.kept.keep(h)
        if evicted is not None:
            self.rpc.pending_close.append(evicted)
        return kept


def _read_only_copies(directory: str) -> ReadOnlyCopies | None:
    try:
        return ReadOnlyCopies(directory)
    except OSError:  # (the user's inotify instances used up: sweeping still works)
        return None
