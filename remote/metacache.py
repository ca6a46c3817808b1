"""The stub's metadata cache: home's answers to stat, access and readlink calls
(`Syscall.cached` in the table), kept until home drops them.

Home numbers each answer it lets the stub keep, watches what that answer depends on, and
sends a drop as soon as any of it changes (homenode/watches.py). Drops travel on the
connection the replies do, so one that went out before a reply is seen before it; the
stub takes in every drop that has arrived before it answers a call from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qrun.syscalls.table import TABLE

CACHED = frozenset(sc.name for sc in TABLE if sc.cached)

Key = tuple[Any, ...]


def key_of(op: str, args: list[Any]) -> Key:
    """The request as a dict key: the same call on the same path gets the same answer."""
    return (op, *(tuple(a) if isinstance(a, list) else a for a in args))


MAX_ANSWERS = 100_000   # past this, everything is forgotten and the cache fills again


class MetaCache:
    def __init__(self) -> None:
        self._answers: dict[Key, dict[str, Any]] = {}
        self._keys: dict[int, Key] = {}
        self.hits = 0
        self.drops_seen = 0   # the number of the last drop taken in (home numbers them)
        # Called whenever an answer goes (its mirror in the C wait loop must go too).
        self.on_forget: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: Key) -> dict[str, Any] | None:
        rep = self._answers.get(key)
        if rep is not None:
            self.hits += 1
        return rep

    def replied(self, rep: dict[str, Any]) -> bool:
        """Any reply says how many drops home sent before it: fewer seen means one was
        lost, and nothing kept can be trusted. True then (everything was forgotten)."""
        sent = rep.get("dn")
        if isinstance(sent, int) and sent > self.drops_seen:
            self._forget_all()
            self.drops_seen = sent
            return True
        return False

    def holds(self, rep: dict[str, Any]) -> bool:
        """Whether `rep` is the answer kept for its request (just put, or just got)."""
        key = self._keys.get(rep["o"].get("c"))  # type: ignore[arg-type]
        return key is not None and self._answers.get(key) is rep

    def put(self, key: Key, rep: dict[str, Any]) -> None:
        """Keep a reply home numbered for keeping (its "c")."""
        number = rep["o"].get("c")
        if not isinstance(number, int) or isinstance(number, bool):
            return
        if len(self._answers) >= MAX_ANSWERS:
            self._forget_all()
        old = self._answers.get(key)
        if old is not None:
            self._keys.pop(old["o"]["c"], None)
            self.on_forget()
        self._answers[key] = rep
        self._keys[number] = key

    def drop(self, msg: dict[str, Any]) -> bool:
        """Home's "drop": these answers (or, with all, every one) are stale. One that does
        not follow the last seen means some were lost: then every answer goes. True if
        every answer went."""
        n = msg["n"]
        gap = n != self.drops_seen + 1
        self.drops_seen = max(self.drops_seen, n)
        if msg["all"] or gap:
            self._forget_all()
            return True
        for number in msg["c"]:
            key = self._keys.pop(number, None) if isinstance(number, int) else None
            if key is not None:
                self._answers.pop(key, None)
                self.on_forget()
        return False

    def _forget_all(self) -> None:
        self._answers.clear()
        self._keys.clear()
        self.on_forget()
