"""Directory listings home pushes to the stub: once a job has asked about a few entries of
one home directory, it gets the whole directory, every name with its attributes, and
answers the rest of its stats, lstats, readlinks and ENOENTs there (NFS's READDIRPLUS,
brought on by demand rather than by a readdir). Compilers' include searches, PATH
searches, Python's imports and make's stat of every target ask exactly this way.

Each entry is an answer of its own, watched as a single stat of it would be (the steps to
the directory, its (directory, name) entry, its own inode), so that a change to one file
drops that entry alone; the set of names is one more answer, which any entry coming or
going drops (then the stub no longer answers ENOENT from it, but still knows the entries
it holds). They are numbered from NUMBER_BASE up, a range no request's number reaches.

A directory is listed after FIRST_AFTER misses a listing would have answered, again
(its entries or names went stale) after as many as a quarter of its size, and never if
it holds more than MAX_ENTRIES: a listing costs a stat and a watch per entry, and must
pay for itself. Entries' watches
take at most a WATCH_SHARE-th of the watch budget; past it entries are sent without
attributes (a name only: its stat goes home).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from qrun.homenode.watches import ANY, LOCAL_FILESYSTEMS, Dep, Watches
from qrun.native import lib
from qrun.syscalls.entrycalls import entry_of
from qrun.syscalls.structs import stat_result_to_wire

FIRST_AFTER = 3
MAX_ENTRIES = 4096
WATCH_SHARE = 2
MAX_DIRS_COUNTED = 4096
NUMBER_BASE = 1 << 48
DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class Listing:
    """One listing as it goes to the stub: its names' number and its entries."""

    def __init__(self, d: bytes, names: int) -> None:
        self.d = d
        self.names = names
        self.entries: list[list[Any]] = []   # [name, number, stat wire or None, target or None]

    def numbers(self) -> list[int]:
        return [self.names, *(e[1] for e in self.entries)]

    def without(self, stale: set[int]) -> Listing | None:
        """What is still true of it once `stale` answers went (None: not its names)."""
        if self.names in stale:
            return None
        self.entries = [e for e in self.entries if e[1] not in stale]
        return self

    def fields(self) -> dict[str, Any]:
        return {"d": self.d, "n": self.names, "e": self.entries}


class Listings:
    def __init__(self, watches: Watches) -> None:
        self.w = watches
        self._misses: dict[bytes, int] = {}
        self._sizes: dict[bytes, int] = {}     # entries at the last listing (MAX_ENTRIES + 1: too many)
        self._names: dict[bytes, int] = {}     # the last listing's names number
        self._partial: set[bytes] = set()      # listed with entries the watch budget left out
        self._next = NUMBER_BASE
        self.sent = 0

    def missed(self, op: str, args: list[Any], e: str | None) -> bytes | None:
        """Home answered `op(args)` (error `e`) and the stub keeps the answer: the
        directory to list now, if a listing would have answered this call and it is time."""
        found = entry_of(op, args)
        if found is None or not found[0].gives and e != "ENOENT":
            return None   # (an access(), a statx(): no listing would have answered it)
        d = found[1]
        if d not in self._misses and len(self._misses) >= MAX_DIRS_COUNTED:
            self._misses.clear()
        count = self._misses[d] = self._misses.get(d, 0) + 1
        size = self._sizes.get(d, 0)
        names = self._names.get(d)
        if names is not None and d in self._partial and self.w.holds(names):
            return None   # (out of watches for its entries: listing it again cannot help)
        # (listed before: only once its stale entries have cost a quarter of what listing
        # it again costs)
        again = size // 4 if names is not None else 0
        if size > MAX_ENTRIES or count < max(FIRST_AFTER, again):
            return None
        self._misses[d] = 0
        return d

    def listing(self, d: bytes) -> Listing | None:
        """Directory `d` listed, every answer in it watched; None if it cannot be (it is
        gone, not a directory, too large, not on a local filesystem, or not searchable)."""
        deps = self.w.walk(d)
        if not deps or deps[-1][1] != ANY:
            return None
        try:
            dirfd = os.open(d, DIR_OPEN)
        except OSError:
            return None
        try:
            return self._list(d, dirfd, deps)
        finally:
            os.close(dirfd)

    def _list(self, d: bytes, dirfd: int, deps: list[Dep]) -> Listing | None:
        wd = deps[-1][0]
        if lib.qr_fs_magic(dirfd) not in LOCAL_FILESYSTEMS or self.w.watch_dir(dirfd) != wd:
            return None   # (not what the walk reached: it changed meanwhile)
        names = _names(dirfd)
        if names is None:
            self._sizes[d] = MAX_ENTRIES + 1
            return None
        self._sizes[d] = len(names)
        out = Listing(d, self._number())
        self.w.note(out.names, deps)
        steps = deps[:-1]
        for name in names:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue   # (gone meanwhile: its delete event drops the names anyway)
            except OSError:
                self._forget(out)
                return None   # (EACCES: the job could not stat its entries either)
            out.entries.append(self._entry(dirfd, name, st, [*steps, (wd, name)]))
        self._names[d] = out.names
        if any(e[2] is None and e[3] is None for e in out.entries):
            self._partial.add(d)
        else:
            self._partial.discard(d)
        self.sent += 1
        return out

    def _entry(self, dirfd: int, name: bytes, st: os.stat_result, deps: list[Dep]) -> list[Any]:
        number = self._number()
        attrs: list[int] | None = stat_result_to_wire(st)
        target = None
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(name, dir_fd=dirfd)
                # (stat again: reading the link may have moved its atime)
                attrs = stat_result_to_wire(os.stat(name, dir_fd=dirfd, follow_symlinks=False))
            except OSError:
                attrs = target = None
        else:
            own = self.w.watch_entry(dirfd, name, stat.S_ISDIR(st.st_mode), WATCH_SHARE)
            if own is None:
                attrs = None   # (a name only: without its own watch a link elsewhere goes unseen)
            else:
                deps.append((own, ANY))
        self.w.note(number, deps)
        return [name, number, attrs, target]

    def _forget(self, out: Listing) -> None:
        for number in out.numbers():
            self.w.forget(number)

    def _number(self) -> int:
        self._next += 1
        return self._next


def _names(dirfd: int) -> list[bytes] | None:
    """The directory's names, or None if it holds more than MAX_ENTRIES."""
    names: list[bytes] = []
    with os.scandir(dirfd) as it:
        for entry in it:
            if len(names) >= MAX_ENTRIES:
                return None
            names.append(os.fsencode(entry.name))
    return names
