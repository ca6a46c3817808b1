"""The job's state directory on the execution host (`qrun-stub-<pid>-XXXX` in the cache
directory): placeholders, copies, live files, the empty cwd. It is removed when the stub
ends; one left by a stub that was killed is removed by the next stub that starts there.

A stub is known to be alive by the lock it holds on its directory's `alive` file, not by
its pid: the directory may be seen from another pid namespace (the sandbox host) or from
another machine (a cache_dir on a shared filesystem), where the pid means nothing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import tempfile
import time

from qrun.remote.stdio import eprint

PREFIX = "qrun-stub-"
ALIVE = "alive"
YOUNG = 60.0   # seconds: a directory without its lock yet may be a stub starting up


def cache_root(cache: object) -> str | None:
    """The directory the job's state and local copies go in: the cache_dir asked for
    (made if need be), else $TMPDIR. None (and one line said) if it cannot be used."""
    wanted = cache.get("dir") if isinstance(cache, dict) else None
    if not isinstance(wanted, str) or not wanted:
        return tempfile.gettempdir()
    try:
        os.makedirs(wanted, mode=0o700, exist_ok=True)
        if not os.access(wanted, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        eprint(f"cache_dir {wanted}: {exc.strerror} on {socket.gethostname()}")
        return None
    return wanted


def make(root: str) -> tuple[str, int]:
    """A fresh state directory under `root`, and the fd holding its lock (close it last)."""
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root)
    fd = os.open(os.path.join(path, ALIVE), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return path, fd


def sweep(root: str) -> None:
    """Remove the state directories of ours under `root` whose stub is gone."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if name.startswith(PREFIX):
            path = os.path.join(root, name)
            if _abandoned(path):
                shutil.rmtree(path, ignore_errors=True)


def _abandoned(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False   # (gone already: its stub, or another stub's sweep, removed it)
    try:
        if st.st_uid != os.getuid() or not os.path.isdir(path):
            return False
        fd = os.open(os.path.join(path, ALIVE), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return time.time() - st.st_mtime > YOUNG  # (no lock file: an old stub's, or a new one's)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True   # nobody holds it: its stub is gone
    except OSError:
        return False
    finally:
        os.close(fd)
