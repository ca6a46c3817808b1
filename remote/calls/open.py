"""open, openat, openat2, creat: a home file becomes a local copy (read-only regular
files) or an O_PATH placeholder whose calls are forwarded; the kernel picks the fd number."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator

from qrun.remote.fds import Validator
from qrun.remote.forwarding import run_local
from qrun.remote.job import Job, errno_of
from qrun.remote.resolver import Target, dirfd_of, path_index
from qrun.remote.stop import Stop
from qrun.remote.tracee import Thread
from qrun.syscalls import flags as wflags
from qrun.syscalls import structs
from qrun.syscalls.abi import AT_FDCWD, O_ACCMODE, O_CLOEXEC, O_CREAT, O_EXCL, O_PATH, O_TRUNC, O_WRONLY
from qrun.syscalls.model import Flags, Int, StructIn
from qrun.syscalls.paths import normalize

FETCH_CHUNK = 8 << 20


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
        _placeholder(s, job, h, home_path, fl, exec_)
        return None
    return _copy(s, job, h, home_path, o, fl, exec_)


def _placeholder(s: Stop, job: Job, h: int, home_path: str, fl: int, exec_: bool) -> None:
    if exec_:
        s.skip(-errno.EACCES)
        job.rpc.pending_close.append(h)
        return
    job.fds.handle_path[h] = home_path
    if fl & O_TRUNC:
        job.fds.mirror(home_path, None, 0, truncate=0)
    install(s, job, job.fds.placeholder(h), O_PATH | (fl & O_CLOEXEC), h)


def _copy(s: Stop, job: Job, h: int, home_path: str, o: dict, fl: int, exec_: bool) -> str | None:
    st = dict(zip(structs.STAT_FIELDS, o["stat"], strict=True))
    v = Validator(size=st["size"], mtime_ns=st["mtime"] * 10**9 + st["mtime_ns"], ino=st["ino"],
                  dev=st["dev"])
    cache = job.fds.fresh_copy(home_path, v) if o.get("fresh") else None
    if cache is None:
        chunks: Iterable[bytes] = [o["data"]] if "data" in o else fetch(s, job, h, v.size)
        cache = job.fds.store_copy(home_path, v, st["mode"], st["atime"] * 10**9 + st["atime_ns"], chunks)
    if exec_:
        job.rpc.pending_close.append(h)  # the new image needs the data, not the fd
        s.t.proc.next_exe = home_path
        return cache
    keep = fl & ~(O_CREAT | O_EXCL | O_TRUNC | O_ACCMODE) & 0xFFFFFFFF
    install(s, job, job.fds.link_copy(h, cache, home_path), keep, h)
    return None


def fetch(s: Stop, job: Job, handle: int, size: int) -> Iterator[bytes]:
    """The file's data in chunks, streamed into the copy as they arrive (a large file
    never sits whole in the stub's memory)."""
    off = 0
    while off < size:
        rep = job.call(s.t, "fetch", [handle, off, FETCH_CHUNK])
        data = rep["o"].get("data", b"")
        if rep["e"] or not data:
            return
        yield data
        off += len(data)


def install(s: Stop, job: Job, local_path: str, fl: int, handle: int) -> None:
    """Turn the trapped open into openat(AT_FDCWD, local_path, fl) run by the kernel, so
    the fd number is the kernel's choice."""
    scratch = s.scratch()
    p = scratch.put_str(os.fsencode(local_path))
    scratch.commit()
    s.rewrite(s.number_of("openat"), [AT_FDCWD, p, fl, 0, 0, 0])
    job.handles.installing(handle)

    def installed(th: Thread, ret: int, h: int = handle) -> None:
        job.handles.installed(h, ret >= 0)
    s.then(installed)
