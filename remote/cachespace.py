"""Where the job's local copies of home files live on the execution host, and how much
room they may take there.

Every copy is fetched into the cache directory (`cache_dir`: the host's in the cluster
file, or --cache-dir; by default the host's $TMPDIR). Before a copy is stored, room is made
for it: within `cache_limit` if one is set, and always leaving RESERVE (or 5% of a small
disk) free for everything else. Room comes from the copies no job process has open any
more (a copy's only names are then its cache name and those kept opens keep for reuse,
which then go), least recently opened first; they are fetched again if
opened again. What cannot be made room for fails the open with ENOSPC, with one line
saying which file and where (a home file larger than the room the host has cannot be used
there: reads are the kernel's, so a copy must be whole).
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from collections.abc import Callable

RESERVE = 64 << 20   # bytes left free on the cache's disk (at most; 5% of a small one)


class CacheSpace:
    def __init__(self, directory: str, limit: int, warn: Callable[[str], None]) -> None:
        self.directory = directory
        self.limit = limit               # 0: no limit but the disk's
        self.warn = warn
        self.used = 0
        self.evicted = 0
        self.peak = 0
        # cache file -> (its size, the home path it copies), least recently opened first
        self._files: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self.on_evict: Callable[[str], None] = lambda home_path: None
        # Drop the names that link a home path's copy for no process (kept opens' names)
        self.unpin: Callable[[str], None] = lambda home_path: None
        self._over = False   # (said once)

    def free_on_disk(self) -> int:
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def reserve(self) -> int:
        st = os.statvfs(self.directory)
        return min(RESERVE, st.f_blocks * st.f_frsize // 20)

    def check(self) -> str | None:
        """At the job's start: a line to print if the cache's disk is nearly full."""
        free = self.free_on_disk()
        if free < 2 * self.reserve() or (self.limit and free < self.limit):
            return (f"the cache for home files at {self.directory} has {free >> 20} MiB free; "
                    "larger home files cannot be opened there (cache_dir, --cache-dir)")
        return None

    def used_now(self, path: str) -> None:
        if path in self._files:
            self._files.move_to_end(path)

    def make_room(self, size: int, home_path: str) -> None:
        """Room for a copy of `size` bytes, by evicting unused copies; OSError(ENOSPC)
        if there is not enough even then."""
        while self._short_of(size) and self._evict_one():
            pass
        if self._short_of_disk(size):
            msg = (f"{home_path} ({size >> 20} MiB) does not fit in the cache at {self.directory} "
                   f"({self.free_on_disk() >> 20} MiB free, every unused copy evicted)")
            self.warn(msg)
            raise OSError(errno.ENOSPC, msg)
        if self.limit and self.used + size > self.limit and not self._over:
            self._over = True
            self.warn(f"the copies of home files in {self.directory} take more than cache_limit "
                      f"({self.limit >> 20} MiB): every other copy is in use")

    def stored(self, path: str, size: int, home_path: str) -> None:
        self.forget(path)
        self._files[path] = (size, home_path)
        self.used += size
        self.peak = max(self.peak, self.used)

    def forget(self, path: str) -> None:
        old = self._files.pop(path, None)
        if old is not None:
            self.used -= old[0]

    def _short_of(self, size: int) -> bool:
        return bool(self.limit and self.used + size > self.limit) or self._short_of_disk(size)

    def _short_of_disk(self, size: int) -> bool:
        return self.free_on_disk() < size + self.reserve()

    def _evict_one(self) -> bool:
        """Remove the least recently opened copy no process has open; False if none."""
        for path, (_, home_path) in self._files.items():
            try:
                if os.stat(path).st_nlink > 1:
                    self.unpin(home_path)
                    if os.stat(path).st_nlink > 1:
                        continue  # linked for an open fd (ro/, copies/) or written (live/)
                os.unlink(path)
            except FileNotFoundError:
                pass
            self.forget(path)
            self.evicted += 1
            self.on_evict(home_path)
            return True
        return False
