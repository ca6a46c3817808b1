"""The room local copies take on the execution host (remote/cachespace.py): a cache_limit
is kept by evicting the copies no process has open, a small disk is not filled, and a home
file that cannot fit fails its open with ENOSPC and one line saying why. Each job's output
must be what the native run prints.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qrun.homenode.config import parse_size
from qrun.remote import statedir
from test_real_programs import job_env

PY = "/usr/bin/python3"

READ_ALL = """\
import hashlib, sys
for round in range(2):
    for i in range(1, 6):
        with open(f"data/b{i}", "rb") as f:
            print(round, i, hashlib.sha256(f.read()).hexdigest()[:16])
"""


def _data(work: Path, size: int = 1_500_000) -> None:
    (work / "data").mkdir(parents=True)
    for i in range(1, 6):
        (work / "data" / f"b{i}").write_bytes(os.urandom(size))
    (work / "r.py").write_text(READ_ALL)


def _native(work: Path, env: dict[str, str]) -> str:
    r = subprocess.run([PY, "r.py"], cwd=work, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _counts(stderr: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w[\w-]*)=(\d+)\b", stderr)}


def test_sizes_are_read_as_people_write_them() -> None:
    assert [parse_size(s) for s in ("0", "4096", "512K", "3M", "2.5G", "1GiB", "1tb")] == \
        [0, 4096, 512 << 10, 3 << 20, int(2.5 * (1 << 30)), 1 << 30, 1 << 40]
    for bad in ("", "-1", "3X", "G", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_a_cache_limit_is_kept_by_evicting_copies_no_process_has_open(transparent: list[str],
                                                                      tmp_path: Path) -> None:
    work = tmp_path / "work"
    _data(work)
    env = job_env(tmp_path, work)
    expected = _native(work, env)
    cache = str(tmp_path / "cache")   # (on a namespace host, made in its own /tmp)
    cmd = [transparent[0], "-v", "--cache-limit", "3M", "--cache-dir", cache, *transparent[1:], PY, "r.py"]
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=120, env=env)
    assert (r.returncode, r.stdout) == (0, expected), r.stderr
    counts = _counts(r.stderr)
    # Ten opens of five 1.5 MB files within 3 MB: each file's copy was evicted and fetched again.
    assert counts["evicted"] >= 8 and counts["fetched"] >= 10 * 1_500_000, r.stderr
    unlimited = subprocess.run([transparent[0], "-v", *transparent[1:], PY, "r.py"], cwd=work,
                               capture_output=True, text=True, timeout=120, env=env)
    assert (unlimited.returncode, unlimited.stdout) == (0, expected), unlimited.stderr
    assert _counts(unlimited.stderr)["evicted"] == 0, unlimited.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 12 MB tmpfs for the cache (this machine is the execution host: `--host local`)."""
    if os.geteuid() != 0:
        from conftest import skip_or_fail
        skip_or_fail("mounting a tiny tmpfs needs root")
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_small_disk_holds_the_copies_in_turn(qrun_cmd: list[str], small_disk: Path, tmp_path: Path) -> None:
    """Five 3 MB files, twice, through a 12 MB disk: no ENOSPC, the same output."""
    work = tmp_path / "work"
    _data(work, 3_000_000)
    env = job_env(tmp_path, work)
    expected = _native(work, env)
    r = subprocess.run([*qrun_cmd, "-v", "--transparent", "--host", "local", "--cache-dir", str(small_disk),
                        "--", PY, "r.py"], cwd=work, capture_output=True, text=True, timeout=120, env=env)
    assert (r.returncode, r.stdout) == (0, expected), r.stderr
    assert _counts(r.stderr)["evicted"] >= 6, r.stderr


TOO_BIG = """\
import errno
try:
    open("data/huge", "rb").read(1)
except OSError as exc:
    print("open failed:", errno.errorcode[exc.errno])
print(len(open("data/b1", "rb").read()))
"""


def test_a_file_larger_than_the_disk_fails_its_open_with_enospc_and_says_why(
        qrun_cmd: list[str], small_disk: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    _data(work, 1000)
    (work / "data" / "huge").write_bytes(b"h" * (20 << 20))
    (work / "t.py").write_text(TOO_BIG)
    r = subprocess.run([*qrun_cmd, "--transparent", "--host", "local", "--cache-dir", str(small_disk),
                        "--", PY, "t.py"], cwd=work, capture_output=True, text=True, timeout=120,
                       env=job_env(tmp_path, work))
    assert (r.returncode, r.stdout) == (0, "open failed: ENOSPC\n1000\n"), r.stderr
    assert f"/data/huge (20 MiB) does not fit in the cache at {small_disk}" in r.stderr, r.stderr
    assert not [n for n in os.listdir(small_disk) if n.startswith("qrun-stub-")], "state left behind"


def test_a_killed_stub_s_state_is_swept_but_a_live_one_s_never(tmp_path: Path) -> None:
    """Liveness is the lock on the directory's `alive` file, not a pid: from another pid
    namespace or another machine sharing the cache_dir, every pid would look dead."""
    root = tmp_path / "cache"
    root.mkdir()
    live, fd = statedir.make(str(root))
    Path(live, "live").mkdir()
    Path(live, "live", "1").write_bytes(b"not yet written back")
    dead, dead_fd = statedir.make(str(root))
    os.close(dead_fd)                      # its stub was SIGKILLed: the lock went with it
    starting = root / "qrun-stub-1-new"    # made this instant, its lock not taken yet
    starting.mkdir()
    statedir.sweep(str(root))
    try:
        assert Path(live, "live", "1").read_bytes() == b"not yet written back"
        assert not os.path.exists(dead)
        assert starting.is_dir()
    finally:
        os.close(fd)
    old = time.time() - 3600
    os.utime(starting, (old, old))
    statedir.sweep(str(root))
    assert not starting.exists() and not os.path.exists(live)


def test_a_state_directory_gone_while_swept_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two stubs starting at once: one's sweep lists a directory that the other removes
    before it is looked at; the sweep goes on (it once crashed the stub)."""
    root = tmp_path / "cache"
    root.mkdir()
    (root / "qrun-stub-9-gone").mkdir()
    real_listdir = os.listdir

    def listed_then_removed(path: str) -> list[str]:
        names = real_listdir(path)
        (root / "qrun-stub-9-gone").rmdir()
        return names
    monkeypatch.setattr(statedir.os, "listdir", listed_then_removed)
    statedir.sweep(str(root))   # (no exception)
    assert real_listdir(root) == []
