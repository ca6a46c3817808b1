"""A progress line on qrun's terminal while a transfer between home and the execution host
lasts: a large home file fetched into a copy, or a large write-back. It names the file and
shows the bytes so far (of the file's size, when known), the rate and the time left. It
appears once a transfer has run for SHOW_AFTER seconds, is redrawn at most every REDRAW
seconds, and is cleared when the transfer ends, before any job output or message reaches the
terminal, and at the job's end. Nothing is drawn unless qrun's stderr is a terminal and
the job has no pty of its own (a full-screen program owns the screen then), nor over a
line of the job's output that has not ended.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

SHOW_AFTER = 2.0
REDRAW = 0.25


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns at GiB


class Progress:
    def __init__(self, fd: int = 2, enabled: bool | None = None) -> None:
        self.fd = fd
        self.enabled = os.isatty(fd) if enabled is None else enabled
        self._key: tuple[str, int] | None = None
        self._start = self._last = 0.0
        self._first = 0
        self._shown = False
        # Whether the terminal's cursor is at the start of a line (the job's last output
        # ended with a newline): the line is drawn only then, never over the job's text.
        self.may_draw: Callable[[], bool] = lambda: True

    def step(self, verb: str, handle: int, name: str, done: int, total: int | None, now: float) -> None:
        """The transfer `verb` ("fetching", "writing back") of `handle` has reached byte
        `done` (of `total`, if known) at time `now`."""
        if not self.enabled:
            return
        key = (verb, handle)
        if key != self._key:
            self.clear()
            self._key, self._start, self._last, self._first = key, now, 0.0, done
        if total is not None and done >= total:
            self.clear()
            self._key = None
            return
        if now - self._start < SHOW_AFTER or now - self._last < REDRAW or not self.may_draw():
            return
        self._last = now
        self._draw(self.line(verb, name, done, total, (done - self._first) / (now - self._start)))

    @staticmethod
    def line(verb: str, name: str, done: int, total: int | None, rate: float) -> str:
        of = f" of {human(total)}" if total else ""
        left = ""
        if total and rate > 0:
            left = f", {max(0.0, (total - done) / rate):.0f} s left"
        return f"qrun: {verb} {name}: {human(done)}{of} at {human(rate)}/s{left}"

    def clear(self) -> None:
        if self._shown:
            self._write("\r\x1b[K")
            self._shown = False

    def _draw(self, text: str) -> None:
        width = shutil.get_terminal_size((80, 24)).columns - 1
        if len(text) > width:  # the file name gives way first
            text = text[:max(0, width - 1)] + "…"
        self._write("\r" + text + "\x1b[K")
        self._shown = True

    def _write(self, s: str) -> None:
        try:
            os.write(self.fd, s.encode())
        except OSError:
            self.enabled = False
