"""Cached calls about one entry of a home directory, named plainly: `D/name`, absolute,
with no dirfd. A listing of D answers them for every name (homenode/listings.py sends
listings, remote/metacache.py answers from them): with the entry's attributes for a stat,
with its target for a readlink, and with ENOENT for a name D does not hold.

All of it is derived from the table's argument kinds, so a cached call added there is
covered here without a word more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qrun.syscalls.abi import AT_SYMLINK_NOFOLLOW
from qrun.syscalls.model import DirFd, PathOut, StructOut, Syscall
from qrun.syscalls.table import TABLE

NAME_MAX, PATH_MAX = 255, 4096   # past these the kernel says ENAMETOOLONG, whatever D holds


@dataclass(frozen=True)
class EntryCall:
    path: int              # the wire argument holding the path
    dirfd: int | None      # the DirFd argument before it (None on the wire: no dirfd)
    follow: bool           # whether the last symlink is followed (unless the flags say not)
    at_flags: int | None   # the *at flags argument
    out: int | None        # the output argument
    gives: str             # what the output is: "stat", "link" (a readlink), "" (none we derive)


def _entry_call(sc: Syscall) -> EntryCall | None:
    if not sc.cached or len(sc.path_args) != 1:
        return None
    (i, kind), = sc.path_args
    dirfd = i - 1 if i > 0 and isinstance(sc.args[i - 1], DirFd) else None
    out, gives = None, ""
    for j, k in enumerate(sc.args):
        if isinstance(k, StructOut):
            out, gives = j, "stat" if k.type == "stat" else ""
        elif isinstance(k, PathOut):
            out, gives = j, "link"
    return EntryCall(i, dirfd, kind.follow, sc.at_flags_args[0] if sc.at_flags_args else None, out, gives)


ENTRY_CALLS: dict[str, EntryCall] = {
    sc.name: call for sc in TABLE if (call := _entry_call(sc)) is not None}


def entry_of(op: str, args: list[Any]) -> tuple[EntryCall, bytes, bytes] | None:
    """(the call's shape, D as written, name) if `op(args)` asks about D/name plainly, with
    no dirfd (see plain_entry)."""
    call = ENTRY_CALLS.get(op)
    if call is None or len(args) <= call.path:
        return None
    if call.dirfd is not None and args[call.dirfd] is not None:
        return None
    entry = plain_entry(args[call.path])
    return None if entry is None else (call, *entry)


def plain_entry(path: object) -> tuple[bytes, bytes] | None:
    """(D as written, name) if `path` names D/name plainly: absolute, with a last
    component that is a name (not "", "." or "..") under a directory other than /, and no
    name or path too long for the kernel."""
    if not isinstance(path, bytes) or not path.startswith(b"/") or len(path) >= PATH_MAX:
        return None
    d, _, name = path.rpartition(b"/")
    if not d.strip(b"/") or name in (b"", b".", b"..") or len(name) > NAME_MAX:
        return None
    return d, name


def follows(call: EntryCall, args: list[Any]) -> bool:
    """Whether the call follows a symlink its entry is."""
    if call.at_flags is not None and isinstance(args[call.at_flags], int):
        return call.follow and not args[call.at_flags] & AT_SYMLINK_NOFOLLOW
    return call.follow


def shape_of(call: EntryCall, op: str, args: list[Any]) -> tuple[Any, ...]:
    """The call with its path left out: whether home accepts these flags and modes (no
    EINVAL) does not depend on the name."""
    return (op, *(None if i == call.path else tuple(a) if isinstance(a, list) else a
                  for i, a in enumerate(args)))
