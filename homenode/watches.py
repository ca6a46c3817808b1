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

import errno
import os
import stat
import struct
from typing import Any

from qrun.native import lib

ANY = b""   # the name of a dependency on a directory's contents as a whole
MASK = (lib.IN_ATTRIB | lib.IN_MODIFY | lib.IN_CLOSE_WRITE | lib.IN_CREATE | lib.IN_DELETE
        | lib.IN_MOVED_FROM | lib.IN_MOVED_TO | lib.IN_DELETE_SELF | lib.IN_MOVE_SELF
        | lib.IN_ONLYDIR)
FILE_MASK = (lib.IN_ATTRIB | lib.IN_MODIFY | lib.IN_CLOSE_WRITE | lib.IN_DELETE_SELF
             | lib.IN_MOVE_SELF)
ENTRY_EVENTS = lib.IN_CREATE | lib.IN_DELETE | lib.IN_MOVED_FROM | lib.IN_MOVED_TO
MAX_ANSWERS = 200_000  # past this, everything is dropped and counting starts again
MAX_HOPS = 40          # symlinks followed in one resolution, as the kernel's limit
EVENT = struct.Struct("iIII")

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
        self._local_dev: dict[int, bool] = {}
        self._wds: set[int] = set()
        self.max_watches = _watch_budget()
        self.overflowed = False

    def close(self) -> None:
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
        try:
            deps = self._walk(start, path, follow)
        except OSError:
            return False
        if deps is None:
            return False
        self._deps.setdefault(answer, []).extend(deps)
        for dep in deps:
            self._by_dep.setdefault(dep, set()).add(answer)
            self._by_wd.setdefault(dep[0], set()).add(answer)
        return True

    def _walk(self, start: int | None, path: bytes, follow: bool) -> list[Dep] | None:
        """The kernel's path walk, one component at a time (`..` physically, symlinks
        followed up to MAX_HOPS), noting each step; None if a step is not watchable.
        `start` is the directory a relative path starts from (None: the cwd)."""
        absolute = path.startswith(b"/")
        flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        cur = os.open("/" if absolute else ".", flags, dir_fd=None if absolute else start)
        pending = _components(path)
        deps: list[Dep] = []
        hops = 0
        try:
            wd = self._watch(cur)
            at_dir = True   # where the walk stands is a directory (not the last name's file)
            while pending and wd is not None:
                name = pending.pop(0)
                if name == b"..":
                    cur = self._step(cur, b"..")
                    wd = self._watch(cur)
                    continue
                deps.append((wd, name))
                try:
                    st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                except OSError:
                    return deps  # the walk ends here (ENOENT, ENOTDIR, EACCES): so does the call's
                if stat.S_ISLNK(st.st_mode) and (pending or follow):
                    hops += 1
                    if hops > MAX_HOPS:
                        return deps
                    target = os.readlink(name, dir_fd=cur)
                    if target.startswith(b"/"):
                        cur = self._step(cur, b"/")
                        wd = self._watch(cur)
                    pending[:0] = _components(target)
                elif stat.S_ISDIR(st.st_mode):
                    cur = self._step(cur, name)
                    wd = self._watch(cur)
                else:
                    at_dir = False
                    if not pending and not stat.S_ISLNK(st.st_mode):
                        # A link count moves without any directory of this path hearing
                        # of it (a link or unlink under another name): watch the file too.
                        wd = self._watch_file(cur, name)
                        if wd is not None:
                            deps.append((wd, ANY))
            if wd is None:
                return None
            if at_dir:
                deps.append((wd, ANY))  # a directory's own times follow its contents
            return deps
        finally:
            os.close(cur)

    @staticmethod
    def _step(cur: int, name: bytes) -> int:
        nxt = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
        os.close(cur)
        return nxt

    def _watch(self, dirfd: int) -> int | None:
        """The watch on dirfd's directory, if its filesystem reports every change."""
        assert self.fd is not None
        dev = os.fstat(dirfd).st_dev
        local = self._local_dev.get(dev)
        if local is None:
            local = self._local_dev[dev] = lib.qr_fs_magic(dirfd) in LOCAL_FILESYSTEMS
        if not local:
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

    def _watch_file(self, dirfd: int, name: bytes) -> int | None:
        assert self.fd is not None
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            return None
        try:
            return self._add(fd, FILE_MASK)
        finally:
            os.close(fd)

    def forget(self, answer: int) -> None:
        """An answer no longer held (dropped, or not cached after all)."""
        for dep in self._deps.pop(answer, []):
            _discard(self._by_dep, dep, answer)
            _discard(self._by_wd, dep[0], answer)

    # ---- after changes: which answers they drop ---------------------------------------
    def changed(self) -> tuple[set[int], bool]:
        """Read the queued events: the answers they make stale, and whether every answer
        is (the event queue overflowed, or too many answers are held)."""
        if self.fd is None:
            return set(), False
        stale: set[int] = set()
        everything = False
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            for wd, mask, name in _events(data):
                if mask & lib.IN_Q_OVERFLOW:
                    everything = True
                elif name:
                    stale |= self._by_dep.get((wd, name), set())
                    if mask & ENTRY_EVENTS:  # (a directory's times move with its entries only)
                        stale |= self._by_dep.get((wd, ANY), set())
                else:  # the inode itself: changed, deleted, moved, unmounted, its watch gone
                    stale |= self._by_wd.get(wd, set())
                if mask & lib.IN_IGNORED:
                    self._wds.discard(wd)
        if everything or len(self._deps) >= MAX_ANSWERS:
            self._by_dep.clear()
            self._by_wd.clear()
            self._deps.clear()
            return set(), True
        for answer in stale:
            self.forget(answer)
        return stale, False


def _watch_budget() -> int:
    """A quarter of the user's inotify watches, at most 50 000."""
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as f:
            return min(50_000, int(f.read()) // 4)
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


def _events(data: bytes) -> list[tuple[int, int, bytes]]:
    """(wd, mask, name) of each inotify_event in a read's bytes."""
    out = []
    off = 0
    while off + EVENT.size <= len(data):
        wd, mask, _cookie, length = EVENT.unpack_from(data, off)
        name = data[off + EVENT.size: off + EVENT.size + length].rstrip(b"\0")
        out.append((wd, mask, name))
        off += EVENT.size + length
    return out
