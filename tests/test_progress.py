"""The progress line for transfers that last (homenode/progress.py), drawn into a pipe
with a made-up clock: nothing for a short transfer, a line naming the file, bytes, rate and
time left once one has run for two seconds, redrawn at most four times a second, and
cleared when it ends or job output comes."""

from __future__ import annotations

import os

from qrun.homenode.progress import Progress
from qrun.homenode.server_stdio import OutputRelay

MiB = 1 << 20


def _drawn(r: int) -> str:
    os.set_blocking(r, False)
    try:
        return os.read(r, 65536).decode()
    except BlockingIOError:
        return ""


def test_a_short_transfer_draws_nothing() -> None:
    r, w = os.pipe()
    p = Progress(w, enabled=True)
    for i in range(1, 11):
        p.step("fetching", 7, "data.bin", i * 8 * MiB, 80 * MiB, 0.1 * i)
    p.clear()
    assert _drawn(r) == ""


def test_a_long_transfer_shows_file_bytes_rate_and_time_left_then_clears() -> None:
    r, w = os.pipe()
    p = Progress(w, enabled=True)
    p.step("fetching", 7, "data.bin", 8 * MiB, 800 * MiB, 0.0)
    p.step("fetching", 7, "data.bin", 100 * MiB, 800 * MiB, 1.9)
    assert _drawn(r) == ""
    p.step("fetching", 7, "data.bin", 208 * MiB, 800 * MiB, 2.0)   # 200 MiB in 2 s
    assert _drawn(r) == "\rqrun: fetching data.bin: 208.0 MiB of 800.0 MiB at 100.0 MiB/s, 6 s left\x1b[K"
    p.step("fetching", 7, "data.bin", 210 * MiB, 800 * MiB, 2.1)   # too soon to redraw
    assert _drawn(r) == ""
    p.step("fetching", 7, "data.bin", 800 * MiB, 800 * MiB, 9.0)   # done: the line goes
    assert _drawn(r) == "\r\x1b[K"


def test_job_output_clears_the_line_first_and_nothing_is_drawn_off_a_terminal() -> None:
    r, w = os.pipe()
    p = Progress(w, enabled=True)
    p.step("writing back", 3, "out.log", 0, None, 0.0)
    p.step("writing back", 3, "out.log", 300 * MiB, None, 3.0)
    assert _drawn(r) == "\rqrun: writing back out.log: 300.0 MiB at 100.0 MiB/s\x1b[K"

    class Control:
        def send(self, *a: object, **k: object) -> None:
            raise AssertionError("nothing to tell the stub")

    out_r, out_w = os.pipe()
    relay = OutputRelay(Control(), p.clear)  # type: ignore[arg-type]
    relay.write(out_w, b"job output\n")
    assert _drawn(r) == "\r\x1b[K" and os.read(out_r, 100) == b"job output\n"
    assert not Progress(w).enabled  # a pipe is no terminal
