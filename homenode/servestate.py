"""What a batch job's home server leaves behind so that a successor can take the job over
if the server (the job's shepherd) is killed: the daemon then starts a new shepherd that
listens where the stub expects it, with the same keys, and the job goes on.

One directory per job, `serving/<job>/` beside the job records (mode 0700, as the records;
it holds the job's keys and environment):

- `server.json`, written once the stub has called: where the server listens, its keys and
  the stub's, the job's welcome, the stub's hello, the launcher's pid.
- `handles.log`, appended to: each home file the job holds open (handle, reopen flags,
  device and inode, path), each close, and the position of a directory being read.
- `last`: the number of the last request that began to run.
- `journal.0` .. `journal.3` (one per place in the stub's window of requests in flight,
  wire.REPLY_WINDOW): each request that may change something at home, written before it
  runs and again with its reply before the reply leaves, so a successor answers a resend
  from here (or says its outcome is unknown) instead of running it twice.
- `streams`: how many of the job's output chunks were written, and the one being written
  (its stream, the file's size before it, its length), so that a successor counts it
  written only if it is there.
- `ended.json`: the job's end as the stub reported it, written before home's `bye`, so a
  successor of a server killed just then records it.

A process killed at any point leaves these whole as far as the kernel's page cache goes
(no fsync: what they guard against is the server's death, not the machine's, which the job
does not survive either).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrun.syscalls import abi, structs, wire
from qrun.syscalls.abi import ARCH
from qrun.syscalls.table import BY_NAME

MAX_LOCK_OPS = 64        # lock changes kept per handle
COMPACT_AFTER = 20_000   # handles.log lines before it is rewritten with only the open handles
_JOURNAL = struct.Struct("<QBI")   # seq, replied?, number of frames; then each frame: <I len, bytes
_FRAME = struct.Struct("<I")
_LAST = struct.Struct("<Q")
_STREAMS = struct.Struct("<QQBQQ")   # chunks written; the one being written: n, fd, size before, length


def journaled(op: str) -> bool:
    """Whether a request may change something at home, so that a successor must not run it
    again (a fetch only reads; a cached call's answer depends only on what it looks at)."""
    if op in wire.REPLY_DATA_OPS:
        return False
    sc = BY_NAME.get(op)
    return sc is None or not sc.cached


@dataclass
class HandleEntry:
    path: bytes
    flags: int        # as the handle's fd had them (fcntl F_GETFL): how to open it again
    dev: int
    ino: int
    pos: int = 0      # a directory's position (getdents, lseek), where the successor seeks
    # The locks taken through it that still count, in order (see note_lock), and whether
    # older ones were left out (more than MAX_LOCK_OPS).
    locks: list[list[Any]] = field(default_factory=list)
    locks_cut: bool = False


@dataclass
class Taken:
    """What a successor finds: everything it needs to serve the job on."""
    server: dict[str, Any]
    handles: dict[int, HandleEntry]
    next_handle: int
    last: int                                          # the last request that began
    journal: dict[int, tuple[bool, list[bytes]]]       # seq -> whether it replied, its reply's frames
    out_seen: int
    ended: dict[str, Any] | None = None                # the stub's exit report, if it came


@dataclass
class ServeState:
    """The writer's side, owned by the job's home server."""
    directory: Path
    _log: int = -1
    _journal: list[int] = field(default_factory=list)
    _last: int = -1
    _streams: int = -1
    _lines: int = 0
    _open: dict[int, HandleEntry] = field(default_factory=dict)
    _next: int = 1

    def start(self, server: dict[str, Any], taken: Taken | None = None) -> None:
        """Record the server (once its stub has called); a successor carries on `taken`."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomically(self.directory / "server.json", json.dumps(server).encode())
        if self.started:
            return   # (a resent hello)
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (0 if taken is not None else os.O_TRUNC)
        self._journal = [os.open(self.directory / f"journal.{i}", flags, 0o600)
                         for i in range(wire.REPLY_WINDOW)]
        self._last = os.open(self.directory / "last", flags, 0o600)
        self._streams = os.open(self.directory / "streams", flags, 0o600)
        if taken is not None:
            self._open, self._next = dict(taken.handles), taken.next_handle
            self._compact()
        else:
            self._log = os.open(self.directory / "handles.log", flags | os.O_APPEND | os.O_TRUNC, 0o600)

    @property
    def started(self) -> bool:
        return self._log >= 0

    # ---- handles ------------------------------------------------------------------------
    def opened(self, h: int, fd: int, path: bytes) -> None:
        if not self.started:
            return
        st = os.fstat(fd)
        entry = HandleEntry(path, fcntl.fcntl(fd, fcntl.F_GETFL), st.st_dev, st.st_ino)
        self._open[h] = entry
        self._next = max(self._next, h + 1)
        self._append(f"+ {h} {entry.flags} {entry.dev} {entry.ino} {path.hex()}\n")

    def closed(self, h: int) -> None:
        if self.started and self._open.pop(h, None) is not None:
            self._append(f"- {h}\n")

    def positioned(self, h: int, pos: int) -> None:
        entry = self._open.get(h)
        if self.started and entry is not None and entry.pos != pos:
            entry.pos = pos
            self._append(f"p {h} {pos}\n")

    def locked(self, h: int, how: list[Any]) -> None:
        entry = self._open.get(h)
        if self.started and entry is not None:
            note_lock(entry, how)
            self._append(f"l {h} {_lock_words(how)}\n")

    def _append(self, line: str) -> None:
        os.write(self._log, line.encode())
        self._lines += 1
        if self._lines > COMPACT_AFTER + 2 * len(self._open):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the log with only what is open now (atomically: a kill meanwhile leaves
        the old log or the new one)."""
        lines = [f"n {self._next}\n"]
        for h, e in self._open.items():
            lines.append(f"+ {h} {e.flags} {e.dev} {e.ino} {e.path.hex()}\n")
            if e.pos:
                lines.append(f"p {h} {e.pos}\n")
            lines += [f"l {h} {_lock_words(how)}\n" for how in e.locks]
        _write_atomically(self.directory / "handles.log", "".join(lines).encode())
        if self._log >= 0:
            os.close(self._log)
        self._log = os.open(self.directory / "handles.log", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._lines = len(lines)

    # ---- requests and output ------------------------------------------------------------
    def began(self, seq: int) -> None:
        if self.started:
            os.pwrite(self._last, _LAST.pack(seq), 0)

    def running(self, seq: int) -> None:
        if self.started:
            os.pwrite(self._journal[seq % wire.REPLY_WINDOW], _JOURNAL.pack(seq, 0, 0), 0)

    def replied(self, seq: int, frames: wire.Frames) -> None:
        if not self.started:
            return
        parts = []
        for f in frames:
            parts += [_FRAME.pack(len(f)), bytes(f)]
        fd = self._journal[seq % wire.REPLY_WINDOW]
        os.pwrite(fd, b"".join(parts), _JOURNAL.size)   # (the body first: the header makes it count)
        os.pwrite(fd, _JOURNAL.pack(seq, 1, len(frames)), 0)

    def writing(self, out_seen: int, fd: int, size: int, length: int) -> None:
        """Output chunk out_seen + 1 is about to be written to `fd`, now `size` bytes long."""
        if self.started:
            os.pwrite(self._streams, _STREAMS.pack(out_seen, out_seen + 1, fd, size, length), 0)

    def written(self, out_seen: int) -> None:
        if self.started:
            os.pwrite(self._streams, _STREAMS.pack(out_seen, 0, 0, 0, 0), 0)

    def ended(self, report: dict[str, Any]) -> None:
        if self.started:
            _write_atomically(self.directory / "ended.json", json.dumps(report).encode())

    def close(self, remove: bool) -> None:
        for fd in (self._log, self._last, self._streams, *self._journal):
            if fd >= 0:
                os.close(fd)
        self._log = self._last = self._streams = -1
        self._journal = []
        if remove:
            discard(self.directory)


def discard(directory: Path) -> None:
    """What a server left for a successor, gone (it holds the job's keys)."""
    shutil.rmtree(directory, ignore_errors=True)


def take(directory: Path) -> Taken | None:
    """What a server killed while serving left in `directory`; None if it left nothing a
    successor could use (it had not recorded its start, or the files are damaged)."""
    try:
        return _take(directory)
    except Exception:   # (damaged beyond use: no successor rather than a crash)
        return None


SERVER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "job": str, "endpoint": str, "welcome": dict, "hello": dict, "roots": list, "timeout": (int, float),
    "keys": dict, "describe": str, "kind": str, "launcher": list, "cleanup": list, "verbose": bool,
    "argv0": str, "takeovers": int}


def _take(directory: Path) -> Taken | None:
    server = json.loads((directory / "server.json").read_bytes())
    if not isinstance(server, dict):
        return None
    server.setdefault("takeovers", 0)
    if any(not isinstance(server.get(k), t) for k, t in SERVER_FIELDS.items()):
        return None
    handles, next_handle = _replay((directory / "handles.log").read_text())
    journal: dict[int, tuple[bool, list[bytes]]] = {}
    for i in range(wire.REPLY_WINDOW):
        entry = _read_journal((directory / f"journal.{i}").read_bytes())
        if entry is not None:
            journal[entry[0]] = entry[1:]
    last_bytes = (directory / "last").read_bytes()
    last = max([_LAST.unpack(last_bytes[:_LAST.size])[0] if len(last_bytes) >= _LAST.size else 0, *journal])
    out_seen = _out_seen((directory / "streams").read_bytes())
    ended = directory / "ended.json"
    report = json.loads(ended.read_bytes()) if ended.exists() else None
    return Taken(server, handles, next_handle, last, journal, out_seen,
                 report if isinstance(report, dict) else None)


def _out_seen(streams: bytes) -> int:
    """Output chunks written: one that was being written counts if all of it is there (its
    file grew by its length, from where it was), else it is written again."""
    if len(streams) < _STREAMS.size:
        return 0
    seen, pending, fd, before, length = _STREAMS.unpack_from(streams)
    if pending:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size == before + length:
                return int(pending)
    return int(seen)


def _replay(log: str) -> tuple[dict[int, HandleEntry], int]:
    handles: dict[int, HandleEntry] = {}
    next_handle = 1
    for line in log.splitlines():
        words = line.split()
        with contextlib.suppress(ValueError, IndexError, struct.error):   # (a line cut short by the kill)
            if words[0] == "+":
                h = int(words[1])
                handles[h] = HandleEntry(bytes.fromhex(words[5]), int(words[2]), int(words[3]), int(words[4]))
                next_handle = max(next_handle, h + 1)
            elif words[0] == "-":
                handles.pop(int(words[1]), None)
            elif words[0] == "p" and int(words[1]) in handles:
                handles[int(words[1])].pos = int(words[2])
            elif words[0] == "l" and int(words[1]) in handles:
                how: list[Any] = [words[2], int(words[3]), *map(bytes.fromhex, words[4:5])]
                note_lock(handles[int(words[1])], how)
            elif words[0] == "n":
                next_handle = max(next_handle, int(words[1]))
    return handles, next_handle


def _read_journal(data: bytes) -> tuple[int, bool, list[bytes]] | None:
    """A journal slot: (seq, whether its reply is whole, the reply's frames)."""
    if len(data) < _JOURNAL.size:
        return None
    seq, replied, count = _JOURNAL.unpack_from(data)
    frames: list[bytes] = []
    at = _JOURNAL.size
    for _ in range(count if replied else 0):
        if at + _FRAME.size > len(data):
            return seq, False, []
        (n,) = _FRAME.unpack_from(data, at)
        if at + _FRAME.size + n > len(data):
            return seq, False, []
        frames.append(data[at + _FRAME.size:at + _FRAME.size + n])
        at += _FRAME.size + n
    return seq, bool(replied) and count > 0 and len(frames) == count, frames


def reopen(entry: HandleEntry) -> int:
    """The handle's file opened again as it was; OSError (ESTALE if the path now names
    another file: the job's was deleted or replaced while open)."""
    fd = os.open(entry.path, entry.flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC) | os.O_CLOEXEC)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (entry.dev, entry.ino):
        os.close(fd)
        raise OSError(errno.ESTALE, "replaced or deleted while open")
    if entry.pos:
        try:
            os.lseek(fd, entry.pos, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise
    return fd


def note_lock(entry: HandleEntry, how: list[Any]) -> None:
    """Keep what a successor must redo of a lock change: a flock replaces the last one (an
    unlock ends it); an fcntl lock of a range is kept in order, and an unlock of the whole
    file ends those of its kind (SQLite's unlock, for one)."""
    if how[0] == "flock":
        entry.locks = [k for k in entry.locks if k[0] != "flock"]
        if not how[1] & fcntl.LOCK_UN:
            entry.locks.append(how)
        return
    lk = structs.layout(ARCH, "flock").unpack(how[2])
    if (lk["type"], lk["whence"], lk["start"], lk["len"]) == (abi.F_UNLCK, os.SEEK_SET, 0, 0):
        entry.locks = [k for k in entry.locks if k[0] != "fcntl" or k[1] != how[1]]
        return
    entry.locks.append(how)
    if len(entry.locks) > MAX_LOCK_OPS:
        del entry.locks[0]
        entry.locks_cut = True


def relock(fd: int, entry: HandleEntry) -> str:
    """Take the handle's locks again on its new fd; what went wrong, for the job's log ("":
    nothing). Never waits: a lock someone else took meanwhile is not the job's any more."""
    for how in entry.locks:
        try:
            if how[0] == "flock":
                fcntl.flock(fd, how[1] | fcntl.LOCK_NB)
            else:
                fcntl.fcntl(fd, how[1], how[2])
        except OSError as exc:
            return f"a lock the job held on it could not be taken again ({exc.strerror}): it is not held now"
    if entry.locks_cut:
        return "its byte-range locks changed too often to be known exactly: some may not be held now"
    return ""


def _lock_words(how: list[Any]) -> str:
    return f"{how[0]} {how[1]}" + (f" {how[2].hex()}" if how[0] == "fcntl" else "")


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
