"""The metadata cache: the stub answers stat, access and readlink of unchanged home entries
itself (remote/metacache.py), and home drops an answer as soon as anything it depends on
changes (homenode/watches.py). Checked three ways: home's dependency tracking on its own;
a job that keeps asking while the test changes home under it (each change must be seen);
and a job's own changes, run natively and under qrun, with the same output.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from qrun.homenode.watches import Watches
from test_real_programs import job_env, native_and_qrun

PY = "/usr/bin/python3"


@pytest.fixture
def watches() -> Watches:
    w = Watches()
    if w.fd is None:
        pytest.skip("inotify is not available here")
    return w


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "t"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("f")
    (root / "e").mkdir()
    (root / "e" / "g").write_text("g")
    (root / "a" / "ln").symlink_to("../e")
    return root


def _track(w: Watches, answer: int, path: Path, follow: bool = True) -> None:
    assert w.track(answer, None, os.fsencode(path), follow), f"{path} could not be tracked"


def test_a_change_drops_exactly_the_answers_that_stepped_through_it(watches: Watches, tmp_path: Path) -> None:
    root = _tree(tmp_path)
    _track(watches, 1, root / "a" / "b" / "f")
    _track(watches, 2, root / "a" / "b" / "missing")
    _track(watches, 3, root / "a" / "ln" / "g")          # through a symlink
    _track(watches, 4, root / "a" / "b")                 # a directory: its contents count
    _track(watches, 5, root / "a" / "b" / ".." / "b" / "f")
    assert watches.changed() == (set(), False)

    (root / "a" / "b" / "unrelated").mkdir()             # b's contents: b's own stat only
    assert watches.changed() == ({4}, False)
    _track(watches, 4, root / "a" / "b")
    os.chmod(root / "a" / "b" / "f", 0o600)
    assert watches.changed() == ({1, 5}, False)
    (root / "a" / "b" / "missing").write_text("now here")  # a negative answer
    assert watches.changed()[0] >= {2}
    (root / "e" / "g").write_text("changed")             # the symlink's target directory
    assert 3 in watches.changed()[0]


def test_replacing_a_symlink_or_renaming_an_ancestor_drops_what_went_through_it(
        watches: Watches, tmp_path: Path) -> None:
    root = _tree(tmp_path)
    _track(watches, 1, root / "a" / "ln" / "g")
    _track(watches, 2, root / "a" / "ln", follow=False)  # readlink, lstat
    (root / "a" / "ln").unlink()
    (root / "a" / "ln").symlink_to("b")
    assert watches.changed()[0] == {1, 2}
    _track(watches, 3, root / "a" / "b" / "f")
    os.rename(root / "a", root / "a2")
    assert watches.changed()[0] == {3}


def test_what_cannot_be_watched_is_not_cacheable(watches: Watches) -> None:
    """/proc is no filesystem whose changes inotify reports: nothing there is kept."""
    assert not watches.track(1, None, b"/proc/self/status", True)
    assert watches.changed() == (set(), False)


WAIT_FOR = """\
def wait_for(what, probe, old):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = probe()
        if now != old:
            # (a change in two steps, unlink + symlink, may be seen half done, as natively
            # between two calls of the probe: what counts is what it settles to)
            time.sleep(0.05)
            print(what, "seen:", probe(), flush=True)
            return
        time.sleep(0.002)
    print(what, "NOT SEEN, still", old, flush=True)
"""

WATCHER = "import os, sys, time\n" + WAIT_FOR + """
def size(p):
    return os.stat(p).st_size

B = sys.argv[1] if len(sys.argv) > 1 else ""   # "": relative paths; else absolute ones under it
steps = [
    ("mode", lambda: oct(os.stat(B + "f").st_mode & 0o777)),
    ("created", lambda: os.path.exists(B + "missing.h")),
    ("retargeted", lambda: (os.readlink(B + "ln"), size(B + "ln"))),
    ("renamed", lambda: os.path.exists(B + "d/x")),
    ("grown", lambda: size(B + "f")),
    ("removed", lambda: os.access(B + "gone", os.R_OK)),
    ("fd-mode", lambda: oct(os.fstat(held).st_mode & 0o777)),   # an open file's own stat
    ("fd-grown", lambda: os.fstat(held).st_size),
]
held = os.open(B + "held", os.O_RDONLY)
for what, probe in steps:
    old = [probe() for _ in range(50)][-1]   # asked again and again: answered from the cache
    print("ready", what, flush=True)
    sys.stdin.readline()
    wait_for(what, probe, old)
"""


def _changed_under_the_job(transparent: list[str], tmp_path: Path, work: Path, script: str,
                           change: Callable[[Path, str], None], steps: int,
                           args: tuple[str, ...] = ()) -> tuple[list[str], str]:
    """Run `script` under `qrun -v`; at each "ready STEP" line it prints, make that change
    at home and let it go on. What it printed after each change, and qrun's stderr."""
    (work / "job.py").write_text(script)
    cmd = [transparent[0], "-v", *transparent[1:], PY, "job.py", *args]
    proc = subprocess.Popen(cmd, cwd=work, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=job_env(tmp_path, work))
    assert proc.stdin is not None and proc.stdout is not None
    seen = []
    try:
        for _ in range(steps):
            line = proc.stdout.readline()
            assert line.startswith("ready "), line + (proc.stderr.read() if proc.stderr else "")
            change(work, line.split()[1])
            proc.stdin.write("\n")
            proc.stdin.flush()
            seen.append(proc.stdout.readline().strip())
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return seen, err


def _change_home(work: Path, what: str) -> None:
    if what == "mode":
        os.chmod(work / "f", 0o640)
    elif what == "created":
        (work / "missing.h").write_text("")
    elif what == "retargeted":
        os.unlink(work / "ln")
        os.symlink("b.txt", work / "ln")
    elif what == "renamed":
        os.rename(work / "d", work / "d2")
    elif what == "grown":
        with open(work / "f", "a") as f:
            f.write("more")
    elif what == "removed":
        os.unlink(work / "gone")
    elif what == "fd-mode":
        os.chmod(work / "held", 0o600)
    elif what == "fd-grown":
        with open(work / "held", "a") as f:
            f.write("more")


@pytest.mark.parametrize("paths", ["relative", "absolute"])
def test_a_change_made_at_home_is_seen_by_a_job_answering_from_its_cache(transparent: list[str],
                                                                          tmp_path: Path, paths: str) -> None:
    """With absolute paths the stats are answered by the C wait loop's mirror of the cache
    (loopanswers.py), with relative ones by the cache in Python: both see every change."""
    work = tmp_path / "work"
    (work / "d").mkdir(parents=True)
    (work / "d" / "x").write_text("x")
    (work / "f").write_text("f")
    os.chmod(work / "f", 0o644)
    (work / "a.txt").write_text("a")
    (work / "b.txt").write_text("bbbb")
    (work / "gone").write_text("")
    os.symlink("a.txt", work / "ln")
    (work / "held").write_text("held")
    os.chmod(work / "held", 0o644)
    seen, err = _changed_under_the_job(transparent, tmp_path, work, WATCHER, _change_home, 8,
                                       (str(work) + "/",) if paths == "absolute" else ())
    assert seen == ["mode seen: 0o640", "created seen: True", "retargeted seen: ('b.txt', 4)",
                    "renamed seen: False", "grown seen: 5", "removed seen: False",
                    "fd-mode seen: 0o600", "fd-grown seen: 8"], err
    cached = re.search(r"cached=(\d+)", err)
    assert cached is not None and int(cached.group(1)) >= 8 * 40, err


OWN_CHANGES = """\
import os
def show(*paths):
    for p in paths:
        try:
            st = os.lstat(p)
            print(p, oct(st.st_mode), st.st_size, st.st_nlink, os.access(p, os.W_OK))
        except OSError as exc:
            print(p, "error", exc.errno)
os.mkdir("d")
show("d", "f", "d/x", "ln")
for _ in range(3):
    show("f", "d/x")
with open("f", "w") as f:
    f.write("twelve bytes")
show("f")
os.chmod("f", 0o600); show("f")
os.rename("f", "d/x"); show("f", "d/x")
os.link("d/x", "hard"); show("d/x", "hard")
os.symlink("d/x", "ln"); show("ln"); print(os.readlink("ln"), os.stat("ln").st_size)
with open("hard", "a") as f:
    f.write("+")
    f.flush()
    show("d/x")
os.unlink("ln"); os.symlink("hard", "ln"); print(os.readlink("ln"))
os.rename("d", "d2"); show("d/x", "d2/x")
os.unlink("hard"); show("hard", "d2/x")
before = os.stat("d2").st_mtime_ns
os.mkdir("d2/sub")
print("directory time moved:", os.stat("d2").st_mtime_ns != before, os.stat("d2").st_nlink)
def content(p):
    with open(p) as f:
        return f.read()
with open("r", "w") as f:
    f.write("first")
print([content("r") for _ in range(3)])
with open("r", "w") as w:
    w.write("second")
    w.flush()
    print(content("r"))          # the job's own write, not yet at home: seen
print(content("r"))
os.rename("d2/x", "r")
print(content("r"), [content("r") for _ in range(2)])
"""


OWN_CHANGES_ABSOLUTE = """\
import os, sys
B = sys.argv[1] + "/"
def show(p):
    try:
        st = os.stat(B + p)
        print(p, oct(st.st_mode), st.st_size, st.st_nlink, os.access(B + p, os.W_OK))
    except OSError as exc:
        print(p, "error", exc.errno)
for _ in range(20):                      # asked again and again: the C wait loop answers
    show("f"); show("nope")
with open(B + "nope", "w") as f:         # its ENOENT goes with the job's own create
    f.write("x")
show("nope")
os.chmod(B + "f", 0o600); show("f")
with open(B + "f", "a") as f:            # a live file: its new size is seen at once
    f.write("12345")
    f.flush()
    show("f"); show("f")
show("f")
os.rename(B + "f", B + "g"); show("f"); show("g")
os.link(B + "g", B + "h"); show("g")
os.unlink(B + "g"); show("g"); show("h")
os.mkdir(B + "d"); show("d"); os.rmdir(B + "d"); show("d")
"""


def test_the_job_s_own_changes_to_absolute_paths_are_seen_at_once(transparent: list[str], tmp_path: Path) -> None:
    def prepare(work: Path) -> None:
        (work / "own.py").write_text(OWN_CHANGES_ABSOLUTE)
        (work / "f").write_text("f")
        os.chmod(work / "f", 0o644)
    work = tmp_path / "work"
    pair, _, _ = native_and_qrun(transparent, work, prepare, [PY, "own.py", str(work)], job_env(tmp_path, work))
    assert pair.native.returncode == 0, pair.native.report()
    pair.check()
    assert "f 0o100600 6 1 True" in pair.native.stdout and "nope 0o100644 1 1 True" in pair.native.stdout


def test_the_job_s_own_changes_are_seen_at_once(transparent: list[str], tmp_path: Path) -> None:
    def prepare(work: Path) -> None:
        (work / "own.py").write_text(OWN_CHANGES)
    work = tmp_path / "work"
    pair, _, _ = native_and_qrun(transparent, work, prepare, [PY, "own.py"], job_env(tmp_path, work))
    assert pair.native.returncode == 0, pair.native.report()
    pair.check()
    assert "directory time moved: True 3" in pair.native.stdout


def test_dotdot_from_a_directory_handle_depends_on_where_that_directory_is(watches: Watches,
                                                                          tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "x").write_text("x")
    fd = os.open(root / "a", os.O_PATH | os.O_DIRECTORY)
    try:
        assert watches.track(1, fd, b"../x", True)
        os.rename(root / "a", root / "e" / "a")   # `../x` from the handle is now e/x
        assert 1 in watches.changed()[0]
    finally:
        os.close(fd)


def test_a_trailing_slash_follows_the_last_symlink(watches: Watches, tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert watches.track(1, None, os.fsencode(root / "a" / "ln") + b"/", False)   # lstat("a/ln/")
    os.chmod(root / "e", 0o700)                  # the directory the link leads to
    assert 1 in watches.changed()[0]


def test_a_directory_watch_keeps_its_events_when_a_file_answer_asks_for_the_same_inode(
        watches: Watches, tmp_path: Path) -> None:
    root = _tree(tmp_path)
    _track(watches, 1, root / "a" / "b")         # b's contents count for its own stat
    fd = os.open(root / "a", os.O_PATH | os.O_DIRECTORY)
    try:
        watches.watch_file(fd, b"b")             # (a race: b taken for a file's last name)
    finally:
        os.close(fd)
    (root / "a" / "b" / "new").write_text("")
    assert watches.changed()[0] == {1}


def test_a_lost_drop_makes_the_stub_forget_everything() -> None:
    from qrun.remote.metacache import MetaCache
    m = MetaCache()
    for n, key in enumerate(("k1", "k2", "k3"), start=1):
        m.put((key,), {"r": 0, "e": None, "o": {"c": n}})
    m.drop({"t": "drop", "c": [1], "all": False, "n": 1})
    assert (m.get(("k1",)), len(m)) == (None, 2)
    m.drop({"t": "drop", "c": [2], "all": False, "n": 3})    # drop 2 never arrived
    assert len(m) == 0
    m.put(("k4",), {"r": 0, "e": None, "o": {"c": 4}})
    m.replied({"t": "rep", "seq": 5, "dn": 3})              # nothing lost: kept
    assert len(m) == 1
    m.replied({"t": "rep", "seq": 6, "dn": 4})              # home sent drop 4; it is not here
    assert len(m) == 0


MOUNTED = """\
import os, sys, time
print(os.path.exists("mnt/new"), flush=True)
sys.stdin.readline()
deadline = time.monotonic() + 20
while not os.path.exists("mnt/new") and time.monotonic() < deadline:
    time.sleep(0.002)
print(os.path.exists("mnt/new"))
"""


def test_a_filesystem_mounted_at_home_is_seen_at_once(transparent: list[str], tmp_path: Path) -> None:
    """No inotify event tells of a mount: home watches its mount table instead."""
    if os.geteuid() != 0:
        from conftest import skip_or_fail
        skip_or_fail("mounting a tmpfs needs root")
    work = tmp_path / "work"
    (work / "mnt").mkdir(parents=True)
    (work / "m.py").write_text(MOUNTED)
    proc = subprocess.Popen([*transparent, PY, "m.py"], cwd=work, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=job_env(tmp_path, work))
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "False\n"
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(work / "mnt")], check=True)
        (work / "mnt" / "new").write_text("")
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        subprocess.run(["umount", "-l", str(work / "mnt")], check=False)
    assert (proc.returncode, out) == (0, "True\n"), err


REOPENER = """\
import os, sys, time

def content():
    with open("f", "rb") as fh:
        return fh.read().decode()

for step in ("rewritten", "replaced", "appended"):
    old = [content() for _ in range(50)][-1]   # opened again and again: by a kept handle
    print("ready", step, flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + 20
    while content() == old and time.monotonic() < deadline:
        time.sleep(0.002)
    print(step, content(), flush=True)
"""


def _change_file(work: Path, what: str) -> None:
    f = work / "f"
    if what == "rewritten":          # in place, same size: only the file's own watch hears it
        with open(f, "r+") as fh:
            fh.write("NEW1")
    elif what == "replaced":         # another file renamed over it
        (work / "f.tmp").write_text("REPLACED")
        os.rename(work / "f.tmp", f)
    else:
        with open(f, "a") as fh:
            fh.write("+more")


def test_a_kept_open_never_shows_an_old_file(transparent: list[str], tmp_path: Path) -> None:
    """Read-only opens reuse the handle of an identical earlier open (remote/keptopens.py);
    a change at home makes the next open see the new content."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "f").write_text("OLD1")
    seen, err = _changed_under_the_job(transparent, tmp_path, work, REOPENER, _change_file, 3)
    assert seen == ["rewritten NEW1", "replaced REPLACED", "appended REPLACED+more"], err
    reopened = re.search(r"reopened=(\d+)", err)
    assert reopened is not None and int(reopened.group(1)) >= 3 * 40, err


def test_kept_opens_are_closed_when_their_answer_is_dropped_and_never_kept_after_a_lock() -> None:
    from qrun.remote.keptopens import KeptOpens
    k = KeptOpens()
    k.candidate(5, ("open", "a"), 11, "/h/a", "va")
    k.candidate(6, ("open", "b"), 12, "/h/b", "vb")
    k.candidate(7, ("open", "c"), 13, "/h/c", "vc")
    k.changed(7)                                    # flock'ed: its description is not fresh
    assert [k.keep(h) for h in (5, 6, 7)] == [(True, None), (True, None), (False, None)]
    assert k.take(("open", "a")) == (5, "/h/a", "va") and k.take(("open", "a")) is None
    assert k.drop([11, 12], everything=False) == [6]   # 6 was kept: close it; 5 is in use
    assert k.keep(5) == (False, None)               # its answer went: closed when let go
    k.candidate(8, ("open", "d"), 14, "/h/d", "vd")
    assert k.keep(8) == (True, None) and k.drop([], everything=True) == [8] and len(k) == 0


def test_kept_opens_make_room_by_closing_the_least_recently_kept() -> None:
    from qrun.remote.keptopens import MAX_KEPT, KeptOpens
    k = KeptOpens()
    for h in range(MAX_KEPT + 1):
        k.candidate(h, ("open", h), 1000 + h, f"/h/{h}", h)
    assert all(k.keep(h) == (True, None) for h in range(MAX_KEPT))
    assert k.keep(MAX_KEPT) == (True, 0) and len(k) == MAX_KEPT
    assert k.take(("open", 0)) is None and k.take(("open", MAX_KEPT)) is not None
