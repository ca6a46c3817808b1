"""Read-only copies (remote/rocopies.py): a handle is let go exactly when the kernel says
the last open file description of its name closed, counted through inotify."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from qrun.remote.fds import FdSpace
from qrun.remote.handles import HandleSweeper
from qrun.remote.keptopens import KeptOpens
from qrun.remote.procs import ProcessTable
from qrun.remote.rocopies import ReadOnlyCopies


@pytest.fixture
def ro(tmp_path: Path) -> Iterator[ReadOnlyCopies]:
    (tmp_path / "7").write_bytes(b"0123456789")
    (tmp_path / "other").write_bytes(b"x")
    r = ReadOnlyCopies(str(tmp_path))
    yield r
    r.close()


def test_a_handle_is_let_go_when_its_last_description_closes(ro: ReadOnlyCopies, tmp_path: Path) -> None:
    name = str(tmp_path / "7")
    ro.add(7)
    fd = os.open(name, os.O_RDONLY)
    d = os.dup(fd)                      # the same description: one open, one close
    os.close(fd)
    assert ro.let_go(thorough=True) == ([], [])
    again = os.open(f"/proc/self/fd/{d}", os.O_RDONLY)  # a second description
    os.close(d)
    assert ro.let_go(thorough=True) == ([], [])
    m = mmap.mmap(again, 10, prot=mmap.PROT_READ)  # a mapping holds the description too
    os.close(again)
    os.close(os.open(str(tmp_path / "other"), os.O_RDONLY))  # not one of ours: no effect
    assert ro.let_go(thorough=True) == ([], []) and m[:4] == b"0123"
    m.close()
    assert ro.let_go(thorough=True) == ([7], []) and 7 not in ro


def test_without_a_call_on_a_copy_the_queue_is_read_only_when_thorough(ro: ReadOnlyCopies,
                                                                         tmp_path: Path) -> None:
    """Between calls the C wait loop let run on read-only copies (none in this process),
    closes are only looked for when a process exited or exec'd (thorough)."""
    ro.add(7)
    os.close(os.open(str(tmp_path / "7"), os.O_RDONLY))
    assert ro.let_go(thorough=False) == ([], []) and 7 in ro
    assert ro.let_go(thorough=True) == ([7], [])


def test_lost_counts_hand_every_handle_to_the_fd_tables(ro: ReadOnlyCopies, tmp_path: Path) -> None:
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        limit = int(f.read())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}: too many opens to overflow it here")
    ro.add(7)
    ro.add(9)
    for _ in range(limit // 2 + 10):    # an open and a close each: past the queue's limit
        os.close(os.open(str(tmp_path / "other"), os.O_RDONLY))
    closed, lost = ro.let_go(thorough=True)
    assert closed == [] and sorted(lost) == [7, 9] and len(ro) == 0


def _sweeper(tmp_path: Path) -> tuple[HandleSweeper, SimpleNamespace, KeptOpens]:
    rpc = SimpleNamespace(pending_close=[])
    live = SimpleNamespace(release=lambda h: False, reap=lambda: None, kept=False)
    fds = FdSpace(str(tmp_path / "state"))
    kept = KeptOpens(on_close=fds.forget)
    return HandleSweeper(rpc, fds, ProcessTable(), live, kept), rpc, kept  # type: ignore[arg-type]


def test_the_sweeper_keeps_a_closed_copy_s_handle_and_closes_a_failed_one(tmp_path: Path) -> None:
    hs, rpc, kept = _sweeper(tmp_path)
    cache = tmp_path / "cache"
    cache.write_bytes(b"data")
    for h in (5, 6):
        name = hs.fds.link_copy(h, str(cache), f"/home/u/f{h}", read_only=True)
        assert name.startswith(hs.fds.ro_dir + "/")
        hs.installing(h, read_only=True)
    kept.candidate(5, ("open", "f5"), 55, "/home/u/f5", "v5")
    fd = os.open(os.path.join(hs.fds.ro_dir, "5"), os.O_RDONLY)  # the job's open of 5 ran
    hs.installed(5, True)
    hs.installed(6, False)             # 6's open failed (EMFILE): nothing holds it
    assert rpc.pending_close == [6] and not os.path.exists(os.path.join(hs.fds.ro_dir, "6"))
    assert hs.fds.classify(os.readlink(f"/proc/self/fd/{fd}")) == ("copy", 5)
    hs.sweep()
    assert kept.take(("open", "f5")) is None  # still open
    os.close(fd)
    hs.sweep()                          # (a process exit: thorough)
    assert rpc.pending_close == [6] and kept.take(("open", "f5")) == (5, "/home/u/f5", "v5")
    # A kept handle's name stays for its next install, which then needs no new link ...
    name = os.path.join(hs.fds.ro_dir, "5")
    ino = os.stat(name).st_ino
    assert hs.fds.link_copy(5, str(cache), "/home/u/f5", read_only=True) == name
    assert os.stat(name).st_ino == ino
    # ... and goes when the handle is closed at home (here: its answer was dropped).
    hs.installing(5, read_only=True)
    hs.installed(5, True)
    os.close(os.open(name, os.O_RDONLY))
    hs.sweep()
    assert os.path.exists(name) and kept.drop([55], everything=False) == [5]
    assert not os.path.exists(name)


def _installed_and_opened(hs: HandleSweeper, tmp_path: Path, h: int) -> tuple[str, int]:
    """A read-only copy's install of handle `h` whose open ran (the name, the fd)."""
    cache = tmp_path / "cache"
    cache.write_bytes(b"data")
    name = hs.fds.link_copy(h, str(cache), f"/home/u/f{h}", read_only=True)
    hs.installing(h, read_only=True)
    return name, os.open(name, os.O_RDONLY)


def test_a_failed_install_whose_open_ran_keeps_its_handle(tmp_path: Path) -> None:
    """A thread killed (or exec'd over) before its exit stop reports -ESRCH, yet its open
    may have run: the kernel's IN_OPEN decides, not the result."""
    hs, rpc, _ = _sweeper(tmp_path)
    name, fd = _installed_and_opened(hs, tmp_path, 3)
    hs.installed(3, False)
    assert rpc.pending_close == [] and os.path.exists(name)
    os.close(fd)
    hs.sweep()
    assert rpc.pending_close == [3] and not os.path.exists(name)


def test_a_lock_moves_a_read_only_copy_to_the_swept_ones(tmp_path: Path) -> None:
    """A lock must go at home when the job lets go of the handle: its close is trapped
    again (copies/), and the fd tables decide."""
    hs, rpc, _ = _sweeper(tmp_path)
    _, fd = _installed_and_opened(hs, tmp_path, 4)
    hs.installed(4, True)
    hs.locking(4)
    link = os.readlink(f"/proc/self/fd/{fd}")
    assert link == os.path.join(hs.fds.copies_dir, "4") and hs.fds.classify(link) == ("copy", 4)
    assert 4 in hs.open and (hs.read_only is None or 4 not in hs.read_only)
    os.close(fd)
    hs.sweep()   # (no job process holds it: ProcessTable is empty)
    assert rpc.pending_close == [4] and not os.path.exists(os.path.join(hs.fds.copies_dir, "4"))
