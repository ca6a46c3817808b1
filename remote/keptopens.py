"""Read-only opens of home files, kept at home for the next identical open.

An open goes home every time (for its permission check, and for the home handle that
fstat, locks and xattr calls on the fd need). Yet a build opens the same headers in every
compiler process, and each open costs a round trip. So when the job lets go of a read-only
copy's handle, the stub may keep it instead of closing it at home: the next open with the
same path and flags takes it over and installs the cached copy with no round trip.

That is coherent because home tracked the first open as it tracks a cached stat (see
homenode/watches.py): every directory entry the path went through, and the file itself,
are watched, and any change (a rename on the way, the file replaced, rewritten, chmod'ed)
drops the open's answer, and the stub then closes the kept handle. While no drop came,
opening again would reach the same file with the same rights: the kept handle is what a
new open would give. A handle whose open file description changed (a lock taken, F_SETFL)
is never kept: a new open would not have that.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from qrun.remote.metacache import Key

MAX_KEPT = 256   # home fds held for reuse (each is one fd at home)


class KeptOpens:
    def __init__(self, on_close: Callable[[int], None] = lambda handle: None) -> None:
        self._on_close = on_close  # a kept handle is to be closed at home (its name goes)
        # Handles in use that may be kept once let go: handle -> the open's key
        self._candidates: dict[int, Key] = {}
        # let go, open at home: key -> handle, least recently kept first
        self._kept: OrderedDict[Key, int] = OrderedDict()
        self._answer_of: dict[int, int] = {}  # handle -> the answer home tracks it by
        self._copy_of: dict[int, tuple[str, Any]] = {}  # handle -> (home path, Validator)
        self.reused = 0

    def __len__(self) -> int:
        return len(self._kept)

    def candidate(self, handle: int, key: Key, answer: object, home_path: str, v: Any) -> None:
        """A read-only copy's open (of home's file `v` at `home_path`), which home tracks
        as `answer` (its reply's "c")."""
        if isinstance(answer, int) and not isinstance(answer, bool):
            self._candidates[handle] = key
            self._answer_of[handle] = answer
            self._copy_of[handle] = (home_path, v)

    def changed(self, handle: int | None) -> None:
        """The handle's open file description changed (a lock, F_SETFL): never kept."""
        if handle is not None and self._candidates.pop(handle, None) is not None:
            self._forget(handle)

    def _forget(self, handle: int) -> None:
        self._answer_of.pop(handle, None)
        self._copy_of.pop(handle, None)

    def keep(self, handle: int) -> tuple[bool, int | None]:
        """The job let go of `handle`: whether it stays open at home for reuse, and a
        kept handle to close at home to make room for it (the least recently kept)."""
        key = self._candidates.pop(handle, None)
        if key is None or key in self._kept:
            self._forget(handle)
            return False, None
        evicted = None
        if len(self._kept) >= MAX_KEPT:
            _, evicted = self._kept.popitem(last=False)
            self._forget(evicted)
            self._on_close(evicted)
        self._kept[key] = handle
        return True, evicted

    def take(self, key: Key) -> tuple[int, str, Any] | None:
        """A kept handle for an open with this key (it is the caller's then, a candidate
        again), with its copy's home path and Validator; None if none is kept."""
        handle = self._kept.pop(key, None)
        if handle is None:
            return None
        self._candidates[handle] = key
        return (handle, *self._copy_of[handle])

    def drop(self, answers: list[Any], everything: bool) -> list[int]:
        """Home dropped these answers (or all): the kept handles to close at home now;
        handles in use stop being candidates."""
        stale = set(self._answer_of.values()) if everything else {a for a in answers if isinstance(a, int)}
        gone = [h for h, a in self._answer_of.items() if a in stale]
        closing = []
        for h in gone:
            self._forget(h)
            if self._candidates.pop(h, None) is None:  # kept, not in use: close it
                key = next(k for k, kh in self._kept.items() if kh == h)
                del self._kept[key]
                closing.append(h)
                self._on_close(h)
        return closing
