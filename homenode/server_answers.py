"""The answers the stub's metadata cache keeps, as home accounts for them (the protocol
is described in homenode/watches.py and docs/architecture.md).

Each drop is numbered, and every reply says how many drops went before it: a drop lost on
the way (a reconnect, a full queue) shows as a gap, and the stub then forgets every
answer rather than keep one that may be stale. Only answers that stay true while nothing
they depend on changes are kept: successes and the errors a path's entries decide
(ENOENT, ENOTDIR, EACCES, ELOOP, ENAMETOOLONG, EINVAL), never EMFILE, ENOMEM or EIO. With
home roots nothing is kept: the walk that watches a path would step outside the roots.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from qrun.homenode.executor import Tracker
from qrun.homenode.listings import Listings
from qrun.homenode.watches import Watches
from qrun.syscalls import wire

STABLE_ERRORS = frozenset({"ENOENT", "ENOTDIR", "EACCES", "ELOOP", "ENAMETOOLONG", "EINVAL"})


class Answers:
    def __init__(self, enabled: bool, tree_is_home: Callable[[str], bool] = lambda real: True) -> None:
        self.watches = Watches() if enabled else None
        self.listings = Listings(self.watches, tree_is_home) if self.watches is not None else None
        self.drops = 0    # drop messages sent so far
        self.mounts = _open_mountinfo() if enabled else None

    def fds(self) -> list[int]:
        """Descriptors to poll: inotify's (readable) and mountinfo's (POLLPRI on a change)."""
        watch_fd = self.watches.fd if self.watches is not None else None
        return [fd for fd in (watch_fd, self.mounts) if fd is not None]

    def fds_held(self) -> int:
        return len(self.fds()) + (self.watches.known_dirs() if self.watches is not None else 0)

    def close(self) -> None:
        if self.watches is not None:
            self.watches.close()
        if self.mounts is not None:
            os.close(self.mounts)
            self.mounts = None

    def tracker(self, seq: int) -> tuple[Tracker | None, list[bool]]:
        """The tracking hook for request `seq`, and where its results go."""
        tracked: list[bool] = []
        watches = self.watches
        if watches is None:
            return None, tracked

        def track(start: int | None, path: bytes, follow: bool) -> None:
            tracked.append(watches.track(seq, start, path, follow))
        return track, tracked

    def settle(self, seq: int, tracked: list[bool], e: str | None, o: dict[str, Any],
               keepable: bool = True) -> list[bytes]:
        """After request `seq` ran: mark its answer kept (o["c"]) if it may be, and the drops
        for what changed meanwhile, to send before its reply."""
        if self.watches is None:
            return []
        stale, everything = self.watches.changed()
        keep = (keepable and tracked and all(tracked) and seq not in stale and not everything
                and (e is None or e in STABLE_ERRORS) and not {"local", "busy"} & o.keys())
        if keep:
            o["c"] = seq
        else:
            self.watches.forget(seq)
        return self._drops(stale - {seq}, everything)

    def listing_after(self, op: str, a: list[Any], e: str | None) -> list[bytes]:
        """After the kept answer to `op(a)` (error `e`) went: the listing of its directory,
        if it is time for one (listings.py), with the drops for what changed while it was
        made."""
        if self.listings is None or self.watches is None:
            return []
        d = self.listings.missed(op, a, e)
        listing = self.listings.listing(d) if d is not None else None
        if listing is None:
            return []
        stale, everything = self.watches.changed()
        if everything or listing.names in stale:
            self.listings.unsent(listing)
            return self._drops(stale, everything)
        old = self.listings.sent(listing.without(stale))
        return [*self._drops(stale | old, everything), wire.encode("list", **listing.fields())]

    def forget(self, answer: int | None) -> None:
        """An answer the stub no longer holds (a kept open's handle closed)."""
        if answer is not None and self.watches is not None:
            self.watches.forget(answer)

    def changed(self, mounts: bool = False) -> list[bytes]:
        """Drops for changes seen while no request runs; `mounts`: the mount table moved,
        which no watch reports (a filesystem mounted over a cached ENOENT)."""
        if self.watches is None:
            return []
        if mounts:
            self.watches.everything_changed()
            return self._drops(set(), True)
        return self._drops(*self.watches.changed())

    def _drops(self, stale: set[int], everything: bool) -> list[bytes]:
        if not stale and not everything:
            return []
        self.drops += 1
        return [wire.encode("drop", c=sorted(stale), all=everything, n=self.drops)]


def _open_mountinfo() -> int | None:
    try:
        return os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
