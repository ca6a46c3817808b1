"""The stub's metadata cache: home's answers to stat, access and readlink calls
(`Syscall.cached` in the table), kept until home drops them.

Home numbers each answer it lets the stub keep, watches what that answer depends on, and
sends a drop as soon as any of it changes (homenode/watches.py). Drops travel on the
connection the replies do, so one that went out before a reply is seen before it; the
stub takes in every drop that has arrived before it answers a call from here.

Home also sends whole directories (homenode/listings.py): each entry's attributes and the
set of names, numbered answers like the others. A call about an entry of a listed
directory is answered from the listing (`derive`) and then kept as if home had answered
it: with the entry's stat or link target, or ENOENT for a name the directory does not
hold. Only call shapes (flags, modes) home has already accepted are derived, since
whether a flag is valid does not depend on the name.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from typing import Any

from qrun.syscalls.entrycalls import entry_of, follows, plain_entry, shape_of
from qrun.syscalls.structs import STAT_FIELDS
from qrun.syscalls.table import TABLE

CACHED = frozenset(sc.name for sc in TABLE if sc.cached)

Key = tuple[Any, ...]


def key_of(op: str, args: list[Any]) -> Key:
    """The request as a dict key: the same call on the same path gets the same answer."""
    return (op, *(tuple(a) if isinstance(a, list) else a for a in args))


MODE = STAT_FIELDS.index("mode")
MAX_ANSWERS = 100_000   # past this (entries of listings included), everything is forgotten


Entry = tuple[int, list[int] | None, bytes | None]   # (number, stat wire or None, link target or None)


class KnownDir:
    """A home directory's entries as home listed them, by name; `complete` while its set
    of names (numbered `number`) holds."""

    def __init__(self, number: int, entries: dict[bytes, Entry]) -> None:
        self.number = number
        self.entries = entries
        self.complete = True


class MetaCache:
    def __init__(self) -> None:
        self._answers: dict[Key, dict[str, Any]] = {}
        self._keys: dict[int, list[Key]] = {}
        self._listings: dict[bytes, KnownDir] = {}
        self._listed: dict[int, tuple[bytes, bytes | None]] = {}   # number -> (dir, name; None: its names)
        self._shapes: set[Key] = set()   # call shapes home has answered without EINVAL
        self.hits = 0
        self.derived = 0
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
        keys = self._keys.get(rep["o"].get("c"), ())  # type: ignore[arg-type]
        return any(self._answers.get(key) is rep for key in keys)

    def put(self, key: Key, rep: dict[str, Any]) -> None:
        """Keep a reply home numbered for keeping (its "c")."""
        number = rep["o"].get("c")
        if rep["e"] in (None, "ENOENT") and not {"local", "busy"} & rep["o"].keys():
            self._accepted(key)
        if not isinstance(number, int) or isinstance(number, bool):
            return
        if len(self._answers) + len(self._listed) >= MAX_ANSWERS:
            self._forget_all()
        old = self._answers.get(key)
        if old is not None:
            _remove(self._keys, old["o"]["c"], key)
            self.on_forget()
        self._answers[key] = rep
        self._keys.setdefault(number, []).append(key)

    def derive(self, key: Key, op: str, args: list[Any]) -> dict[str, Any] | None:
        """The answer a listing gives to `op(args)` (then kept, as home's would be), if a
        listing holds its directory and home has accepted this shape of call before."""
        found = entry_of(op, args) if self._listings else None
        if found is None:
            return None
        call, d, name = found
        listing = self._listings.get(d)
        if listing is None or shape_of(call, op, args) not in self._shapes:
            return None
        entry = listing.entries.get(name)
        if entry is None:
            rep = _answer(listing.number, -1, "ENOENT") if listing.complete else None
        elif entry[1] is None or call.out is None:
            rep = None   # (no attributes came; access needs the job's permissions at home)
        elif call.gives == "stat":
            is_link = stat.S_ISLNK(entry[1][MODE])
            stat_of = {str(call.out): entry[1]}
            rep = None if is_link and follows(call, args) else _answer(entry[0], 0, None, stat_of)
        elif call.gives == "link":
            rep = _link_answer(entry, args[call.out], call.out)
        else:
            rep = None
        if rep is not None:
            self.derived += 1
            self.put(key, rep)
        return rep

    def _accepted(self, key: Key) -> None:
        """Home answered this request in the kernel's terms (no EINVAL, nothing it
        refused): its shape is one the kernel takes. (Only plain entries' shapes count,
        the ones derive asks about: a few per call and flag.)"""
        op, args = key[0], list(key[1:])
        found = entry_of(op, args)
        if found is not None:
            self._shapes.add(shape_of(found[0], op, args))

    def absent(self, path: bytes) -> bool:
        """Whether a listing says D/name (written plainly) does not exist: an open of it
        without O_CREAT fails with ENOENT (then counted as derived)."""
        entry = plain_entry(path) if self._listings else None
        listing = self._listings.get(entry[0]) if entry is not None else None
        if entry is None or listing is None or not listing.complete or entry[1] in listing.entries:
            return False
        self.derived += 1
        return True

    def listed(self, msg: dict[str, Any]) -> None:
        """Home's listing of a directory (a newer one replaces the last)."""
        entries = _entries(msg["e"])
        if entries is None:
            return   # (malformed: the calls go home, as without it)
        if len(self._answers) + len(self._listed) + len(entries) >= MAX_ANSWERS:
            self._forget_all()
        d = msg["d"]
        old = self._listings.get(d)
        if old is not None:   # (home dropped its numbers first, unless it had lost count of it)
            self._forget_numbers([old.number, *(e[0] for e in old.entries.values())])
        self._listings[d] = KnownDir(msg["n"], entries)
        self._listed[msg["n"]] = (d, None)
        for name, (number, _, _) in entries.items():
            self._listed[number] = (d, name)

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
        self._forget_numbers([n for n in msg["c"] if isinstance(n, int)])
        return False

    def _forget_numbers(self, numbers: list[int]) -> None:
        for number in numbers:
            for key in self._keys.pop(number, ()):
                self._answers.pop(key, None)
                self.on_forget()
            self._unlist(number)

    def _unlist(self, number: int) -> None:
        """A listing's answer went: its names (no more ENOENT from it), or one entry."""
        where = self._listed.pop(number, None)
        listing = self._listings.get(where[0]) if where is not None else None
        if where is None or listing is None:
            return
        d, name = where
        if name is None and listing.number == number:
            listing.complete = False
        elif name is not None and listing.entries.get(name, (None,))[0] == number:
            listing.entries[name] = (number, None, None)   # (still a name: only its attributes went)
        if not listing.complete and not listing.entries:
            del self._listings[d]

    def _forget_all(self) -> None:
        self._answers.clear()
        self._keys.clear()
        self._listings.clear()
        self._listed.clear()
        self.on_forget()


def _answer(number: int, r: int, e: str | None, o: dict[str, Any] | None = None) -> dict[str, Any]:
    """A reply as home would have sent it, numbered for keeping."""
    return {"t": "rep", "r": r, "e": e, "o": {**(o or {}), "c": number}}


def _link_answer(entry: Entry, size: Any, out: int) -> dict[str, Any] | None:
    number, attrs, target = entry
    if attrs is None or not isinstance(size, int) or size <= 0:
        return None
    if not stat.S_ISLNK(attrs[MODE]):
        return _answer(number, -1, "EINVAL")   # (not a symlink)
    if target is None:
        return None
    data = target[:size]
    return _answer(number, len(data), None, {str(out): data})


def _entries(raw: list[Any]) -> dict[bytes, Entry] | None:
    out: dict[bytes, Entry] = {}
    for e in raw:
        if not (isinstance(e, list) and len(e) == 4 and isinstance(e[0], bytes) and isinstance(e[1], int)):
            return None
        attrs, target = e[2], e[3]
        if attrs is not None and not (isinstance(attrs, list) and len(attrs) == len(STAT_FIELDS)
                                      and all(isinstance(v, int) for v in attrs)
                                      and 0 <= attrs[MODE] < 1 << 32):
            return None
        if target is not None and not isinstance(target, bytes):
            return None
        out[e[0]] = (e[1], attrs, target)
    return out


def _remove(index: dict[int, list[Key]], number: int, key: Key) -> None:
    keys = index.get(number)
    if keys is not None and key in keys:
        keys.remove(key)
        if not keys:
            del index[number]
