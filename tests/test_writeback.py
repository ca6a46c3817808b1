"""Home files the job writes are local files on the execution host, written back to home
(remote/writeback.py): real programs that need that (sqlite3 in WAL mode, LMDB, an mmap'ed Go
store, writable MAP_SHARED from Python) run natively and under `qrun --transparent` and must
leave the same files at home; and what close-to-open promises is checked directly: what
the job wrote is at home when close or fsync returns, with home's error if it could not be
written, and a stub killed mid-write loses nothing that fsync had confirmed.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_real_programs import build_go, job_env, native_and_qrun, need, nothing, run, snapshot, under

PY = "/usr/bin/python3"


def _db_dump(sqlite3: str, db: Path) -> str:
    r = subprocess.run([sqlite3, "-batch", str(db), "PRAGMA integrity_check;", ".dump"],
                       capture_output=True, text=True, timeout=60)
    return f"exit {r.returncode}\n{r.stdout}{r.stderr}"


SQL_WAL = """\
PRAGMA journal_mode=WAL;
CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
INSERT INTO kv SELECT i, printf('value-%06d', i * 7) FROM n;
BEGIN; UPDATE kv SET v = upper(v) WHERE k % 3 = 0; DELETE FROM kv WHERE k % 11 = 0; COMMIT;
SELECT count(*), sum(length(v)) FROM kv;
PRAGMA wal_checkpoint(TRUNCATE);
"""


def test_sqlite3_in_wal_mode(transparent: list[str], tmp_path: Path) -> None:
    """WAL mode maps the -shm file shared and writable: it failed with "disk I/O error"
    while home files were placeholders."""
    sqlite3 = need("sqlite3", "sqlite3")
    work = tmp_path / "work"

    def prepare(w: Path) -> None:
        (w / "wal.sql").write_text(SQL_WAL)

    script = (f"{sqlite3} -batch -bail app.db < wal.sql && "
              f"{sqlite3} -batch -bail app.db 'PRAGMA journal_mode; SELECT v FROM kv WHERE k IN (3, 2999);'")
    pair, native_db, remote_db = native_and_qrun(transparent, work, prepare, ["/bin/sh", "-c", script],
                                                 job_env(tmp_path, work),
                                                 snap=lambda w: {}, after=lambda w: _db_dump(sqlite3, w / "app.db"))
    assert pair.native.returncode == 0 and pair.native.stdout.startswith("wal\n2728|"), pair.native.report()
    assert str(native_db).startswith("exit 0\nok\n")
    pair.check()
    assert remote_db == native_db, "the database qrun left at home differs from the native one"


LMDB_SCRIPT = """\
set -e
mkdir db
mdb_load -f in.dump db
mdb_load -n -f more.dump db.flat
mdb_stat db | grep -E 'Entries|Tree depth'
mdb_dump db | sha256sum
mdb_dump -n db.flat | sha256sum
"""


def _lmdb_dump(path: Path, n: int, offset: int) -> None:
    lines = ["VERSION=3", "format=print", "type=btree", "mapsize=4194304", "HEADER=END"]
    for i in range(n):
        lines += [f" key{i + offset:06d}", f" value {i * i} {'x' * (i % 50)}"]
    path.write_text("\n".join(lines + ["DATA=END"]) + "\n")


def test_lmdb_load_stat_and_dump(transparent: list[str], tmp_path: Path) -> None:
    """LMDB keeps its lock table in a MAP_SHARED lock.mdb and reads its data through a mapping."""
    need("mdb_load", "lmdb-utils")
    work = tmp_path / "work"

    def prepare(w: Path) -> None:
        _lmdb_dump(w / "in.dump", 5000, 0)
        _lmdb_dump(w / "more.dump", 800, 90000)

    pair, _, _ = native_and_qrun(transparent, work, prepare, ["/bin/sh", "-c", LMDB_SCRIPT],
                                 job_env(tmp_path, work),
                                 snap=lambda w: {})  # (an LMDB file's unused tail is not defined)
    assert pair.native.returncode == 0 and "Entries: 5000" in pair.native.stdout, pair.native.report()
    pair.check()


@pytest.fixture(scope="session")
def gommap_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_go(tmp_path_factory, "gommap")


def test_go_mmap_store(transparent: list[str], gommap_program: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    pair, _, _ = native_and_qrun(transparent, work, nothing, [str(gommap_program)], job_env(tmp_path, work))
    assert pair.native.returncode == 0 and pair.native.stdout.startswith("size 786432 header 3"), \
        pair.native.report()
    pair.check()


MMAP_PY = """\
import mmap, os, sys
MB = 1 << 20
fd = os.open("m.bin", os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 3 * MB)
m = mmap.mmap(fd, 3 * MB, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[0:5] = b"hello"
m[2 * MB + 7:2 * MB + 12] = b"world"
m.flush()
other = os.open("m.bin", os.O_RDONLY)   # another open sees the mapping's bytes at once
print("read back:", os.pread(other, 5, 0), os.pread(other, 5, 2 * MB + 7))
os.close(other)
os.close(fd)                             # the mapping outlives its fd
m[100:103] = b"abc"
m.close()
with open("m.bin", "rb") as f:
    d = f.read()
print(len(d), d[:5], d[100:103], d[2 * MB + 7:2 * MB + 12])
"""


def test_python_shared_mapping_outlives_its_fd(transparent: list[str], tmp_path: Path) -> None:
    work = tmp_path / "work"

    def prepare(w: Path) -> None:
        (w / "mm.py").write_text(MMAP_PY)

    pair, _, _ = native_and_qrun(transparent, work, prepare, [PY, "mm.py"], job_env(tmp_path, work))
    assert pair.native.stdout.endswith("3145728 b'hello' b'abc' b'world'\n"), pair.native.report()
    pair.check()


SHARING_SCRIPT = """\
set -e
printf 'kept line\\n' > log
for i in 1 2 3 4 5 6 7 8; do
  ( for j in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "writer $i line $j" >> log; done ) &
done
wait
exec 3>> log
echo "through fd 3" >&3
tail -1 log                        # another open sees fd 3's write before fd 3 is closed
exec 3>&-
: > trunc.txt; echo one > trunc.txt; exec 4< trunc.txt; echo two > trunc.txt; cat <&4; exec 4<&-
dd if=/dev/zero of=sparse.bin bs=1 count=1 seek=50000000 status=none
wc -l < log; sort log | uniq -d | wc -l; head -1 log
"""


def test_appends_and_opens_of_one_file_share_it(transparent: list[str], tmp_path: Path) -> None:
    """Concurrent `>> log` appends stay whole lines, none lost; a second open of a file the
    job is writing sees what was written; O_TRUNC through another open; a sparse file."""
    work = tmp_path / "work"
    def log_lines(w: Path) -> list[str]:  # (the writers' order is the scheduler's)
        return sorted((w / "log").read_text().splitlines())

    pair, native_log, remote_log = native_and_qrun(
        transparent, work, nothing, ["/bin/bash", "-c", SHARING_SCRIPT], job_env(tmp_path, work),
        snap=lambda w: snapshot(w, ignore=under("log")), after=log_lines)
    assert pair.native.stdout == "through fd 3\ntwo\n98\n0\nkept line\n", pair.native.report()
    pair.check()
    assert remote_log == native_log
    assert (work / "sparse.bin").stat().st_blocks * 512 < 1 << 20, "the sparse file came home filled"


def test_append_to_a_big_home_file_keeps_it_whole(transparent: list[str], tmp_path: Path) -> None:
    """`>> log` of a large file sends only what the job appends (the rest is never fetched)."""
    work = tmp_path / "work"
    body = os.urandom(1 << 20) * 24

    def prepare(w: Path) -> None:
        (w / "big.log").write_bytes(body)

    pair, _, _ = native_and_qrun(transparent, work, prepare,
                                 ["/bin/sh", "-c", "echo appended >> big.log; echo again >> big.log; wc -c < big.log"],
                                 job_env(tmp_path, work))
    pair.check()
    data = (work / "big.log").read_bytes()
    assert data[:len(body)] == body and data[len(body):] == b"appended\nagain\n"


# ---- close-to-open, checked directly -------------------------------------------------------------

CLOSE_SEES = """\
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"x" * 3_000_000)
os.fsync(fd)
print("fsynced", flush=True)
sys.stdin.readline()          # the test reads the file at home now
os.write(fd, b"y" * 1000)
os.close(fd)
print("closed", flush=True)
sys.stdin.readline()
"""


def test_fsync_and_close_put_the_data_at_home(transparent: list[str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "w.py").write_text(CLOSE_SEES)
    target = work / "out.bin"
    proc = subprocess.Popen([*transparent, PY, "w.py", str(target)], cwd=work, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=job_env(tmp_path, work))
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "fsynced\n"
        assert target.stat().st_size == 3_000_000
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "closed\n"
        assert target.read_bytes() == b"x" * 3_000_000 + b"y" * 1000
        proc.stdin.write("\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err


REOPEN = """\
import os, sys
fd = os.open("h", os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"job wrote this")
os.fsync(fd)
print("ready", flush=True)
sys.stdin.readline()          # meanwhile a process at home rewrites the start of the file
print(open("h").read(), flush=True)   # a new open sees it (close-to-open), fd is still open
os.write(fd, b"!")
os.close(fd)
"""


def test_a_change_made_at_home_is_seen_by_the_job_s_next_open(transparent: list[str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "r.py").write_text(REOPEN)
    proc = subprocess.Popen([*transparent, PY, "r.py"], cwd=work, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=job_env(tmp_path, work))
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        with open(work / "h", "r+b") as f:
            f.write(b"HOME")
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, out) == (0, "HOMEwrote this\n"), err
    assert (work / "h").read_bytes() == b"HOMEwrote this!"


FULL_DISK = """\
import errno, os
fd = os.open("full/out.bin", os.O_WRONLY | os.O_CREAT, 0o644)
written = 0
try:
    while written < 4 << 20:
        written += os.write(fd, b"z" * 65536)
    os.fsync(fd)
    print("fsync ok")
except OSError as exc:
    print("write/fsync failed:", errno.errorcode[exc.errno])
try:
    os.close(fd)
    print("close ok")
except OSError as exc:
    print("close failed:", errno.errorcode[exc.errno])
"""


@contextmanager
def _tiny_tmpfs(where: Path, size: str) -> Iterator[None]:
    """A tmpfs of `size` at `where` (made, with its parents) while the block runs: a home
    disk that fills up."""
    if os.geteuid() != 0:
        from conftest import skip_or_fail
        skip_or_fail("mounting a tiny tmpfs needs root")
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_home_disk_is_reported_by_fsync_and_close(transparent: list[str], tmp_path: Path) -> None:
    """Written locally, the data meets home's full disk at write-back: fsync and close say
    ENOSPC, as on NFS (natively the write itself would fail)."""
    work = tmp_path / "work"
    with _tiny_tmpfs(work / "full", "1m"):
        (work / "w.py").write_text(FULL_DISK)
        r = run([*transparent, PY, "w.py"], work, job_env(tmp_path, work), timeout=120)
    assert r.returncode == 0, r.report()
    assert r.stdout == "write/fsync failed: ENOSPC\nclose failed: ENOSPC\n", r.report()


FULL_THEN_ROOM = """\
import errno, os
fd = os.open("full/big.bin", os.O_RDWR | os.O_CREAT, 0o644)
block = bytes(range(256)) * 4096       # 1 MiB, no holes
for _ in range(48):                     # six write-back runs: more than are ever in flight
    os.write(fd, block)
try:
    os.fsync(fd)
    print("fsync ok")
except OSError as exc:
    print("fsync failed:", errno.errorcode[exc.errno])
os.ftruncate(fd, 1 << 20)               # room again at home once this is written back
os.fsync(fd)
os.close(fd)
print("closed")
"""


def test_a_full_disk_mid_write_back_fails_the_fsync_and_the_next_sync_sends_it_all(
        transparent: list[str], tmp_path: Path) -> None:
    """The disk fills while several write-back runs are in flight: fsync says ENOSPC, and
    the next sync sends the file as it now is, whole (nothing the failed one half-wrote
    is taken for sent)."""
    work = tmp_path / "work"
    with _tiny_tmpfs(work / "full", "16m"):
        (work / "w.py").write_text(FULL_THEN_ROOM)
        r = run([*transparent, PY, "w.py"], work, job_env(tmp_path, work), timeout=120)
        assert r.returncode == 0, r.report()
        assert r.stdout == "fsync failed: ENOSPC\nclosed\n", r.report()
        assert (work / "full" / "big.bin").read_bytes() == bytes(range(256)) * 4096


KILLED = """\
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"d" * 2_000_000)
os.fsync(fd)
print("fsynced", flush=True)
while True:
    os.write(fd, b"e" * 65536)
    os.lseek(fd, 2_000_000, os.SEEK_SET)
"""


def test_a_stub_killed_mid_write_keeps_what_fsync_confirmed(transparent: list[str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    marker = f"killed-{os.getpid()}-{time.monotonic_ns()}.bin"
    (work / "k.py").write_text(KILLED)
    proc = subprocess.Popen([*transparent, PY, "k.py", marker], cwd=work, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=job_env(tmp_path, work))
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "fsynced\n"
        time.sleep(0.3)
        job = subprocess.run(["pgrep", "-f", f"k.py {marker}"], capture_output=True, text=True).stdout.split()
        assert job
        # The stub that traces this job: the tracer of its process.
        tracers = {Path(f"/proc/{p}/status").read_text().split("TracerPid:")[1].split()[0] for p in job}
        stubs = [t for t in tracers if t != "0" and Path(f"/proc/{t}/comm").read_text().strip() == "qrun-stub"]
        assert stubs, tracers
        for pid in stubs:
            os.kill(int(pid), 9)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 124, err
    data = (work / marker).read_bytes()
    assert data[:2_000_000] == b"d" * 2_000_000, "data fsync had confirmed is not at home"
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", f"k.py {marker}"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the job outlived its stub"
        time.sleep(0.1)


class _HomeFile:
    """A stand-in for the home node's write-back: applies each message to a plain file."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.sent = 0
        self.pending_close: list[int] = []

    def call(self, op: str, args: list[object], tid: int = 0) -> dict[str, object]:
        assert op == "writeback"
        _, off, size, pieces = args
        assert isinstance(off, int) and isinstance(pieces, list)
        data = b"".join(pieces)
        os.pwrite(self.fd, data, off)
        if isinstance(size, int):
            os.ftruncate(self.fd, size)
        self.sent += len(data)
        return {"r": len(data), "e": None, "o": {}}

    def pipeline(self, op: str, argss: Iterable[list[object]], tid: int = 0) -> Iterator[dict[str, object]]:
        for args in argss:
            yield self.call(op, args, tid)


def test_only_changed_blocks_and_the_new_tail_are_written_back(tmp_path: Path) -> None:
    from qrun.remote.fds import FdSpace, Validator
    from qrun.remote.procs import ProcessTable
    from qrun.remote.writeback import BLOCK, LiveFiles

    home = _HomeFile(tmp_path / "home.bin")
    original = os.urandom(5 * BLOCK + 123)
    os.pwrite(home.fd, original, 0)
    (tmp_path / "copy").write_bytes(original)
    live = LiveFiles(home, FdSpace(str(tmp_path / "state")), ProcessTable(), print)  # type: ignore[arg-type]
    lf = live.create(7, "/home/f", Validator(len(original), 1, 2, 3), str(tmp_path / "copy"))

    def sync_and_compare(expect_sent: int) -> None:
        home.sent = 0
        lf.synced_at -= 10**9  # the last sync a second ago: every sync here compares all blocks
        assert live.sync_handle(7) is None
        with open(lf.local, "rb") as f:
            assert os.pread(home.fd, 100 * BLOCK, 0) == f.read()
        assert home.sent == expect_sent

    sync_and_compare(0)                                   # nothing changed: nothing sent
    with open(lf.local, "r+b") as f:
        f.seek(2 * BLOCK + 5)
        f.write(b"changed")                               # one block
    sync_and_compare(BLOCK)
    with open(lf.local, "ab") as g:
        g.write(b"tail" * 1000)                           # what was added to the last block
    sync_and_compare(4000)
    with open(lf.local, "r+b") as f:
        f.seek(4 * BLOCK)
        f.write(b"x")                                     # a block, then a partial one that grew
    os.truncate(lf.local, 5 * BLOCK + 4123 + 10)
    sync_and_compare(BLOCK + 10)
    os.truncate(lf.local, 3 * BLOCK)                      # a cut: the size alone
    sync_and_compare(0)
    os.truncate(lf.local, 40 * BLOCK)                     # a hole past home's size: the size alone
    sync_and_compare(0)
    with open(lf.local, "r+b") as f:
        f.seek(39 * BLOCK)
        f.write(b"end")                                   # one block in the hole
    sync_and_compare(BLOCK)
    assert os.fstat(home.fd).st_size == 40 * BLOCK


def test_verbose_reports_what_the_data_path_moved(transparent: list[str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.txt").write_bytes(b"i" * 200_000)
    r = run([transparent[0], "-v", *transparent[1:], "/bin/sh", "-c", "cat in.txt in.txt > out.txt"], work,
            job_env(tmp_path, work), timeout=60)
    assert r.returncode == 0, r.report()
    line = r.stderr.strip().splitlines()[-1]
    fields = dict(f.split("=", 1) for f in line.split()[1:])
    assert int(fields["written-back"]) == 400_000, line
    assert int(fields["fetched"]) >= 200_000 and int(fields["calls"]) > 0, line


def _live_files(tmp_path: Path, content: bytes) -> tuple[_HomeFile, Any, Any]:
    from qrun.remote.fds import FdSpace, Validator
    from qrun.remote.procs import Proc, ProcessTable
    from qrun.remote.writeback import LiveFiles

    home = _HomeFile(tmp_path / "home.bin")
    os.pwrite(home.fd, content, 0)
    (tmp_path / "copy").write_bytes(content)
    table = ProcessTable()
    table.procs[os.getpid()] = Proc(os.getpid(), 0)  # this process plays the job's
    live = LiveFiles(home, FdSpace(str(tmp_path / "state")), table, print)  # type: ignore[arg-type]
    return home, live, live.create(7, "/home/f", Validator(len(content), 1, 2, 3), str(tmp_path / "copy"))


def test_a_change_inside_the_file_survives_an_earlier_tail_only_sync(tmp_path: Path) -> None:
    """A tail-only sync (before another call went home) must not hide an earlier write
    inside the file from the thorough sync at close."""
    from qrun.remote.writeback import BLOCK
    home, live, lf = _live_files(tmp_path, os.urandom(4 * BLOCK))
    with open(lf.local, "r+b") as f:
        f.write(b"inside")
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
    live.sync_changed()                    # sends the tail only
    lf.synced_at -= 10**9                  # long ago: the times alone would say "unchanged"
    assert live.sync_handle(7) is None     # close
    assert os.pread(home.fd, 6, 0) == b"inside" and os.fstat(home.fd).st_size == 4 * BLOCK + 4


def test_writes_through_a_mapping_after_the_last_fd_reach_home(tmp_path: Path) -> None:
    import mmap
    home, live, lf = _live_files(tmp_path, b"\0" * 8192)
    fd = os.open(lf.local, os.O_RDWR)
    m = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fd)
    m[0:5] = b"first"
    assert live.sync_handle(7) is None
    assert live.release(7) is True         # still mapped: the write-back handle stays
    m[0:6] = b"second"                     # a page that is writable already: no new mtime
    m.close()
    lf.synced_at -= 10**9
    live.reap()
    assert os.pread(home.fd, 6, 0) == b"second" and 7 in home.pending_close


def test_a_second_open_of_an_appended_file_sees_its_start(transparent: list[str], tmp_path: Path) -> None:
    """`>> log` fetches nothing; a later read-write open of the same file must fetch it."""
    work = tmp_path / "work"

    def prepare(w: Path) -> None:
        (w / "log").write_text("home line 1\nhome line 2\n")

    script = ("exec 3>> log; echo appended >&3; "
              f"{PY} -c 'f = open(\"log\", \"r+\"); print(f.readline(), end=\"\"); f.seek(0); f.write(\"HOME\")'; "
              "echo again >&3; exec 3>&-; cat log")
    pair, _, _ = native_and_qrun(transparent, work, prepare, ["/bin/sh", "-c", script], job_env(tmp_path, work))
    assert pair.native.stdout == "home line 1\nHOME line 1\nhome line 2\nappended\nagain\n", pair.native.report()
    pair.check()
