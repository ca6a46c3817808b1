"""Directory listings: once a job has asked about a few entries of a home directory, home
sends the whole directory (homenode/listings.py) and the stub answers the rest of its
stats, lstats, readlinks and ENOENTs from it (remote/metacache.py). Checked on home's side
with real inotify (what each change drops), on the stub's side (what a listing may and may
not answer), and end to end: a job that stats a directory's files once each gets most
answers from the listing, and still sees every change home makes under it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from qrun.homenode import listings
from qrun.homenode.listings import FIRST_AFTER, Listings
from qrun.homenode.watches import Watches
from qrun.remote.metacache import MetaCache, key_of
from qrun.syscalls.structs import stat_result_to_wire
from test_metacache import WAIT_FOR, _changed_under_the_job


@pytest.fixture
def home() -> Listings:
    w = Watches()
    if w.fd is None:
        pytest.skip("inotify is not available here")
    return Listings(w, tree_is_home=lambda real: True)


def _dir(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    for name in ("a.c", "b.c", "c.h"):
        (d / name).write_text(name)
    os.symlink("a.c", d / "ln")
    return d


def _stat(path: Path) -> list[object]:
    return [None, os.fsencode(path), None, 0]


def _listed(home: Listings, d: Path) -> listings.Listing:
    for name in ("x1", "x2", "x3")[:FIRST_AFTER - 1]:
        assert home.missed("newfstatat", _stat(d / name), "ENOENT") is None
    assert home.missed("newfstatat", _stat(d / "x9"), "ENOENT") == os.fsencode(d)
    got = home.listing(os.fsencode(d))
    assert got is not None
    assert home.w.changed() == (set(), False)
    return got


def _numbers(got: listings.Listing) -> dict[bytes, int]:
    return {e[0]: e[1] for e in got.entries}


def test_a_directory_is_listed_after_a_few_misses_with_every_entry_s_attributes(home: Listings,
                                                                               tmp_path: Path) -> None:
    d = _dir(tmp_path)
    assert home.missed("faccessat", [None, os.fsencode(d / "a.c"), 0], None) is None
    got = _listed(home, d)
    by_name = {e[0]: e for e in got.entries}
    assert set(by_name) == {b"a.c", b"b.c", b"c.h", b"ln", b"sub"}
    assert by_name[b"a.c"][2] == stat_result_to_wire(os.lstat(d / "a.c"))
    assert by_name[b"ln"][2] == stat_result_to_wire(os.lstat(d / "ln")) and by_name[b"ln"][3] == b"a.c"
    assert by_name[b"sub"][3] is None
    assert len(set(got.numbers())) == 6 and min(got.numbers()) > listings.NUMBER_BASE


def test_each_change_drops_what_it_changes_and_no_more(home: Listings, tmp_path: Path) -> None:
    d = _dir(tmp_path)
    got = _listed(home, d)
    n = _numbers(got)
    os.chmod(d / "a.c", 0o600)                                # one entry's attributes
    assert home.w.changed() == ({n[b"a.c"]}, False)
    with open(d / "b.c", "a") as f:                           # a write: size and times
        f.write("more")
    assert home.w.changed()[0] == {n[b"b.c"]}
    os.link(d / "c.h", tmp_path / "elsewhere")                # a link count no directory of d hears of
    assert home.w.changed()[0] == {n[b"c.h"]}
    (d / "sub" / "inner").write_text("")                      # a subdirectory's own times
    assert home.w.changed()[0] == {n[b"sub"]}
    (d / "new.c").write_text("")                              # the names, not the entries
    assert home.w.changed()[0] == {got.names}
    os.rename(d, tmp_path / "moved")                          # every answer stepped through it
    assert home.w.changed()[0] == set(got.numbers()) - {n[b"a.c"], n[b"b.c"], n[b"c.h"], n[b"sub"], got.names}


def test_an_entry_changed_while_the_directory_is_listed_goes_as_a_name_only(home: Listings,
                                                                            tmp_path: Path) -> None:
    d = _dir(tmp_path)
    for name in ("x1", "x2", "x3")[:FIRST_AFTER]:
        home.missed("newfstatat", _stat(d / name), "ENOENT")
    got = home.listing(os.fsencode(d))
    assert got is not None
    os.chmod(d / "b.c", 0o600)   # (after its watch, before the listing goes: as listing_after sees it)
    stale, everything = home.w.changed()
    assert not everything and got.names not in stale
    sent = {e[0]: e for e in got.without(stale).entries}
    assert sent[b"b.c"][2:] == [None, None] and sent[b"a.c"][2] is not None


def test_a_directory_holding_a_tree_the_execution_host_serves_is_not_listed(tmp_path: Path) -> None:
    from qrun.homenode.resolve import Resolver
    from qrun.syscalls.paths import PathPolicy
    r = Resolver(PathPolicy(local=["/usr", "/scratch/local"], home=["/home"]), [])
    assert r.tree_is_home("/home/u/src") and not r.tree_is_home("/scratch")
    assert not r.tree_is_home("/") and not r.tree_is_home("/usr/lib") and not r.tree_is_home("/proc/1")
    w = Watches()
    if w.fd is None:
        pytest.skip("inotify is not available here")
    local_inside = Listings(w, tree_is_home=lambda real: False)
    d = _dir(tmp_path)
    assert local_inside.listing(os.fsencode(d)) is None


def test_a_directory_too_large_is_never_listed(home: Listings, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listings, "MAX_ENTRIES", 4)
    d = _dir(tmp_path)
    for name in ("x1", "x2")[:FIRST_AFTER - 1]:
        home.missed("newfstatat", _stat(d / name), "ENOENT")
    d_ = os.fsencode(d)
    assert home.missed("newfstatat", _stat(d / "x3"), "ENOENT") == d_
    assert home.listing(d_) is None
    assert all(home.missed("newfstatat", _stat(d / f"y{i}"), "ENOENT") is None for i in range(10))


def test_a_listing_made_again_drops_the_last_s_numbers_first_so_losing_it_strands_nothing(
        tmp_path: Path) -> None:
    from qrun.homenode.server_answers import Answers
    from qrun.syscalls import wire
    home = Answers(enabled=True)
    if home.watches is None or home.watches.fd is None:
        pytest.skip("inotify is not available here")
    d = _dir(tmp_path)
    for name in ("x1", "x2", "x3")[:FIRST_AFTER - 1]:
        assert home.listing_after("newfstatat", _stat(d / name), "ENOENT") == []
    first = [wire.decode(f) for f in home.listing_after("newfstatat", _stat(d / "x9"), "ENOENT")]
    assert [m["t"] for m in first] == ["list"]
    stub = MetaCache()
    stub.listed(first[0])
    _home_said(stub, "newfstatat", [None, os.fsencode(d / "other"), None, 0])
    b_c = [None, os.fsencode(d / "b.c"), None, 0]
    assert _ask(stub, "newfstatat", b_c) is not None   # (kept under the first listing's number)
    os.chmod(d / "a.c", 0o600)
    changed = [wire.decode(f) for f in home.changed()]
    assert [m["t"] for m in changed] == ["drop"] and stub.drop(changed[0]) is False
    for _ in range(FIRST_AFTER):   # (a.c's attributes went: its stats go home, and bring a listing)
        again = [wire.decode(f) for f in home.listing_after("newfstatat", _stat(d / "a.c"), None)]
    assert [m["t"] for m in again] == ["drop", "list"]
    old = {first[0]["n"], *(e[1] for e in first[0]["e"])}
    assert old - set(changed[0]["c"]) <= set(again[0]["c"]) <= old
    assert stub.drop(again[0]) is False   # (and the listing itself is lost on the way)
    assert stub.get(key_of("newfstatat", b_c)) is None
    assert _ask(stub, "newfstatat", b_c) is None and _ask(stub, "newfstatat", _stat(d / "x9")) is None
    home.close()


def test_entries_left_without_a_watch_mark_the_listing_partial_and_stale_ones_do_not(
        home: Listings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _dir(tmp_path)
    for name in ("x1", "x2", "x3")[:FIRST_AFTER]:
        home.missed("newfstatat", _stat(d / name), "ENOENT")
    got = home.listing(os.fsencode(d))
    assert got is not None and not got.partial
    os.chmod(d / "a.c", 0o600)   # (while the listing is made: a.c goes as a name only)
    stale, _ = home.w.changed()
    assert stale == {_numbers(got)[b"a.c"]}
    home.sent(got.without(stale))
    assert [home.missed("newfstatat", _stat(d / "a.c"), None) for _ in range(FIRST_AFTER)][-1] == os.fsencode(d)
    monkeypatch.setattr(home.w, "max_watches", 0)   # (no watch left for any entry)
    for name in ("y1", "y2", "y3"):
        home.missed("newfstatat", _stat(d / name), "ENOENT")
    starved = home.listing(os.fsencode(d))
    assert starved is not None and starved.partial
    assert {e[0] for e in starved.entries if e[2] is None} == {b"a.c", b"b.c", b"c.h", b"sub"}
    home.sent(starved)
    assert home.missed("newfstatat", _stat(d / "a.c"), None) is None   # (its names hold: no listing again)


def test_a_directory_where_another_case_of_a_name_finds_its_entry_is_not_listed(tmp_path: Path) -> None:
    d = tmp_path / "ci"
    d.mkdir()
    (d / "Makefile").write_text("")
    (d / "mAKEFILE").write_text("")   # (what a case-insensitive filesystem would find for it)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert listings._matches_other_case(fd, [(b"Makefile", False, False)])
        assert not listings._matches_other_case(fd, [(b"Makefile", False, False), (b"mAKEFILE", False, False)])
        assert not listings._matches_other_case(fd, [(b"only", False, False)])
        assert not listings._matches_other_case(fd, [(b"123", False, False)])
    finally:
        os.close(fd)


# ---- the stub's side ---------------------------------------------------------------------------

def _cache_with_listing(d: bytes) -> MetaCache:
    """A cache holding a listing of d: a regular file, a symlink, and nothing else."""
    mc = MetaCache()
    f = [1, 2, 0o100644, 1, 0, 0, 0, 5, 4096, 8, 0, 0, 0, 0, 0, 0]
    ln = [1, 3, 0o120777, 1, 0, 0, 0, 1, 4096, 0, 0, 0, 0, 0, 0, 0]
    mc.listed({"t": "list", "d": d, "n": 100, "e": [[b"f", 101, f, None], [b"ln", 102, ln, b"f"]]})
    return mc


def _ask(mc: MetaCache, op: str, args: list[Any]) -> dict[str, Any] | None:
    return mc.get(key_of(op, args)) or mc.derive(key_of(op, args), op, args)


def _home_said(mc: MetaCache, op: str, args: list[Any], e: str | None = "ENOENT") -> None:
    """Home's own answer to one call of this shape (the cache derives only shapes home took)."""
    mc.put(key_of(op, args), {"t": "rep", "r": -1 if e else 0, "e": e, "o": {}})


def test_a_listing_answers_stat_lstat_readlink_and_enoent_once_home_took_the_call_s_shape() -> None:
    mc = _cache_with_listing(b"/h/d")
    stat_of = lambda name, flags=0: [None, b"/h/d/" + name, None, flags]  # noqa: E731
    assert _ask(mc, "newfstatat", stat_of(b"nope")) is None      # a shape home never saw
    _home_said(mc, "newfstatat", stat_of(b"other"))
    _home_said(mc, "newfstatat", stat_of(b"other", 0x100))
    _home_said(mc, "readlinkat", [None, b"/h/d/other", 100])
    nope = _ask(mc, "newfstatat", stat_of(b"nope"))
    assert nope is not None and nope["e"] == "ENOENT" and nope["o"]["c"] == 100
    f = _ask(mc, "newfstatat", stat_of(b"f"))
    assert f is not None and f["r"] == 0 and f["o"]["2"][2] == 0o100644 and f["o"]["c"] == 101
    assert _ask(mc, "newfstatat", stat_of(b"ln")) is None       # stat follows the link: home's
    ln = _ask(mc, "newfstatat", stat_of(b"ln", 0x100))          # AT_SYMLINK_NOFOLLOW: the link's own
    assert ln is not None and ln["o"]["2"][2] == 0o120777
    link = _ask(mc, "readlinkat", [None, b"/h/d/ln", 100])
    assert link is not None and link["r"] == 1 and link["o"]["2"] == b"f"
    not_link = _ask(mc, "readlinkat", [None, b"/h/d/f", 100])
    assert not_link is not None and not_link["e"] == "EINVAL"
    assert _ask(mc, "newfstatat", [None, b"/h/other/f", None, 0]) is None   # another directory
    assert mc.derived == 5


def test_a_dropped_entry_is_still_a_name_and_dropped_names_give_no_enoent() -> None:
    mc = _cache_with_listing(b"/h/d")
    _home_said(mc, "newfstatat", [None, b"/h/d/other", None, 0])
    _home_said(mc, "newfstatat", [None, b"/h/d/other", None, 0x100])
    f_key = key_of("newfstatat", [None, b"/h/d/f", None, 0])
    assert _ask(mc, "newfstatat", [None, b"/h/d/f", None, 0]) is not None
    mc.drop({"t": "drop", "c": [101], "all": False, "n": 1})        # f's attributes changed
    assert mc.get(f_key) is None
    assert _ask(mc, "newfstatat", [None, b"/h/d/f", None, 0]) is None   # home's again, never ENOENT
    assert _ask(mc, "newfstatat", [None, b"/h/d/nope", None, 0]) is not None
    mc.drop({"t": "drop", "c": [100], "all": False, "n": 2})        # an entry came or went
    assert _ask(mc, "newfstatat", [None, b"/h/d/nope", None, 0]) is None
    assert _ask(mc, "newfstatat", [None, b"/h/d/ln", None, 0x100]) is not None   # entries still hold


def test_a_new_listing_of_a_directory_drops_what_was_kept_under_the_last() -> None:
    mc = _cache_with_listing(b"/h/d")
    _home_said(mc, "newfstatat", [None, b"/h/d/other", None, 0])
    f_key = key_of("newfstatat", [None, b"/h/d/f", None, 0])
    assert _ask(mc, "newfstatat", [None, b"/h/d/f", None, 0]) is not None and mc.get(f_key) is not None
    f = [1, 2, 0o100600, 1, 0, 0, 0, 9, 4096, 8, 0, 0, 0, 0, 0, 0]
    mc.listed({"t": "list", "d": b"/h/d", "n": 200, "e": [[b"f", 201, f, None]]})
    assert mc.get(f_key) is None   # (home forgot number 101 as it sent the new listing)
    again = _ask(mc, "newfstatat", [None, b"/h/d/f", None, 0])
    assert again is not None and again["o"]["c"] == 201 and again["o"]["2"][2] == 0o100600
    mc.drop({"t": "drop", "c": [101], "all": False, "n": 1})   # (an old number: touches nothing)
    assert mc.get(f_key) is again
    assert mc.absent(b"/h/d/ln") and not mc.absent(b"/h/d/f") and not mc.absent(b"/h/other/x")


def test_a_malformed_listing_is_ignored() -> None:
    mc = MetaCache()
    mc.listed({"t": "list", "d": b"/h/d", "n": 7, "e": [[b"f", "x", None, None]]})
    bad_mode = [1, 2, -1, 1, 0, 0, 0, 5, 4096, 8, 0, 0, 0, 0, 0, 0]
    mc.listed({"t": "list", "d": b"/h/e", "n": 8, "e": [[b"f", 9, bad_mode, None]]})
    _home_said(mc, "newfstatat", [None, b"/h/e/other", None, 0])
    assert _ask(mc, "newfstatat", [None, b"/h/e/f", None, 0]) is None
    _home_said(mc, "newfstatat", [None, b"/h/d/other", None, 0])
    assert _ask(mc, "newfstatat", [None, b"/h/d/nope", None, 0]) is None


# ---- end to end --------------------------------------------------------------------------------

LISTED = """\
import os, sys, time
B = sys.argv[1] + "/"
""" + WAIT_FOR + """
def st(name):
    try:
        s = os.lstat(B + name)
        return (oct(s.st_mode), s.st_size, s.st_nlink)
    except OSError as exc:
        return exc.strerror
def can_open(name):
    try:
        open(B + name).close()
        return True
    except OSError as exc:
        return exc.strerror
first = [st(f"f{i}")[1] for i in range(60)]   # each asked once
assert first == list(range(60)) and st("new.h") == "No such file or directory", first
missing = {can_open(f"nope{i}.h") for i in range(20)}   # an include search's misses
assert missing == {"No such file or directory"}, missing
steps = [("created", lambda: st("new.h")), ("created-open", lambda: can_open("new2.h")), ("mode", lambda: st("f7")), ("grown", lambda: st("f8")),
         ("linked", lambda: st("f9")), ("removed", lambda: st("f10")), ("renamed", lambda: st("f11"))]
for what, probe in steps:
    old = probe()
    print("ready", what, flush=True)
    sys.stdin.readline()
    wait_for(what, probe, old)
"""


def _change_listed(work: Path, what: str) -> None:
    d = work / "d"
    if what == "created":
        (d / "new.h").write_text("new")
    elif what == "created-open":
        (d / "new2.h").write_text("new")
    elif what == "mode":
        os.chmod(d / "f7", 0o600)
    elif what == "grown":
        with open(d / "f8", "a") as f:
            f.write("grown")
    elif what == "linked":
        os.link(d / "f9", work / "f9-elsewhere")
    elif what == "removed":
        os.unlink(d / "f10")
    elif what == "renamed":
        os.rename(d / "f12", d / "f11")


def test_a_job_gets_a_directory_s_first_stats_from_its_listing_and_sees_every_change(
        transparent: list[str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "d").mkdir(parents=True)
    for i in range(60):
        (work / "d" / f"f{i}").write_text("x" * i)
        os.chmod(work / "d" / f"f{i}", 0o644)
    seen, err = _changed_under_the_job(transparent, tmp_path, work, LISTED, _change_listed, 7,
                                       (str(work / "d"),))
    assert seen == ["created seen: ('0o100644', 3, 1)", "created-open seen: True", "mode seen: ('0o100600', 7, 1)",
                    "grown seen: ('0o100644', 13, 1)", "linked seen: ('0o100644', 9, 2)",
                    "removed seen: No such file or directory", "renamed seen: ('0o100644', 12, 1)"], err
    listed = re.search(r"listed=(\d+)", err)
    # (61 first stats of distinct names and 20 opens of missing ones: all but the few that
    # brought the listing come from it)
    assert listed is not None and int(listed.group(1)) >= 50 + 20, err
