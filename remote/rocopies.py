"""Read-only copies: when the job has let go of one is learnt from the kernel, not by
trapping close.

A home file opened read-only whose content is cached here is an fd on `ro/<handle>`, a
hard link to the cached copy, and the kernel runs every data call on it. Its close is
not trapped either (the C wait loop resumes it): inotify on `ro/` reports the install's
open of the name (IN_OPEN) and the last close of that open file description (IN_CLOSE_*),
which comes only when no fd of any process (dup'ed, inherited, in flight in a Unix
socket) and no mapping holds it any more; a scan of the fd tables could not tell the last
two. The stub counts each handle's descriptions and lets the handle go when the count is
back to zero. (A name has one description at a time: a reopen through /proc/PID/fd goes
home and gets a handle of its own, and an exec runs the cached copy itself.)

If the kernel's queue of events overflows, the counts are lost: those handles are then
let go as the others are, once no process's fd table holds them (handles.py). A lock on a
read-only copy moves its name to copies/, whose close is trapped (handles.locking).
"""

from __future__ import annotations

import os

from qrun.native import inotify, lib

OPENED = lib.IN_OPEN
CLOSED = lib.IN_CLOSE_NOWRITE | lib.IN_CLOSE_WRITE


class ReadOnlyCopies:
    def __init__(self, directory: str) -> None:
        fd = lib.qr_watch_init()
        if fd < 0:
            raise OSError(-fd, f"inotify for {directory}")
        self.fd = fd
        dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            wd = lib.qr_watch_add(fd, dfd, OPENED | CLOSED | lib.IN_ONLYDIR)
        finally:
            os.close(dfd)
        if wd < 0:
            os.close(fd)
            raise OSError(-wd, f"inotify watch on {directory}")
        self._descriptions: dict[int, int] = {}  # handle -> open descriptions of its name
        self._calls_seen = 0

    def __contains__(self, handle: int) -> bool:
        return handle in self._descriptions

    def __len__(self) -> int:
        return len(self._descriptions)

    def add(self, handle: int) -> None:
        """`handle`'s name is about to be opened for the job (its IN_OPEN is still to come)."""
        self._descriptions[handle] = 0

    def never_opened(self, handle: int) -> bool:
        """Whether no IN_OPEN of `handle`'s name has been read since it was added."""
        return self._descriptions.get(handle) == 0

    def discard(self, handle: int) -> None:
        self._descriptions.pop(handle, None)

    def let_go(self, thorough: bool) -> tuple[list[int], list[int]]:
        """The handles whose last description was closed since the last call, and those
        whose count was lost (the queue overflowed: their fd tables must tell). Unless
        `thorough` (a process exited or exec'd, which closes fds without a call), the
        queue is read only once the C wait loop has let a call on such an fd run."""
        if not self._descriptions:
            return [], []
        calls = lib.qr_ro_copy_calls()
        if not thorough and calls == self._calls_seen:
            return [], []
        events = self._queued()
        if events:  # (a close the loop let run may not have run yet: look again next time)
            self._calls_seen = calls
        return self._count(events)

    def _count(self, events: list[tuple[int, int, bytes]]) -> tuple[list[int], list[int]]:
        closed: list[int] = []
        for _wd, mask, name in events:
            if mask & lib.IN_Q_OVERFLOW:
                lost = list(self._descriptions)
                self._descriptions.clear()
                return closed, lost
            h = int(name) if name.isdigit() else -1
            n = self._descriptions.get(h)
            if n is None:
                continue  # (not ours, or let go already)
            n += (1 if mask & OPENED else 0) - (1 if mask & CLOSED else 0)
            if n > 0:
                self._descriptions[h] = n
            else:
                del self._descriptions[h]
                closed.append(h)
        return closed, []

    def _queued(self) -> list[tuple[int, int, bytes]]:
        out: list[tuple[int, int, bytes]] = []
        while True:
            try:
                out += inotify.events(os.read(self.fd, 1 << 16))
            except BlockingIOError:
                return out
            except InterruptedError:
                continue

    def close(self) -> None:
        os.close(self.fd)
