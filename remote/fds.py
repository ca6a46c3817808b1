"""What a tracee's fd refers to, read from the kernel rather than mirrored.

Home placeholders are O_PATH fds on files named after their home handle, and local copies
are ordinary fds on files in the cache directory, so /proc/PID/fd tells which is which.
dup, fork inheritance, close-on-exec and fd numbering therefore stay the kernel's job.
"""

from __future__ import annotations

import hashlib
import os
import stat as st
from dataclasses import dataclass

LOCAL, HOME, COPY = "local", "home", "copy"


@dataclass
class Validator:
    size: int
    mtime_ns: int
    ino: int
    dev: int


class FdSpace:
    def __init__(self, root: str) -> None:
        self.root = root
        self.ph_dir = os.path.join(root, "ph")
        self.cache_dir = os.path.join(root, "cache")
        self.empty_dir = os.path.join(root, "cwd")
        for d in (self.ph_dir, self.cache_dir, self.empty_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._ph_prefix = self.ph_dir + "/"
        self._cache_prefix = self.cache_dir + "/"
        self.cached: dict[str, Validator] = {}   # home path -> what the copy was made from
        self.copy_home_path: dict[str, str] = {}  # cache file -> home path

    # -- classification ---------------------------------------------------------------
    def kind(self, pid: int, fd: int) -> tuple[str, int | str | None]:
        if fd < 0:
            return LOCAL, None
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            return LOCAL, None
        if target.startswith(self._ph_prefix):
            return HOME, int(target[len(self._ph_prefix):])
        if target.startswith(self._cache_prefix):
            return COPY, self.copy_home_path.get(target)
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
            if target.startswith(self._ph_prefix):
                found.add(int(target[len(self._ph_prefix):]))
        return found

    # -- placeholders and copies --------------------------------------------------------
    def placeholder(self, handle: int) -> str:
        path = self._ph_prefix + str(handle)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        return path

    def copy_path(self, home_path: str) -> str:
        return self._cache_prefix + hashlib.sha1(home_path.encode("utf-8", "surrogateescape")).hexdigest()

    def fresh_copy(self, home_path: str, v: Validator) -> str | None:
        old = self.cached.get(home_path)
        path = self.copy_path(home_path)
        if old == v and os.path.exists(path):
            return path
        return None

    def store_copy(self, home_path: str, v: Validator, mode: int, atime_ns: int,
                   chunks: list[bytes]) -> str:
        path = self.copy_path(home_path)
        tmp = path + ".part"
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            for c in chunks:
                view = memoryview(c)
                while view:
                    view = view[os.write(fd, view):]
            os.fchmod(fd, st.S_IMODE(mode))
            os.utime(fd, ns=(atime_ns, v.mtime_ns))
        finally:
            os.close(fd)
        # Replace atomically: a tracee still reading an older copy keeps its inode.
        os.rename(tmp, path)
        self.cached[home_path] = v
        self.copy_home_path[path] = home_path
        return path
