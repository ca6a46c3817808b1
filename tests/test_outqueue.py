"""The stub's output queue (remote/outqueue.py): numbered chunks kept until home
acknowledges them, resent whole after a loss, spilled to a file past the window."""

from __future__ import annotations

from pathlib import Path

import pytest
from qrun.remote import outqueue
from qrun.remote.outqueue import OutQueue


class Wire:
    """A connection that can refuse sends (no peer) and records what it carried."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[tuple[int, int, bytes]] = []

    def send(self, n: int, stream: int, data: bytes) -> bool:
        if self.up:
            self.sent.append((n, stream, data))
        return self.up


class Home:
    """Home's side: writes chunk n only if it is the next one."""

    def __init__(self) -> None:
        self.seen = 0
        self.data: list[tuple[int, bytes]] = []

    def take(self, chunks: list[tuple[int, int, bytes]]) -> None:
        for n, stream, data in chunks:
            if n == self.seen + 1:
                self.data.append((stream, data))
                self.seen = n


def test_chunks_are_kept_until_acknowledged_and_resent_after_a_loss(tmp_path: Path) -> None:
    w, home = Wire(), Home()
    q = OutQueue(str(tmp_path), w.send)
    q.add(1, b"a")
    q.add(2, b"b")
    home.take(w.sent[:1])        # the second chunk is lost with its connection
    w.sent.clear()
    q.add(1, b"c")               # ... and home drops the third: it is not the next one
    home.take(w.sent)
    q.ack(home.seen)
    assert not q.empty
    w.sent.clear()
    q.resend()                   # (a reconnect)
    home.take(w.sent)
    q.ack(home.seen)
    assert home.data == [(1, b"a"), (2, b"b"), (1, b"c")]
    assert q.empty


def test_what_the_connection_refuses_is_sent_later(tmp_path: Path) -> None:
    w, home = Wire(), Home()
    q = OutQueue(str(tmp_path), w.send)
    w.up = False
    for i in range(5):
        q.add(1, b"%d" % i)
    assert w.sent == []
    w.up = True
    q.flush()
    home.take(w.sent)
    q.ack(home.seen)
    assert [d for _, d in home.data] == [b"0", b"1", b"2", b"3", b"4"] and q.empty


def test_past_the_window_output_spills_to_a_file_in_order(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outqueue, "WINDOW", 10)
    w, home = Wire(), Home()
    q = OutQueue(str(tmp_path), w.send)
    w.up = False                       # home away: nothing acknowledged
    chunks = [bytes([65 + i]) * 4 for i in range(8)]
    for i, c in enumerate(chunks):
        q.add(1 + i % 2, c)
    assert q.window_bytes <= 12 and q._spill is not None   # (3 in the window, the rest spilled)
    w.up = True
    for _ in range(10):                # home back: its acknowledgements pull the rest in
        q.flush()
        home.take(w.sent)
        q.ack(home.seen)
    assert home.data == [(1 + i % 2, c) for i, c in enumerate(chunks)] and q.empty


def test_acknowledgements_out_of_range_are_ignored(tmp_path: Path) -> None:
    w = Wire()
    q = OutQueue(str(tmp_path), w.send)
    q.add(1, b"x")
    for bad in (True, "1", 5, -1, None):
        q.ack(bad)
    assert not q.empty
    q.ack(1)
    assert q.empty


def test_a_spill_file_without_room_holds_output_and_stops_the_reading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outqueue, "WINDOW", 4)
    w, home = Wire(), Home()
    q = OutQueue(str(tmp_path / "no-such-dir"), w.send)   # (the spill file cannot be made)
    w.up = False
    q.add(1, b"aaaa")
    assert not q.full
    q.add(1, b"bb")
    assert q.full            # the pump stops reading the job's pipes
    w.up = True
    for _ in range(5):
        q.flush()
        home.take(w.sent)
        q.ack(home.seen)
    assert home.data == [(1, b"aaaa"), (1, b"bb")] and q.empty and not q.full
