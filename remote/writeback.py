"""Home files the job writes: local files here, written back to home.

A regular home file opened for writing is a local file on this host (a *live* file), so
the kernel runs the job's writes, reads, seeks and shared mappings on it. What changed
goes home (close-to-open, as NFS and AFS):

- at every close and fsync/fdatasync of one of its fds, at an unlock, at msync (the files
  the caller maps) and at the end of the job: thoroughly (every block compared, since
  writes through a mapping need not change the file's times); and when the last job
  process lets go of it, if anything may have changed since;
- before any other call goes home (a stat, an open, a rename): its new tail and size, if
  its size or times changed, so home never shows the job a shorter file than the job
  wrote (changes inside it follow at the next thorough sync).

What changed is found without trapping writes: home's content is recorded as one digest
per block, and only blocks whose digest differs, or that lie past what home has, are
sent. A file's times are trusted to be unchanged only once they are older than the
kernel's timestamp granularity (git's "racy" rule): a write in the same clock tick as the
last write-back would not move them.

Every open of a home file that is live here (the same home inode; an exec runs the cached
copy) shares the one local file, so the job's processes see each other's writes at once
and O_APPEND stays atomic.
"""

from __future__ import annotations

import errno
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import xxhash
from qrun.remote.channel import Rpc
from qrun.remote.fds import Chunk, FdSpace, Validator
from qrun.remote.procs import ProcessTable

BLOCK = 256 << 10        # the unit of change detection
SEND_MAX = 8 << 20       # the largest write-back message
RACY_NS = 50_000_000     # well above any kernel's timestamp tick


def digest(data: bytes | memoryview) -> bytes:
    # A 128-bit XXH3, about ten times as fast as SHA-256 here. A changed block that kept its
    # digest would stay unsent; for a change not crafted to collide (the job's own data,
    # written by the user's own program) the odds are 2^-128.
    return xxhash.xxh3_128_digest(data)


@dataclass
class LiveFile:
    home_id: tuple[int, int]          # home's (st_dev, st_ino)
    home_path: str
    local: str                        # its name here
    fd: int                           # the stub's own read-write fd on it
    home: Validator                   # home's file as of the last open or write-back
    wb_handle: int | None             # the writable home handle write-back goes through
    handles: set[int] = field(default_factory=set)   # every job open of it
    writers: set[int] = field(default_factory=set)   # those open for writing
    kept: bool = False                # wb_handle outlives the job's opens (a mapping)
    mapped: bool = False              # a job process has mapped it: compare every block
    unchecked: bool = False           # a tail-only sync moved `sig` past unchecked blocks
    digests: list[bytes] = field(default_factory=list)  # each block as last sent
    synced_size: int = 0              # home's size, as far as the job is concerned
    base: int = 0                     # [0, base) was never fetched: never sent (`>> log`)
    sig: tuple[int, int, int] = (-1, -1, -1)   # local (size, mtime, ctime) at the last sync
    synced_at: int = 0                # when the last sync began (time.time_ns())
    error: str | None = None          # the last failed write-back's errno name


Fetch = Callable[[int, int], Iterable[Chunk]]   # (offset, size) -> home's data


class LiveFiles:
    def __init__(self, rpc: Rpc, fds: FdSpace, table: ProcessTable, warn: Callable[[str], None]) -> None:
        self.rpc = rpc
        self.fds = fds
        self.table = table
        self.warn = warn
        self.by_home: dict[tuple[int, int], LiveFile] = {}
        self.by_handle: dict[int, LiveFile] = {}
        self.live_dir = os.path.join(fds.root, "live")
        os.makedirs(self.live_dir, mode=0o700, exist_ok=True)
        self._names = 0
        self.bytes_sent = 0

    # -- opening -------------------------------------------------------------------------
    def find(self, v: Validator) -> LiveFile | None:
        return self.by_home.get((v.dev, v.ino))

    def detach(self, handles: list[int]) -> None:
        """Home lost these handles (its server was replaced and their files could not be
        opened again): their live files no longer stand for any file at home, whose inode
        number a new file there may get. (Write-backs through them fail, as they must.)"""
        for h in handles:
            lf = self.by_handle.get(h)
            if lf is not None and self.by_home.get(lf.home_id) is lf:
                del self.by_home[lf.home_id]

    def create(self, handle: int, home_path: str, v: Validator, source: str | None) -> LiveFile:
        """A new live file for a writable open: `source` (a fetched copy of home's content)
        or, if None, a sparse file of home's size whose content stays at home (`>> log`)."""
        self._names += 1
        local = os.path.join(self.live_dir, str(self._names))
        if source is not None:
            os.link(source, local)
            fd = os.open(local, os.O_RDWR | os.O_CLOEXEC)
        else:
            fd = os.open(local, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o700)
            os.ftruncate(fd, v.size)
        lf = LiveFile((v.dev, v.ino), home_path, local, fd, v, handle, {handle}, {handle},
                      synced_size=v.size)
        if source is None:
            lf.base = v.size
            lf.digests = [b""] * _blocks(v.size)
        else:
            lf.digests = list(_digests_of(fd, v.size))
        lf.sig, lf.synced_at = _sig(os.fstat(fd)), time.time_ns()
        # The job writes into what may be the cached copy: it is valid for home's file
        # again only once a write-back succeeded (_revalidate).
        self.fds.cached.pop(home_path, None)
        self.by_home[lf.home_id] = lf
        self.by_handle[handle] = lf
        return lf

    def attach(self, lf: LiveFile, handle: int, writable: bool, inside: bool, truncated: bool,
               v: Validator, fetch: Fetch) -> None:
        """Another open of a live file (home's file is `v` now); `inside`: it may read or
        write the file's existing content (anything but `>> log`). With O_TRUNC home cut
        the file already; if home's file changed in another way since the job last saw it,
        the open sees home's new content (close-to-open). Raises OSError(EIO) if home's
        content cannot be fetched; then nothing is registered."""
        if truncated:
            os.ftruncate(lf.fd, 0)
            lf.digests, lf.synced_size, lf.base = [], 0, 0
            lf.sig = _sig(os.fstat(lf.fd))
        elif v != lf.home and not lf.base:
            self.sync(lf, "all")  # (what a mapping changed goes first; home has the rest)
            self._refetch(lf, v, fetch)
        elif inside:
            self.fill(lf, fetch)
        lf.home = v
        lf.handles.add(handle)
        self.by_handle[handle] = lf
        if writable:
            lf.writers.add(handle)
            if lf.wb_handle is None:
                lf.wb_handle = handle

    def _refetch(self, lf: LiveFile, v: Validator, fetch: Fetch) -> None:
        _fetch_into(lf, fetch, v.size)
        os.ftruncate(lf.fd, v.size)
        lf.digests, lf.synced_size = list(_digests_of(lf.fd, v.size)), v.size
        lf.sig, lf.synced_at = _sig(os.fstat(lf.fd)), time.time_ns()

    def fill(self, lf: LiveFile, fetch: Fetch) -> None:
        """Fetch the part of an append-only live file that stayed at home, so it can be
        read or written here (another open of it, a fallocate). Raises OSError(EIO) if
        home cannot give all of it (a file the user may not read)."""
        if lf.base == 0:
            return
        _fetch_into(lf, fetch, min(lf.base, os.fstat(lf.fd).st_size))
        lf.base = 0
        lf.digests = list(_digests_of(lf.fd, lf.synced_size))

    def fill_handle(self, handle: int, fetch: Fetch) -> None:
        lf = self.by_handle.get(handle)
        if lf is not None:
            self.fill(lf, fetch)

    def truncated(self, handle: int, length: int) -> None:
        """The job cut the file (ftruncate): nothing below `length` is home's alone any more."""
        lf = self.by_handle.get(handle)
        if lf is not None and length < lf.base:
            lf.base = length

    def cut_at_home(self, home_path: str, length: int) -> None:
        """truncate(2) by path ran at home: the live files of that path are cut here too."""
        for lf in self.by_home.values():
            if lf.home_path == home_path:
                self.sync(lf, "all")
                os.ftruncate(lf.fd, length)
                lf.base = min(lf.base, length)
                lf.synced_size = length
                lf.digests = lf.digests[:_blocks(length)]
                if lf.digests and length % BLOCK:
                    lf.digests[-1] = b""  # (a cut block: compared afresh)
                lf.sig = _sig(os.fstat(lf.fd))

    # -- syncing -------------------------------------------------------------------------
    def sync_changed(self) -> None:
        """Before a call goes home: send the new tail and size of files whose size or
        times moved (changes inside the file follow at the next thorough sync). Errors
        stay recorded and are reported by the next close or fsync."""
        for lf in self.by_home.values():
            self.sync(lf, "tail")

    def sync_handle(self, handle: int) -> str | None:
        """close, fsync: all the file's changes go home; home's errno name if they could
        not."""
        lf = self.by_handle.get(handle)
        return self.sync(lf, "all") if lf is not None else None

    def write_back(self, handle: int) -> None:
        """An unlock: all the file's changes go home; a failure stays recorded for the
        file's next close or fsync to report."""
        lf = self.by_handle.get(handle)
        if lf is not None:
            self._write_back(lf, "all")

    def sync_mapped_by(self, tgid: int) -> list[str]:
        """msync: the files process `tgid` maps go home; the errno names of failures."""
        return [err for lf in list(self.by_home.values())
                if self._mapped(lf, [tgid]) and (err := self.sync(lf, "all"))]

    def sync_all(self) -> list[tuple[str, str]]:
        """The job's end: every live file, every block; (path, errno name) of failures."""
        failed = []
        for lf in list(self.by_home.values()):
            err = self.sync(lf, "all")
            if err:
                failed.append((lf.home_path, err))
        return failed

    def sync(self, lf: LiveFile, how: str) -> str | None:
        """Write back what changed, and return (and forget) the file's recorded error.
        "tail": only if its size or times moved, from home's size on (cheap, and never
        reports: the error waits for a thorough sync); "changed": every block, if the file
        moved, was mapped or a tail sync left blocks unchecked; "all": every block."""
        self._write_back(lf, how)
        if how == "tail":
            return None
        err, lf.error = lf.error, None
        return err

    def _write_back(self, lf: LiveFile, how: str) -> None:
        if how == "tail":
            if self._moved(lf):
                self._sync(lf, thorough=False)
        elif how == "all" or self._moved(lf) or lf.unchecked or lf.mapped or self._mapped(lf):
            self._sync(lf, thorough=True)

    def _moved(self, lf: LiveFile) -> bool:
        sig = _sig(os.fstat(lf.fd))
        return sig != lf.sig or sig[1] >= lf.synced_at - RACY_NS

    def _mapped(self, lf: LiveFile, tgids: list[int] | None = None) -> bool:
        """Whether a job process maps the file (its writes there move no file times)."""
        st = os.fstat(lf.fd)
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}".encode()
        ino = str(st.st_ino).encode()
        for tgid in self.table.procs if tgids is None else tgids:
            try:
                with open(f"/proc/{tgid}/maps", "rb") as f:
                    for line in f:
                        fields = line.split(None, 5)
                        if len(fields) >= 5 and fields[4] == ino and fields[3] == dev:
                            lf.mapped = True
                            return True
            except OSError:
                continue
        return False

    def _sync(self, lf: LiveFile, thorough: bool) -> None:
        if lf.wb_handle is None:
            return  # no writable open left (nor a mapping): nothing can have changed
        try:
            self._send_changes(lf, thorough)
        except OSError as exc:  # reading the local file
            lf.error = errno.errorcode.get(exc.errno or 0, "EIO")

    def _send_changes(self, lf: LiveFile, thorough: bool) -> None:
        started = time.time_ns()
        st = os.fstat(lf.fd)
        size = st.st_size
        lf.base = min(lf.base, size)
        n = _blocks(size)
        digests = (lf.digests + [b""] * n)[:n]
        first = 0 if thorough else min(size, lf.synced_size) // BLOCK
        reply: dict[str, Any] | None = None
        # (several runs in flight: home writes one while this end reads and digests the next;
        # closed here, not by the garbage collector, so a home lost meanwhile is raised)
        with closing(self.rpc.pipeline("writeback", self._requests(lf, size, first, digests))) as replies:
            for reply in replies:
                if reply["e"]:
                    lf.error = reply["e"]
                    return  # the next sync sends it all again (the digests stay as they were)
                self.bytes_sent += reply["r"]
        lf.digests, lf.synced_size = digests, size
        lf.sig, lf.synced_at = _sig(st), started
        lf.unchecked = not thorough and (lf.unchecked or first > 0)
        if reply is not None and isinstance(reply["o"].get("stat"), list):
            lf.home = Validator.of_wire_stat(reply["o"]["stat"])
        if thorough:
            self._revalidate(lf)

    def _requests(self, lf: LiveFile, size: int, first: int, digests: list[bytes]) -> Iterator[list[Any]]:
        """The write-back requests for the changed runs (the one that reaches the end sets
        home's size), and one for the size alone if no run reaches it."""
        sized = False
        for off, pieces in self._changes(lf, size, first, digests):
            end = off + sum(len(p) for p in pieces)
            sized = sized or end >= size
            yield [lf.wb_handle, off, size if end >= size else None, pieces]
        if size != lf.synced_size and not sized:
            yield [lf.wb_handle, size, size, []]

    def _changes(self, lf: LiveFile, size: int, first: int,
                 digests: list[bytes]) -> Iterator[tuple[int, list[bytes]]]:
        """Runs of changed blocks from block `first` on, as (offset, the blocks' data),
        each at most SEND_MAX; `digests` gets each block's digest (of the block as it is
        here now). The blocks travel as they were read, one frame each (never joined).
        Holes here are not read: past home's size, home's size change makes them the
        same hole."""
        run_off, run, run_len = -1, list[bytes](), 0
        for i in range(first, _blocks(size)):
            off = i * BLOCK
            length = min(BLOCK, size - off)
            old = lf.digests[i] if i < len(lf.digests) else b""
            changed, data = False, b""
            if off + length <= lf.base:
                pass  # never fetched, and the job only appends: home's
            elif _hole(lf.fd, off, off + length):
                digests[i] = _zeros_digest(length)
                changed = off < lf.synced_size and old != digests[i]
                data = bytes(length) if changed else b""
            else:
                data = os.pread(lf.fd, length, off)
                digests[i] = digest(data)
                changed = off + length > lf.synced_size or old != digests[i]
                grown = lf.synced_size - off  # home has this much of the block
                if changed and 0 < grown < length and old == digest(data[:grown]):
                    data, off = data[grown:], lf.synced_size  # only what was added
            if changed and off < lf.base:
                data, off = data[lf.base - off:], lf.base  # only what is past home's part
            if changed and run_off >= 0 and run_off + run_len != off:
                yield run_off, run  # (a run is one contiguous range)
                run_off, run, run_len = -1, [], 0
            if changed:
                run_off = off if run_off < 0 else run_off
                run.append(data)
                run_len += len(data)
            if run_off >= 0 and (not changed or run_len >= SEND_MAX):
                yield run_off, run
                run_off, run, run_len = -1, [], 0
        if run_off >= 0:
            yield run_off, run

    def _revalidate(self, lf: LiveFile) -> None:
        """Where the live file is also the cached copy of its home path, the cache is valid
        for what home now has (a later open needs no fetch, an exec runs what was written)."""
        if lf.base:
            return
        try:
            same = os.stat(self.fds.copy_path(lf.home_path)).st_ino == os.fstat(lf.fd).st_ino
        except OSError:
            return
        if same:
            self.fds.cached[lf.home_path] = lf.home

    # -- letting go ----------------------------------------------------------------------
    def release(self, handle: int) -> bool:
        """No job fd refers to `handle` any more. True if this module keeps it open at home
        for now (the write-back handle of a file a job process still maps)."""
        lf = self.by_handle.pop(handle, None)
        if lf is None:
            return False
        lf.handles.discard(handle)
        lf.writers.discard(handle)
        keep = False
        if handle == lf.wb_handle:
            # Locks belong to the job's opens: the handle goes when its fds go, and
            # write-back continues through another writable open.
            self._report(lf, self.sync(lf, "changed"))
            if lf.writers:
                lf.wb_handle = next(iter(lf.writers))
            elif self._mapped(lf):
                keep = lf.kept = True
            else:
                lf.wb_handle = None
        if not lf.handles and not lf.kept:
            self._drop(lf)
        return keep

    def reap(self) -> None:
        """Close the write-back handles kept for mappings that are gone now."""
        for lf in [lf for lf in self.by_home.values() if lf.kept]:
            if self._mapped(lf):
                continue
            self._report(lf, self.sync(lf, "all"))
            assert lf.wb_handle is not None
            self.rpc.pending_close.append(lf.wb_handle)
            lf.kept = False
            lf.wb_handle = next(iter(lf.writers), None)
            if not lf.handles:
                self._drop(lf)

    @property
    def kept(self) -> bool:
        return any(lf.kept for lf in self.by_home.values())

    def _report(self, lf: LiveFile, err: str | None) -> None:
        if err:
            self.warn(f"{lf.home_path}: writing the job's changes back failed ({err}); "
                      "they are not at home")
            # The cached copy may be this file, holding what home does not have: a later
            # open must fetch home's file, not trust the copy.
            self.fds.cached.pop(lf.home_path, None)

    def _drop(self, lf: LiveFile) -> None:
        if self.by_home.get(lf.home_id) is lf:   # (not if detached, and another took its place)
            del self.by_home[lf.home_id]
        os.close(lf.fd)
        try:
            os.unlink(lf.local)
        except FileNotFoundError:
            pass


def _sig(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _blocks(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK


def _digests_of(fd: int, size: int) -> Iterator[bytes]:
    for i in range(_blocks(size)):
        yield digest(os.pread(fd, min(BLOCK, size - i * BLOCK), i * BLOCK))


@functools.lru_cache(maxsize=4)
def _zeros_digest(length: int) -> bytes:
    return digest(bytes(length))


def _hole(fd: int, start: int, end: int) -> bool:
    """Whether [start, end) of the file holds no data (never written)."""
    try:
        return os.lseek(fd, start, os.SEEK_DATA) >= end
    except OSError as exc:
        return exc.errno == errno.ENXIO  # no data at or after start


def _fetch_into(lf: LiveFile, fetch: Fetch, end: int) -> None:
    """Home's bytes [0, end) into the live file; OSError(EIO) if home gives fewer."""
    at = 0
    for chunk in fetch(0, end):
        view = memoryview(chunk)
        while view:
            n = os.pwrite(lf.fd, view, at)
            view, at = view[n:], at + n
    if at < end:
        raise OSError(errno.EIO, f"{lf.home_path}: home gave {at} of {end} bytes")
