"""open, openat, openat2, creat: a home regular file becomes a local file (a cached copy;
one opened for writing is live and written back, see writeback.py), anything else an
O_PATH placeholder whose calls are forwarded; the kernel picks the fd number."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from qrun.remote.fds import Chunk, Validator
from qrun.remote.forwarding import run_local
from qrun.remote.job import Job, errno_of
from qrun.remote.metacache import key_of
from qrun.remote.resolver import Target, dirfd_of, path_index
from qrun.remote.stop import Stop
from qrun.syscalls import flags as wflags
from qrun.syscalls import structs
from qrun.syscalls.abi import (
    AT_FDCWD,
    O_ACCMODE,
    O_APPEND,
    O_CLOEXEC,
    O_CREAT,
    O_EXCL,
    O_PATH,
    O_TMPFILE_BIT,
    O_TRUNC,
    O_WRONLY,
)
from qrun.syscalls.model import Flags, Int, StructIn
from qrun.syscalls.paths import normalize


def h_open(s: Stop, job: Job) -> None:
    """open and openat: flags and mode are the arguments after the path."""
    pi = path_index(s.sc)
    fl_i = next(i for i, k in enumerate(s.sc.args) if isinstance(k, Flags))
    _open(s, job, pi, s.arg(fl_i) & 0xFFFFFFFF, s.arg(fl_i + 1) & 0o7777, None)


def h_creat(s: Stop, job: Job) -> None:
    _open(s, job, 0, O_CREAT | O_TRUNC | O_WRONLY, s.arg(1) & 0o7777, None)


def h_openat2(s: Stop, job: Job) -> None:
    how_i = next(i for i, k in enumerate(s.sc.args) if isinstance(k, StructIn))
    lay = structs.layout(s.arch, "open_how")
    size_i = next(i for i, k in enumerate(s.sc.args) if isinstance(k, Int) and i > how_i)
    if s.larg(size_i) < lay.size:
        s.skip(-errno.EINVAL)
        return
    how = lay.unpack(s.read(s.arg(how_i), lay.size))
    _open(s, job, path_index(s.sc), how["flags"], how["mode"], how["resolve"])


def _open(s: Stop, job: Job, pi: int, fl: int, mode: int, resolve: int | None) -> None:
    tg = job.paths.resolve(s, dirfd_of(s, pi), s.arg(pi), False)
    if not tg.home:
        run_local(s, [(pi, tg)])
        return
    open_home(s, job, tg, fl, mode, exec_=False, resolve=resolve)


def open_home(s: Stop, job: Job, tg: Target, fl: int, mode: int, exec_: bool,
              resolve: int | None = None) -> str | None:
    """Open at home; install a copy or a placeholder fd, or (exec_) return the copy's path."""
    # (close-on-exec is the local fd's business, and the mode means nothing without O_CREAT)
    key = key_of("open", [tg.wire_dirfd(), tg.wire_path() or b"", fl & ~O_CLOEXEC,
                          mode if fl & O_CREAT else 0, resolve])
    if not exec_ and _reopened(s, job, key, fl):
        return None
    if _absent(job, tg, fl, resolve):
        s.skip(-errno.ENOENT)
        return None
    known = None
    if tg.handle is None and tg.path is not None:
        v = job.fds.cached.get(normalize(tg.path))
        if v is not None:
            known = [v.size, v.mtime_ns, v.ino, v.dev]
    rep = job.call(s.t, "open", [tg.wire_dirfd(), tg.wire_path() or b"",
                                 wflags.open_to_wire(s.arch, fl), mode, exec_, known, resolve])
    if rep["e"]:
        why = rep["o"].get("why")
        if why:
            job.warn_once(f"open:{why}", f"{tg.path}: {why} ({rep['e']})")
        s.skip(-errno_of(rep["e"]))
        return None
    o = rep["o"]
    h = int(o["handle"])
    home_path = os.fsdecode(o["path"])
    if o.get("kind") == "placeholder":
        _placeholder(s, job, h, home_path, fl, exec_, bool(o.get("dir")))
        return None
    if not exec_ and not o.get("writable"):
        # (before the fetch: a drop that comes while it runs must find the candidate)
        job.kept.candidate(h, key, o.get("c"), home_path, Validator.of_wire_stat(o["stat"]))
    try:
        return _copy(s, job, h, home_path, o, fl, exec_)
    except BaseException:
        job.kept.changed(h)
        raise


def _absent(job: Job, tg: Target, fl: int, resolve: int | None) -> bool:
    """An open (or exec) that home would fail with ENOENT, as a listing of its
    directory says (metacache.py): no O_CREAT or O_TMPFILE, no openat2 resolve flags."""
    if fl & (O_CREAT | O_TMPFILE_BIT) or resolve is not None or tg.handle is not None:
        return False
    path = tg.wire_path()
    return isinstance(path, bytes) and job.answerable_here() and job.meta.absent(path)


def _reopened(s: Stop, job: Job, key: tuple, fl: int) -> bool:
    """The open answered by a handle kept from an identical earlier one (keptopens.py),
    with its copy still cached and no live file of it here; False if there is none."""
    if fl & O_ACCMODE != os.O_RDONLY or fl & (O_CREAT | O_TRUNC | O_PATH):
        return False
    job.live.sync_changed()
    job.handles.let_go_closed()     # (the job's closes of read-only copies make them kept)
    if not job.answerable_here():   # (drops that arrived close kept handles first)
        return False
    got = job.kept.take(key)
    if got is None:
        return False
    h, home_path, v = got
    cache = job.fds.fresh_copy(home_path, v, h) if job.live.find(v) is None else None
    try:
        if cache is None:
            raise FileNotFoundError(home_path)  # (evicted, or written here: go home)
        _install_copy(s, job, h, cache, home_path, fl, writable=False, live=False)
    except OSError:
        job.kept.changed(h)
        job.fds.forget(h)
        job.rpc.pending_close.append(h)
        return False
    job.kept.reused += 1
    return True


def _placeholder(s: Stop, job: Job, h: int, home_path: str, fl: int, exec_: bool, directory: bool) -> None:
    if exec_:
        s.skip(-errno.EACCES)
        job.rpc.pending_close.append(h)
        return
    job.fds.handle_path[h] = home_path
    if fl & O_TRUNC:
        job.fds.mirror_truncate(home_path, 0)
    if directory and not fl & O_PATH:
        local_fl = os.O_RDONLY | os.O_DIRECTORY  # (the stub runs on the job's architecture)
    else:
        local_fl = O_PATH
        if not fl & O_PATH:
            job.warn_once(f"ph:{home_path}", f"{home_path}: neither a directory nor a file this host can "
                          "copy (not readable at home, or not a regular file); reading or writing it "
                          "fails (EBADF)")
    install(s, job, job.fds.placeholder(h, directory), local_fl | (fl & O_CLOEXEC), h)


def _copy(s: Stop, job: Job, h: int, home_path: str, o: dict, fl: int, exec_: bool) -> str | None:
    v = Validator.of_wire_stat(o["stat"])
    try:
        local, live = _local_file(s, job, h, home_path, o, fl, exec_, v)
    except BaseException:
        job.rpc.pending_close.append(h)  # never installed: home lets go of it
        raise
    if exec_:
        job.rpc.pending_close.append(h)  # the new image needs the data, not the fd
        s.t.proc.next_exe = home_path
        return local
    _install_copy(s, job, h, local, home_path, fl, bool(o.get("writable")), live)
    return None


def _local_file(s: Stop, job: Job, h: int, home_path: str, o: dict, fl: int, exec_: bool,
                v: Validator) -> tuple[str, bool]:
    """The local file an open of home's file `v` gets, and whether it is live: the live
    one if the job writes it (every open shares it), else the cached copy, fetched if need be."""
    writable = bool(o.get("writable"))
    lf = job.live.find(v)
    if lf is not None and not exec_:
        inside = fl & O_ACCMODE != O_WRONLY or not fl & O_APPEND  # anything but `>> log`
        job.live.attach(lf, h, writable, inside, bool(fl & O_TRUNC) and writable, v,
                        lambda off, size: job.fetch(s.t, h, size, off))
        return lf.local, True
    if o.get("unfetched"):
        return job.live.create(h, home_path, v, None).local, True
    cache = _fetched(s, job, h, home_path, o, v)
    if writable:
        if os.stat(cache).st_size != v.size:  # a fetch cut short: never write that back
            job.fds.cached.pop(home_path, None)
            raise OSError(errno.EIO, f"{home_path}: the fetch from home was cut short")
        return job.live.create(h, home_path, v, cache).local, True
    return cache, False


def _fetched(s: Stop, job: Job, h: int, home_path: str, o: dict, v: Validator) -> str:
    """The cached copy of the file home just opened: still valid, or fetched now."""
    cache = job.fds.fresh_copy(home_path, v) if o.get("fresh") else None
    if cache is None:
        st = dict(zip(structs.STAT_FIELDS, o["stat"], strict=True))
        job.fetched += len(o.get("data", b""))
        chunks: Iterable[Chunk] = [o["data"]] if "data" in o else job.fetch(s.t, h, v.size)
        cache = job.fds.store_copy(home_path, v, st["atime"] * 10**9 + st["atime_ns"], chunks)
    return cache


def _install_copy(s: Stop, job: Job, h: int, local: str, home_path: str, fl: int, writable: bool,
                  live: bool) -> None:
    """The job's fd on the local file: its own flags, but creation and truncation were
    home's, and O_DIRECT is about home's disk (a local tmpfs would refuse it). The cached
    copy, opened read-only, is a read-only copy (rocopies.py): its close is not trapped."""
    # (os.O_DIRECT: the stub runs on the job's architecture)
    drop = O_CREAT | O_EXCL | O_TRUNC | os.O_DIRECT | (0 if writable else O_ACCMODE)
    read_only = not live and not writable and job.handles.read_only_copies
    install(s, job, job.fds.link_copy(h, local, home_path, read_only), fl & ~drop & 0xFFFFFFFF, h,
            read_only)


def install(s: Stop, job: Job, local_path: str, fl: int, handle: int, read_only: bool = False) -> None:
    """Turn the trapped open into openat(AT_FDCWD, local_path, fl) run by the kernel, so
    the fd number is the kernel's choice. Its exit stop, which puts the job's arguments
    back, is the C wait loop's: Python hears of the result later."""
    scratch = s.scratch()
    p = scratch.put_str(os.fsencode(local_path))
    scratch.commit()
    job.handles.installing(handle, read_only)
    s.rewrite_settled(s.number_of("openat"), [AT_FDCWD, p, fl, 0, 0, 0],
                      lambda ret: job.handles.installed(handle, ret >= 0))
