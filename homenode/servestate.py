"""What a batch job's home server leaves behind so that a successor can take the job over
if the server (the job's shepherd) is killed: the daemon then starts a new shepherd that
listens where the stub expects it, with the same keys, and the job goes on.

One directory per job, `serving/<job>/` beside the job records (mode 0700, as the records;
it holds the job's keys and environment):

- `server.json`, written once the stub has called: where the server listens, its keys and
  the stub's, the job's welcome, the stub's hello, the launcher's pid.
- `handles.log`, appended to: each home file the job holds open (handle, reopen flags,
  device and inode, path), each close, and the position of a directory being read.
- `journal`: the last request that changes something at home, written before it runs and
  again with its reply before the reply leaves, so a successor answers a resend of it from
  here (or says its outcome is unknown) instead of running it twice.
- `streams`: how many of the job's output chunks were written and the output files' sizes,
  written before home acknowledges them to the stub.

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
_STREAMS = struct.Struct("<QQQ")   # output chunks written, stdout's size, stderr's size


def journaled(op: str) -> bool:
    """Whether a request may change something at home, so that a successor must not run it
    again (a fetch only reads; a cached call's answer depends only on what it looks at)."""
    if op in wire.REPLY_DATA_OPS:
        return False
    sc = BY_NAME.get(op)
    return sc is None or not sc.cached


def serving_dir(records_dir: Path, job_id: int) -> Path:
    return records_dir / "serving" / str(job_id)


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
    journal: tuple[int, bool, list[bytes]] | None   # seq, whether it replied, the reply's frames
    out_seen: int
    sizes: tuple[int, int]


@dataclass
class ServeState:
    """The writer's side, owned by the job's home server."""
    directory: Path
    _log: int = -1
    _journal: int = -1
    _streams: int = -1
    _lines: int = 0
    _open: dict[int, HandleEntry] = field(default_factory=dict)
    _next: int = 1

    def start(self, server: dict[str, Any], taken: Taken | None = None) -> None:
        """Record the server (once its stub has called); a successor carries on `taken`."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomically(self.directory / "server.json", json.dumps(server).encode())
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        self._journal = os.open(self.directory / "journal", flags, 0o600)
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
    def running(self, seq: int) -> None:
        if self.started:
            os.pwrite(self._journal, _JOURNAL.pack(seq, 0, 0), 0)

    def replied(self, seq: int, frames: wire.Frames) -> None:
        if not self.started:
            return
        parts = [_JOURNAL.pack(seq, 1, len(frames))]
        for f in frames:
            parts += [_FRAME.pack(len(f)), bytes(f)]
        os.pwrite(self._journal, b"".join(parts), 0)

    def output(self, out_seen: int, sizes: tuple[int, int]) -> None:
        if self.started:
            os.pwrite(self._streams, _STREAMS.pack(out_seen, *sizes), 0)

    def close(self, remove: bool) -> None:
        for fd in (self._log, self._journal, self._streams):
            if fd >= 0:
                os.close(fd)
        self._log = self._journal = self._streams = -1
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)


def take(directory: Path) -> Taken | None:
    """What a server killed while serving left in `directory`; None if it left nothing a
    successor could use (it had not recorded its start, or the files are damaged)."""
    try:
        server = json.loads((directory / "server.json").read_bytes())
        log = (directory / "handles.log").read_text()
        journal = (directory / "journal").read_bytes()
        streams = (directory / "streams").read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(server, dict):
        return None
    handles, next_handle = _replay(log)
    out_seen, out_size, err_size = _STREAMS.unpack(streams) if len(streams) >= _STREAMS.size else (0, 0, 0)
    return Taken(server, handles, next_handle, _read_journal(journal), out_seen, (out_size, err_size))


def _replay(log: str) -> tuple[dict[int, HandleEntry], int]:
    handles: dict[int, HandleEntry] = {}
    next_handle = 1
    for line in log.splitlines():
        words = line.split()
        with contextlib.suppress(ValueError, IndexError):   # (a line cut short by the kill)
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
    if len(data) < _JOURNAL.size:
        return None
    seq, replied, count = _JOURNAL.unpack_from(data)
    frames: list[bytes] = []
    at = _JOURNAL.size
    for _ in range(count if replied else 0):
        if at + _FRAME.size > len(data):
            return seq, False, []
        (n,) = _FRAME.unpack_from(data, at)
        frames.append(data[at + _FRAME.size:at + _FRAME.size + n])
        at += _FRAME.size + n
    return seq, bool(replied) and len(frames) == count, frames


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
