"""Home's side of the stub's metadata cache: what each cached answer depends on, watched
with inotify, and which answers a change makes stale.

An answer about a path (stat, access, readlink, and their ENOENT) depends on every
directory entry its resolution went through: each (directory, name) step, including
the symlinks followed; for a directory itself, its contents (its times and link count
change with them); for a file, the file itself (its link count moves when a link is made
or removed under another name, which no directory of this path hears of). Each such
inode is watched (one inotify watch per inode, shared); an event for (directory, name)
drops the answers that stepped through that entry, and an event on an inode itself
(changed, deleted, moved, unmounted) drops every answer that depends on it. Answers are
numbered by the caller; the stub holds them until dropped.

Order is what makes this coherent: the watches are in place before the call runs, and
the events queued by then are read before its reply is sent. A change during the call
makes its answer uncacheable; a change after it is a drop sent after the reply, on the
same connection, so the stub never keeps an answer older than a drop it has seen.

Only local filesystems qualify: inotify does not see another NFS client's changes.
"""

from __future__ import annotations

import os
import resource
import stat
from typing import Any

from qrun.native import inotify, lib

ANY = b""   # the name of a dependency on a directory's contents as a whole
# A directory's watch hears of its entries coming and going and of their attributes (a
# file's own watch hears of its writes: writes to the many files of a directory would
# otherwise wake home for nothing). IN_MASK_ADD: an inode's watch only ever gains events,
# whichever kind of answer asked for it first.
MASK = (lib.IN_ATTRIB | lib.IN_CREATE | lib.IN_DELETE | lib.IN_MOVED_FROM | lib.IN_MOVED_TO
        | lib.IN_DELETE_SELF | lib.IN_MOVE_SELF | lib.IN_ONLYDIR | lib.IN_MASK_ADD)
FILE_MASK = (lib.IN_ATTRIB | lib.IN_MODIFY | lib.IN_CLOSE_WRITE | lib.IN_DELETE_SELF
             | lib.IN_MOVE_SELF | lib.IN_MASK_ADD)
ENTRY_EVENTS = lib.IN_CREATE | lib.IN_DELETE | lib.IN_MOVED_FROM | lib.IN_MOVED_TO
MAX_ANSWERS = 200_000  # past this, everything is dropped and counting starts again
MAX_KNOWN_DIRS = 4096  # directories kept open to start walks from (fewer under a low fd limit)
DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
MAX_HOPS = 40          # symlinks followed in one resolution, as the kernel's limit

# statfs f_type of filesystems whose every change inotify sees: ext2/3/4, xfs, btrfs,
# tmpfs, overlayfs, f2fs, zfs, bcachefs, ramfs.
LOCAL_FILESYSTEMS = frozenset({0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0x794C7630,
                               0xF2F52010, 0x2FC12FC1, 0xCA451A4E, 0x858458F6})

Dep = tuple[int, bytes]   # (watch descriptor, entry name or ANY)


class Watches:
    def __init__(self) -> None:
        fd = lib.qr_watch_init()
        self.fd: int | None = fd if fd >= 0 else None   # None: nothing is cacheable
        self._by_dep: dict[Dep, set[int]] = {}
        self._by_wd: dict[int, set[int]] = {}
        self._deps: dict[int, list[Dep]] = {}
        self._wds: set[int] = set()
        # Directories reached from / by their plain names: key -> (fd, wd, deps, number)
        self._known: dict[bytes, tuple[int, int, list[Dep], int]] = {}
        self._known_key: dict[int, bytes] = {}
        self._next_known = -1   # (negative: never a request's number)
        self.max_watches = _watch_budget()
        self.max_known = min(MAX_KNOWN_DIRS, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 8)
        self.overflowed = False

    def close(self) -> None:
        for number in list(self._known_key):
            self._forget_known(number)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    # ---- before the call: what its answer will depend on ------------------------------
    def track(self, answer: int, start: int | None, path: bytes, follow: bool) -> bool:
        """Watch what resolving `path` from directory fd `start` steps through, and note
        `answer` as depending on it (start None: the cwd). False (and nothing noted) if
        it cannot be watched."""
        if self.fd is None or len(self._deps) >= MAX_ANSWERS:
            return False
        deps = self._walk(start, path, follow) if path or start is None else self._fd_itself(start)
        if deps is None:
            return False
        self._note(answer, deps)
        return True

    def walk(self, path: bytes) -> list[Dep] | None:
        """What resolving absolute `path` (symlinks followed) steps through, watched; None
        if a step cannot be watched."""
        return self._walk(None, path, True) if self.fd is not None else None

    def note(self, answer: int, deps: list[Dep]) -> None:
        """`answer` depends on `deps` (watched already): any change to them makes it stale."""
        self._note(answer, deps)

    def room(self, answers: int) -> bool:
        """Whether `answers` more may be noted without reaching MAX_ANSWERS."""
        return self.fd is not None and len(self._deps) + answers < MAX_ANSWERS

    def holds(self, answer: int) -> bool:
        """Whether `answer` is still tracked (nothing it depends on changed)."""
        return answer in self._deps

    def watch_entry(self, dirfd: int, name: bytes, is_dir: bool, share: int) -> int | None:
        """The watch on entry `name`'s own inode, if no more than 1/share of the budget
        is held (what the other answers need is left to them)."""
        if len(self._wds) * share >= self.max_watches:
            return None
        if not is_dir:
            return self.watch_file(dirfd, name)
        try:   # (no O_DIRECTORY: that would trigger an automount on the name)
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            return None
        try:
            return self.watch_dir(fd) if stat.S_ISDIR(os.fstat(fd).st_mode) else None
        finally:
            os.close(fd)

    def _walk(self, start: int | None, path: bytes, follow: bool) -> list[Dep] | None:
        """The kernel's path walk, one component at a time (`..` physically, symlinks
        followed up to MAX_HOPS), noting each step; None if a step is not watchable.
        `start` is the directory a relative path starts from (None: the cwd)."""
        pending = _components(path)
        if path.endswith(b"/"):
            follow = True   # a trailing slash follows the last symlink, as the kernel does
        w = _Walk(self)
        try:
            if path.startswith(b"/"):
                w.known(self._known, pending)
            else:
                w.enter(os.open(".", DIR_FLAGS, dir_fd=start))
            return w.run(pending, follow)
        except OSError:
            return None
        finally:
            w.leave()

    def _fd_itself(self, fd: int) -> list[Dep] | None:
        """An empty path names the fd's own file (AT_EMPTY_PATH: glibc's fstat of a file
        the job holds): the answer depends on that inode alone."""
        if lib.qr_fs_magic(fd) not in LOCAL_FILESYSTEMS:
            return None
        try:
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        except OSError:
            return None
        wd = self._add(fd, MASK if is_dir else FILE_MASK)
        return None if wd is None else [(wd, ANY)]

    def remember(self, key: bytes, dirfd: int, wd: int, deps: list[Dep]) -> bool:
        """Keep a directory reached from / by its plain name: later walks through it start
        there. It is forgotten (as an answer of its own) when any step to it changes."""
        if len(self._known) >= self.max_known or key in self._known:
            return False
        number = self._next_known
        self._next_known -= 1
        self._known[key] = (dirfd, wd, list(deps), number)
        self._known_key[number] = key
        self._note(number, deps)
        return True

    def _note(self, answer: int, deps: list[Dep]) -> None:
        self._deps.setdefault(answer, []).extend(deps)
        for dep in deps:
            self._by_dep.setdefault(dep, set()).add(answer)
            self._by_wd.setdefault(dep[0], set()).add(answer)

    def _forget_known(self, number: int) -> None:
        key = self._known_key.pop(number, None)
        if key is not None:
            os.close(self._known.pop(key)[0])

    def watch_dir(self, dirfd: int) -> int | None:
        """The watch on dirfd's directory, if its filesystem reports every change."""
        assert self.fd is not None
        # (asked each time, not remembered by st_dev: an unmounted filesystem's device
        # number goes to the next one mounted, which may be NFS)
        if lib.qr_fs_magic(dirfd) not in LOCAL_FILESYSTEMS:
            return None
        return self._add(dirfd, MASK)

    def _add(self, fd: int, mask: int) -> int | None:
        """A watch within our budget (the user's other programs need watches too)."""
        assert self.fd is not None
        wd = lib.qr_watch_add(self.fd, fd, mask)
        if wd < 0:
            return None   # (ENOSPC: the user is out of watches)
        if wd not in self._wds:
            if len(self._wds) >= self.max_watches:
                lib.qr_watch_rm(self.fd, wd)
                return None
            self._wds.add(wd)
        return int(wd)

    def watch_file(self, dirfd: int, name: bytes) -> int | None:
        assert self.fd is not None
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            return None
        try:
            return self._add(fd, FILE_MASK)
        finally:
            os.close(fd)

    def known_dirs(self) -> int:
        return len(self._known)

    def everything_changed(self) -> None:
        """What inotify cannot see happened (a mount or unmount at home): nothing held is
        known to be right any more."""
        self._forget_all()

    def forget(self, answer: int) -> None:
        """An answer no longer held (dropped, or not cached after all)."""
        for dep in self._deps.pop(answer, []):
            _discard(self._by_dep, dep, answer)
            _discard(self._by_wd, dep[0], answer)

    # ---- after changes: which answers they drop ---------------------------------------
    def changed(self) -> tuple[set[int], bool]:
        """Read the queued events: the answers they make stale, and whether every answer
        is (the event queue overflowed, or too many answers are held)."""
        stale: set[int] = set()
        everything = False
        for wd, mask, name in self._queued():
            everything = everything or bool(mask & lib.IN_Q_OVERFLOW)
            stale |= self._stale_after(wd, mask, name)
            if mask & lib.IN_IGNORED:
                self._wds.discard(wd)
        if everything or len(self._deps) >= MAX_ANSWERS:
            self._forget_all()
            return set(), True
        for answer in stale:
            self.forget(answer)
            if answer < 0:
                self._forget_known(answer)
        return {a for a in stale if a >= 0}, False

    def _queued(self) -> list[tuple[int, int, bytes]]:
        out: list[tuple[int, int, bytes]] = []
        while self.fd is not None:
            try:
                out += inotify.events(os.read(self.fd, 1 << 16))
            except BlockingIOError:
                break
            except InterruptedError:
                continue
        return out

    def _stale_after(self, wd: int, mask: int, name: bytes) -> set[int]:
        if not name:  # the inode itself: changed, deleted, moved, unmounted, its watch gone
            return set(self._by_wd.get(wd, ()))
        stale = set(self._by_dep.get((wd, name), ()))
        if mask & ENTRY_EVENTS:  # (a directory's own times move with its entries only)
            stale |= self._by_dep.get((wd, ANY), set())
        return stale

    def _forget_all(self) -> None:
        for number in list(self._known_key):
            self._forget_known(number)
        self._by_dep.clear()
        self._by_wd.clear()
        self._deps.clear()


class _Walk:
    """One path walk in progress: where it stands (a directory fd, its own or a known
    directory's), that directory's watch, and the steps noted so far."""

    def __init__(self, watches: Watches) -> None:
        self.w = watches
        self.cur = -1
        self.owned = False
        self.wd: int | None = None
        self.deps: list[Dep] = []
        self.key: bytes | None = None   # the plain name walked from /, while there is one

    def known(self, known: dict[bytes, tuple[int, int, list[Dep], int]], pending: list[bytes]) -> None:
        """Start at the deepest known directory that `pending` goes through (taking its
        names off `pending`), or at /."""
        key = b""
        while pending and pending[0] != b".." and key + b"/" + pending[0] in known:
            key += b"/" + pending.pop(0)
        entry = known.get(key)
        if entry is None:  # (/ itself, the first time)
            self.enter(os.open("/", DIR_FLAGS))
            self.key = b""
            if self.wd is not None and self.w.remember(b"", self.cur, self.wd, []):
                self.owned = False
            return
        self.cur, self.wd, deps, _ = entry
        self.deps = list(deps)
        self.key = key

    def enter(self, fd: int) -> None:
        self.leave()
        self.cur, self.owned = fd, True
        self.wd = self.w.watch_dir(fd)

    def step(self, name: bytes) -> None:
        self.enter(os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=self.cur))

    def leave(self) -> None:
        if self.owned:
            os.close(self.cur)
        self.owned = False

    def run(self, pending: list[bytes], follow: bool) -> list[Dep] | None:
        hops = 0
        at_dir = True   # where the walk stands is a directory (not the last name's file)
        while pending and self.wd is not None:
            name = pending.pop(0)
            if name == b"..":
                self.key = None
                self.deps.append((self.wd, b".."))  # (moved elsewhere, `..` leads elsewhere)
                self.step(b"..")
                continue
            self.deps.append((self.wd, name))
            try:
                st = os.stat(name, dir_fd=self.cur, follow_symlinks=False)
            except OSError:
                return self.deps  # the walk ends here (ENOENT, ENOTDIR, EACCES): so does the call's
            if stat.S_ISLNK(st.st_mode) and (pending or follow):
                hops += 1
                if hops > MAX_HOPS:
                    return self.deps
                self._follow(name, pending)
            elif stat.S_ISDIR(st.st_mode):
                self.step(name)
                self._remember(name)
            else:
                at_dir = False
                if not pending and not stat.S_ISLNK(st.st_mode):
                    self._watch_last(name)
        if self.wd is None:
            return None
        if at_dir:
            self.deps.append((self.wd, ANY))  # a directory's own times follow its contents
        return self.deps

    def _follow(self, name: bytes, pending: list[bytes]) -> None:
        self.key = None
        target = os.readlink(name, dir_fd=self.cur)
        if target.startswith(b"/"):
            self.enter(os.open("/", DIR_FLAGS))
        pending[:0] = _components(target)

    def _watch_last(self, name: bytes) -> None:
        """A link count moves without any directory of this path hearing of it (a link
        or unlink under another name): the file itself is watched too."""
        self.wd = self.w.watch_file(self.cur, name)
        if self.wd is not None:
            self.deps.append((self.wd, ANY))

    def _remember(self, name: bytes) -> None:
        if self.key is None or self.wd is None:
            return
        self.key += b"/" + name
        if self.w.remember(self.key, self.cur, self.wd, self.deps):
            self.owned = False  # (the known directory keeps the fd)


def _watch_budget() -> int:
    """An eighth of the user's inotify watches, at most 20 000: other programs of the user
    (editors, `tail -f`) and other jobs need theirs."""
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as f:
            return min(20_000, int(f.read()) // 8)
    except (OSError, ValueError):
        return 2_000


def _components(path: bytes) -> list[bytes]:
    return [c for c in path.split(b"/") if c not in (b"", b".")]


def _discard(index: dict[Any, set[int]], key: Any, answer: int) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(answer)
        if not ids:
            del index[key]
