"""The job's services, handed to every handler: the home channel, the fd space, the pid
map, the handle sweeper, path resolution, the live files and the job's home identity."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from qrun.remote.channel import GoLocal, HomeBusy, Rpc, is_busy
from qrun.remote.fds import Chunk, FdSpace
from qrun.remote.handles import HandleSweeper
from qrun.remote.keptopens import KeptOpens
from qrun.remote.loopanswers import WINDOW_NS, LoopAnswers
from qrun.remote.metacache import CACHED, MetaCache, key_of
from qrun.remote.pids import PidMap
from qrun.remote.procs import ProcessTable
from qrun.remote.resolver import Resolver
from qrun.remote.stop import Stop
from qrun.remote.tracee import Memory, Thread
from qrun.remote.writeback import LiveFiles
from qrun.syscalls.paths import PathPolicy
from qrun.syscalls.table import TABLE

FETCH_CHUNK = 8 << 20


def errno_of(name: str | None) -> int:
    """The errno number of a reply's errno name (EIO for anything unknown)."""
    value = getattr(errno, name or "", None)
    return value if isinstance(value, int) else errno.EIO


@dataclass
class Job:
    rpc: Rpc
    fds: FdSpace
    policy: PathPolicy
    identity: dict[str, Any]
    arch: str
    table: ProcessTable
    pids: PidMap
    handles: HandleSweeper
    paths: Resolver
    live: LiveFiles
    kept: KeptOpens
    warn_sink: Callable[[str], None]
    warned: set[str] = field(default_factory=set)
    fetched: int = 0   # bytes of home files brought into local copies
    mem: Memory = field(default_factory=Memory)
    meta: MetaCache = field(default_factory=MetaCache)
    loop: LoopAnswers | None = None   # the C wait loop's mirror of `meta` (None: no such loop)
    pushes_taken_ns: int = 0          # when home's drops that had arrived were last taken in

    def __post_init__(self) -> None:
        self.rpc.on_push = self._pushed
        self.rpc.on_reply = self._replied
        if self.loop is not None:
            self.meta.on_forget = self.loop.forget

    def _replied(self, rep: dict[str, Any]) -> None:
        if self.meta.replied(rep):  # (a drop was lost: nothing kept can be trusted)
            self.rpc.pending_close += self.kept.drop([], True)

    def _pushed(self, msg: dict[str, Any]) -> None:
        """Home's drop: cached answers go, and kept opens whose answer went are closed. Or
        a directory listing to answer from."""
        if msg["t"] == "list":
            self.meta.listed(msg)
            return
        everything = self.meta.drop(msg)
        self.rpc.pending_close += self.kept.drop(msg["c"], everything)
        lost = msg.get("lost")
        if isinstance(lost, list):
            self.live.detach([h for h in lost if isinstance(h, int) and not isinstance(h, bool)])

    @classmethod
    def build(cls, rpc: Rpc, fds: FdSpace, policy: PathPolicy, identity: dict[str, Any], arch: str,
              warn: Callable[[str], None], debug: bool = False) -> Job:
        table = ProcessTable()
        pids = PidMap(rpc, table, debug)
        live = LiveFiles(rpc, fds, table, warn)
        kept = KeptOpens(on_close=fds.forget)
        return cls(rpc, fds, policy, identity, arch, table, pids, HandleSweeper(rpc, fds, table, live, kept),
                   Resolver(fds, policy, pids, table), live, kept, warn,
                   loop=LoopAnswers(arch, list(TABLE)))

    def call(self, t: Thread, op: str, args: list[Any]) -> dict[str, Any]:
        """Ask the home node, or answer from the metadata cache what it still holds.
        Raises HomeBusy (wait and ask again) or GoLocal (the path leads to a tree this host
        serves)."""
        if op != "fetch":
            self.live.sync_changed()  # home never shows the job less than it has written
        key = key_of(op, args) if op in CACHED else None
        if key is not None and self.answerable_here():
            hit = self.meta.get(key) or self.meta.derive(key, op, args)
            if hit is not None:
                return hit
        rep = self.rpc.call(op, args, tid=t.tid, umask=t.fs.umask)
        if key is not None:
            self.meta.put(key, rep)
        if is_busy(rep):
            raise HomeBusy(op)
        local = rep["o"].get("local") if rep["e"] else None
        if isinstance(local, list) and len(local) == 2 and isinstance(local[1], str):
            raise GoLocal(int(local[0]), local[1])
        return rep

    def answerable_here(self) -> bool:
        """Whether the stub may answer a call itself (from the metadata cache, or with a
        kept handle): not while handles wait to be closed at home, as their locks must go
        now, and only once home's drops that have arrived are applied."""
        if self.rpc.owes_closes:
            return False
        self.rpc.take_pushes()
        self.pushes_taken_ns = time.monotonic_ns()
        return True

    def loop_answers_until(self) -> int:
        """Until when (CLOCK_MONOTONIC ns) the C wait loop may answer from its mirror of the
        metadata cache (loopanswers.py): a short while after home's drops were last taken
        in, and not at all while the stub itself would not answer (see answerable_here) or
        a live file may have a tail to send home first (Job.call's sync_changed)."""
        if self.rpc.owes_closes or self.live.by_home:
            return 0
        return self.pushes_taken_ns + WINDOW_NS

    def offer_to_loop(self, s: Stop, rep: dict[str, Any], ret: int) -> None:
        """The answer `rep` (`ret`) to a cached call: the C wait loop may give it too, if
        the metadata cache keeps it."""
        if self.loop is not None and self.meta.holds(rep):
            self.loop.offer(s, rep, ret)

    def fetch(self, t: Thread, handle: int, size: int, start: int = 0) -> Iterator[Chunk]:
        """A home file's data from `start` on, in chunks, to be streamed into a local copy
        as they arrive (a large file never sits whole in the stub's memory)."""
        off, end = start, start + size
        while off < end:
            asks = ([handle, at, min(FETCH_CHUNK, end - at)] for at in range(off, end, FETCH_CHUNK))
            # (closed here, not by the garbage collector: a home lost meanwhile is raised)
            with closing(self.rpc.pipeline("fetch", asks, tid=t.tid, umask=t.fs.umask)) as replies:
                for rep in replies:
                    data = rep["o"].get("data", b"")
                    if rep["e"] or not data:
                        return
                    asked = min(FETCH_CHUNK, end - off)
                    self.fetched += len(data)
                    yield data
                    off += len(data)
                    if len(data) < asked:
                        break  # (a short read: the chunks in flight start at the wrong offsets)

    def fd_kind(self, s: Stop, i: int) -> tuple[str, int | None]:
        """What argument i's fd is (LOCAL, HOME or COPY, and its handle); for the first
        argument the C loop may have read its /proc link already."""
        if i == 0 and s.seen_fd_link is not None:
            return self.fds.classify(s.seen_fd_link)
        return self.fds.kind(s.tid, s.sarg(i))

    def warn_once(self, key: str, msg: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.warn_sink(msg)
