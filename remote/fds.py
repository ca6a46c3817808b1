"""What a tracee's fd refers to, read from the kernel rather than mirrored.

Every home file the job opens is a home handle. A home regular file is an ordinary fd on
`ro/<handle>` or `copies/<handle>`, a hard link to the local file with its content: the
cached copy of a file opened read-only (rocopies.py), or the live file the job writes
(writeback.py), which every open of that file shares while it is live. Anything else is
a placeholder on `ph/<handle>`: a directory an fd on an empty local directory (so read and
write fail as on a directory), the rest an O_PATH fd on an empty file. /proc/PID/fd
therefore tells which handle an fd is, and dup, fork inheritance, close-on-exec and fd
numbering stay the kernel's job.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import xxhash
from qrun.remote.cachespace import CacheSpace
from qrun.syscalls import structs

# Home data as it arrives: a fetched chunk is a view of its ZeroMQ frame, never copied.
Chunk = bytes | memoryview

LOCAL, HOME, COPY = "local", "home", "copy"


@dataclass
class Validator:
    size: int
    mtime_ns: int
    ino: int
    dev: int

    @classmethod
    def of_wire_stat(cls, wire_stat: list[int]) -> Validator:
        st = dict(zip(structs.STAT_FIELDS, wire_stat, strict=True))
        return cls(size=st["size"], mtime_ns=st["mtime"] * 10**9 + st["mtime_ns"], ino=st["ino"],
                   dev=st["dev"])


class FdSpace:
    def __init__(self, root: str, space: CacheSpace | None = None) -> None:
        self.root = root
        self.ph_dir = os.path.join(root, "ph")
        self.copies_dir = os.path.join(root, "copies")
        self.ro_dir = os.path.join(root, "ro")
        self.cache_dir = os.path.join(root, "cache")
        self.empty_dir = os.path.join(root, "cwd")
        for d in (self.ph_dir, self.copies_dir, self.ro_dir, self.cache_dir, self.empty_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._ph_prefix = self.ph_dir + "/"
        self._copies_prefix = self.copies_dir + "/"
        self._ro_prefix = self.ro_dir + "/"
        self._cache_prefix = self.cache_dir + "/"
        self.cached: dict[str, Validator] = {}   # home path -> what the cached copy was made from
        self.handle_path: dict[int, str] = {}    # handle -> the home file's real path
        self._names: dict[int, str] = {}         # handle -> its local name (placeholder or copy)
        # Handles let go but kept open at home (keptopens.py), whose read-only copy's name
        # stays for their next install: no link, unlink or stat when the job opens again.
        self._kept_names: set[int] = set()
        self._serial: dict[str, int] = {}     # home path -> which store of its copy is cached
        self._name_serial: dict[int, int] = {}  # handle -> the store its ro/ name links
        self._stores = 0
        self.space = space or CacheSpace(root, 0, lambda msg: None)
        self.space.on_evict = self._evicted
        self.space.unpin = self._unpin

    def _evicted(self, home_path: str) -> None:
        self.cached.pop(home_path, None)

    def _unpin(self, home_path: str) -> None:
        """Room is needed: kept handles' names of this copy go (the handles stay kept, and
        their next open goes home if the copy is evicted)."""
        for h in [h for h in self._kept_names if self.handle_path.get(h) == home_path]:
            self.forget(h)

    # -- classification ---------------------------------------------------------------
    def kind(self, pid: int, fd: int) -> tuple[str, int | None]:
        if fd < 0:
            return LOCAL, None
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            return LOCAL, None
        return self.classify(target)

    def classify(self, target: str) -> tuple[str, int | None]:
        """What an fd whose /proc link reads `target` is. A handle whose name was already
        removed reads "<path> (deleted)": still that handle (home then says EBADF)."""
        for prefix, kind in ((self._ph_prefix, HOME), (self._copies_prefix, COPY), (self._ro_prefix, COPY)):
            if target.startswith(prefix):
                name = target[len(prefix):].removesuffix(" (deleted)")
                if name.isdigit():
                    return kind, int(name)
        return LOCAL, None

    def handles_of(self, pid: int) -> set[int]:
        found: set[int] = set()
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return found
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            kind, handle = self.classify(target)
            if handle is not None:
                found.add(handle)
        return found

    # -- placeholders and copies --------------------------------------------------------
    def placeholder(self, handle: int, directory: bool) -> str:
        path = self._names[handle] = self._ph_prefix + str(handle)
        if directory:
            os.makedirs(path, mode=0o700, exist_ok=True)
        elif not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        return path

    def link_copy(self, handle: int, cache_file: str, home_path: str, read_only: bool) -> str:
        """A per-open name for the local file (`read_only`: the cached copy, opened
        read-only): its fd then names its handle."""
        path = (self._ro_prefix if read_only else self._copies_prefix) + str(handle)
        if handle in self._kept_names:
            if self._names.get(handle) == path and self._kept_name_fresh(handle, home_path):
                self._kept_names.discard(handle)
                self.handle_path[handle] = home_path
                return path
            self.forget(handle)
        self._names[handle] = path
        self._name_serial[handle] = self._serial.get(home_path, -1)
        os.link(cache_file, path)
        self.handle_path[handle] = home_path
        return path

    def _kept_name_fresh(self, handle: int, home_path: str) -> bool:
        """Whether a kept handle's name links the copy now cached for `home_path` (the very
        store of it: a copy dropped and fetched again is another file)."""
        return (handle in self._kept_names and home_path in self.cached
                and self._name_serial.get(handle) == self._serial.get(home_path, -2))

    def to_copies(self, handle: int) -> None:
        """Move a read-only copy's name to copies/: its fds' close is trapped from now on."""
        name = self._names.get(handle)
        if name is not None and name.startswith(self._ro_prefix):
            new = self._copies_prefix + str(handle)
            os.rename(name, new)
            self._names[handle] = new

    def forget(self, handle: int, keep_name: bool = False) -> None:
        """No fd of the job holds `handle` any more: its local name goes. `keep_name`: the
        handle stays open at home for reuse, and a read-only copy's name stays with it."""
        name = self._names.get(handle)
        if keep_name and name is not None and name.startswith(self._ro_prefix):
            self._kept_names.add(handle)
            return
        self._kept_names.discard(handle)
        self._name_serial.pop(handle, None)
        self.handle_path.pop(handle, None)
        if name is None:
            return
        del self._names[handle]
        try:
            os.unlink(name)
        except IsADirectoryError:
            os.rmdir(name)  # (a directory's placeholder)
        except FileNotFoundError:
            pass

    def mirror_truncate(self, home_path: str, length: int) -> None:
        """Apply a cut the job made at home (truncate, or ftruncate of a placeholder) to
        the cached copy of that file, so other processes of the job reading it see it."""
        if home_path not in self.cached:
            return
        try:
            os.truncate(self.copy_path(home_path), length)
        except OSError:
            pass

    def copy_path(self, home_path: str) -> str:
        return self._cache_prefix + xxhash.xxh3_128_hexdigest(home_path.encode("utf-8", "surrogateescape"))

    def fresh_copy(self, home_path: str, v: Validator, handle: int | None = None) -> str | None:
        """The cached copy of home's file `v`, if it is still here; for a kept `handle`
        whose name stayed, that name holds this copy's content (no need to look)."""
        old = self.cached.get(home_path)
        path = self.copy_path(home_path)
        if old == v and ((handle is not None and self._kept_name_fresh(handle, home_path))
                         or os.path.exists(path)):
            self.space.used_now(path)
            return path
        return None

    def store_copy(self, home_path: str, v: Validator, atime_ns: int,
                   chunks: Iterable[Chunk]) -> str:
        path = self.copy_path(home_path)
        self.cached.pop(home_path, None)
        self.space.forget(path)
        self.space.make_room(v.size, home_path)
        tmp = path + ".part"
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            for c in chunks:
                view = memoryview(c)
                while view:
                    view = view[os.write(fd, view):]
            # Permissions are home's to check (access, open and exec ask home). Here the
            # owner may do anything: the job may write a file it created read-only, and
            # exec a file it has written and made executable since.
            os.fchmod(fd, 0o700)
            os.utime(fd, ns=(atime_ns, v.mtime_ns))
        except BaseException:
            os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        # Replace atomically: a tracee still reading an older copy keeps its inode.
        os.rename(tmp, path)
        self.cached[home_path] = v
        self._stores += 1
        self._serial[home_path] = self._stores
        self.space.stored(path, v.size, home_path)
        return path
