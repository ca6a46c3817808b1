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

A directory is listed after FIRST_AFTER calls a listing would have answered went home,
again (its names or some entries went stale) after as many as a quarter of its size, and
never if it holds more than MAX_ENTRIES: a listing costs a stat and a watch per entry, and
must pay for itself. A listing replaces the last: home forgets the last one's numbers as
it sends it, and drops them at the stub first (a listing lost on the way must not leave
answers kept under numbers nobody watches).
Entries get their watches only while all watches held stay under 1/WATCH_SHARE of the
budget; past it they travel as names only (their stats go home), and the directory is not
listed again while its names hold. Directories whose names the filesystem folds (case-
insensitive ext4, f2fs, tmpfs by their flag; XFS ascii-ci and ZFS found by asking for an
entry in the other case) or that hold a tree the execution host serves are never listed:
a name absent from the listing would not mean ENOENT there.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qrun.homenode.watches import ANY, LOCAL_FILESYSTEMS, Dep, Watches
from qrun.native import lib
from qrun.syscalls.abi import FS_CASEFOLD_FL, FS_IOC_GETFLAGS
from qrun.syscalls.entrycalls import entry_of, plain_entry
from qrun.syscalls.structs import stat_result_to_wire

FIRST_AFTER = 3
MAX_ENTRIES = 4096
WATCH_SHARE = 2
MAX_DIRS = 4096
NUMBER_BASE = 1 << 48
DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class Listing:
    """One listing as it goes to the stub: its names' number and its entries."""

    def __init__(self, d: bytes, names: int) -> None:
        self.d = d
        self.names = names
        self.entries: list[list[Any]] = []   # [name, number, stat wire or None, target or None]
        self.partial = False   # some entries are names only for want of watches

    def numbers(self) -> list[int]:
        return [self.names, *(e[1] for e in self.entries)]

    def without(self, stale: set[int]) -> Listing:
        """The listing with `stale` entries as names only (they still exist)."""
        for e in self.entries:
            if e[1] in stale:
                e[2] = e[3] = None
        return self

    def fields(self) -> dict[str, Any]:
        return {"d": self.d, "n": self.names, "e": self.entries}


@dataclass
class _Dir:
    """Home's account of one directory: calls that went home since its last listing, its
    size then (MAX_ENTRIES + 1: too large), and that listing's numbers."""
    misses: int = 0
    size: int = 0
    names: int | None = None
    entries: dict[bytes, int] = field(default_factory=dict)
    partial: bool = False   # some entries went as names only for want of watches


class Listings:
    def __init__(self, watches: Watches, tree_is_home: Callable[[str], bool]) -> None:
        self.w = watches
        self.tree_is_home = tree_is_home
        self._dirs: dict[bytes, _Dir] = {}
        self._next = NUMBER_BASE

    def missed(self, op: str, args: list[Any], e: str | None) -> bytes | None:
        """Home answered `op(args)` (error `e`), and the stub keeps the answer or it is an
        open's ENOENT: the directory to list now, if a listing would have answered this call
        and it is time."""
        entry = self._entry_asked(op, args, e)
        if entry is None:
            return None
        d, name = entry
        state = self._dirs.get(d)
        if state is None:
            if len(self._dirs) >= MAX_DIRS:
                self._dirs.clear()   # (what the stub holds stays watched; only counts go)
            state = self._dirs[d] = _Dir()
        if state.names is not None and self.w.holds(state.names):
            number = state.entries.get(name)
            if state.partial or number is None or self.w.holds(number):
                return None   # (what the stub holds could not answer it: a listing again neither)
        state.misses += 1
        again = state.size // 4 if state.names is not None else 0
        if state.size > MAX_ENTRIES or state.misses < max(FIRST_AFTER, again):
            return None
        state.misses = 0
        return d

    @staticmethod
    def _entry_asked(op: str, args: list[Any], e: str | None) -> tuple[bytes, bytes] | None:
        """(D, name) if `op(args)` asked about D/name in a way a listing answers."""
        if e not in (None, "ENOENT"):
            return None   # (EACCES and the like: not the listing's to say)
        if op == "open":   # (its ENOENT: an include search, a module search)
            return plain_entry(args[1]) if e and len(args) > 1 and args[0] is None else None
        found = entry_of(op, args)
        # (an access(), a statx(): no listing answers it but for its ENOENT)
        return None if found is None or not found[0].gives and e is None else found[1:]

    def listing(self, d: bytes) -> Listing | None:
        """Directory `d` listed, every answer in it watched; None if it cannot be (it is
        gone, not a directory, too large, not on a local filesystem, not searchable)."""
        if not self.w.room(MAX_ENTRIES + 1):
            return None
        deps = self.w.walk(d)
        if not deps or deps[-1][1] != ANY:
            return None
        try:
            dirfd = os.open(d, DIR_OPEN)
        except OSError:
            return None
        try:
            return self._list(d, dirfd, deps)
        except OSError:   # (EACCES, EIO: no listing; what it noted is forgotten)
            return None
        finally:
            os.close(dirfd)

    def _list(self, d: bytes, dirfd: int, deps: list[Dep]) -> Listing | None:
        wd = deps[-1][0]
        if (lib.qr_fs_magic(dirfd) not in LOCAL_FILESYSTEMS or self.w.watch_dir(dirfd) != wd
                or _folds_names(dirfd) or not self.tree_is_home(os.readlink(f"/proc/self/fd/{dirfd}"))):
            return None   # (or not what the walk reached: it changed meanwhile)
        os.stat(".", dir_fd=dirfd)   # (EACCES if it may be read but not searched)
        names = _names(dirfd)
        state = self._dirs.setdefault(d, _Dir())
        if names is None or _matches_other_case(dirfd, names):
            state.size = MAX_ENTRIES + 1   # (never listed)
            return None
        state.size = len(names)
        out = Listing(d, self._number())
        self.w.note(out.names, deps)
        try:
            for name, is_dir, is_link in names:
                got = self._entry(dirfd, name, is_dir, is_link, [*deps[:-1], (wd, name)])
                if got is not None:
                    out.entries.append(got)
                    out.partial |= got[2] is None and not is_link   # (no watch for it)
        except OSError:
            self.unsent(out)
            raise
        return out

    def _entry(self, dirfd: int, name: bytes, is_dir: bool, is_link: bool,
               deps: list[Dep]) -> list[Any] | None:
        """One entry, watched before it is read (what changes after is heard of); None if
        it went meanwhile (its delete drops the names)."""
        number = self._number()
        own = None if is_link else self.w.watch_entry(dirfd, name, is_dir, WATCH_SHARE)
        try:
            target = os.readlink(name, dir_fd=dirfd) if is_link else None
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if is_link and exc.errno == errno.EINVAL:   # (no longer a symlink)
                return [name, number, None, None]
            raise
        same = stat.S_ISLNK(st.st_mode) == is_link and stat.S_ISDIR(st.st_mode) == is_dir
        attrs = stat_result_to_wire(st) if same and (is_link or own is not None) else None
        if own is not None:
            deps.append((own, ANY))
        self.w.note(number, deps)
        return [name, number, attrs, target if attrs is not None else None]

    def sent(self, out: Listing) -> set[int]:
        """`out` goes to the stub: it replaces the last listing of its directory, whose
        numbers home forgets and returns, to drop at the stub before `out` goes (were
        `out` lost on the way, answers kept under them would no longer be watched)."""
        state = self._dirs.setdefault(out.d, _Dir())
        old = {n for n in (state.names, *state.entries.values()) if n is not None}
        for number in old:
            self.w.forget(number)
        state.names = out.names
        state.entries = {e[0]: e[1] for e in out.entries}
        state.partial = out.partial
        return old

    def unsent(self, out: Listing) -> None:
        for number in out.numbers():
            self.w.forget(number)

    def _number(self) -> int:
        self._next += 1
        return self._next


def _names(dirfd: int) -> list[tuple[bytes, bool, bool]] | None:
    """The directory's entries (name, is a directory, is a symlink), or None if it holds
    more than MAX_ENTRIES. (The types come from the directory itself where it keeps them.)"""
    out: list[tuple[bytes, bool, bool]] = []
    with os.scandir(dirfd) as it:
        for entry in it:
            if len(out) >= MAX_ENTRIES:
                return None
            out.append((os.fsencode(entry.name), entry.is_dir(follow_symlinks=False), entry.is_symlink()))
    return out


def _matches_other_case(dirfd: int, names: list[tuple[bytes, bool, bool]]) -> bool:
    """Whether a name differing only in case from an entry's finds that entry: XFS's
    ascii-ci and ZFS's case-insensitive datasets say so by no flag."""
    held = {name for name, _, _ in names}
    other = next((n.swapcase() for n in held if n.swapcase() not in held), None)
    if other is None:
        return False   # (no entry has a letter: no name could match one in another case)
    try:
        os.stat(other, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError:
        pass
    return True


def _folds_names(dirfd: int) -> bool:
    """Whether the filesystem matches names in this directory without regard to case."""
    flags = array.array("l", [0])
    try:
        fcntl.ioctl(dirfd, FS_IOC_GETFLAGS, flags, True)
    except OSError:
        return False   # (no such flags here: names are matched as they are)
    return bool(flags[0] & FS_CASEFOLD_FL)
