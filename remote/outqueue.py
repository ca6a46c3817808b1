"""The job's output on its way home. Each chunk is numbered and kept until home
acknowledges it, so a connection lost mid-job (a partition, a stopped or restarted home
side) loses nothing: after a reconnect, or when home has acknowledged nothing for a while,
every unacknowledged chunk is sent again and home drops what it already has.

Up to WINDOW bytes are in flight. While home answers, a full window is flow control: the
stub stops reading the job's pipes (the job waits on its writes, as on a slow terminal).
While home is away, what the job writes beyond the window goes to an unlinked spill file in
the temporary directory, read back in order once home catches up, so the job does not
block on its stdout for the length of an outage; only a spill file of SPILL_LIMIT bytes,
or one the disk has no room for, stops the reading again.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable

WINDOW = 16 << 20          # bytes sent but not yet acknowledged, at most
SPILL_LIMIT = 1 << 30      # bytes the spill file may hold
_HEAD = struct.Struct("=BI")   # stream number, length


class OutQueue:
    def __init__(self, spill_dir: str, send: Callable[[int, int, bytes], bool]) -> None:
        self.spill_dir = spill_dir
        self.send = send            # (n, stream, data) -> False if the connection took nothing
        self.window: deque[tuple[int, int, bytes]] = deque()   # (n, stream, data), unacknowledged
        self.window_bytes = 0
        self.numbered = 0            # chunks numbered so far
        self.sent = 0                # the last chunk handed to the connection
        self.acked = 0
        self._spill: int | None = None   # the spill file's fd, while it holds chunks
        self._spill_read = 0
        self._spill_end = 0
        self._held: deque[tuple[int, bytes]] = deque()   # after the spill file, if it had no room

    @property
    def empty(self) -> bool:
        """Everything the job wrote is at home."""
        return not self.window and self._spill is None and not self._held

    @property
    def window_full(self) -> bool:
        return self.window_bytes >= WINDOW

    @property
    def full(self) -> bool:
        """Stop reading the job's pipes even while home is away."""
        return bool(self._held) or self._spill_end - self._spill_read >= SPILL_LIMIT

    def add(self, stream: int, data: bytes) -> None:
        if self._spill is None and not self._held and self.window_bytes < WINDOW:
            self._number(stream, data)
        elif self._held or not self._spill_out(stream, data):
            self._held.append((stream, data))
        self.flush()

    def ack(self, n: object) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n <= self.acked or n > self.numbered:
            return
        self.acked = n
        self.sent = max(self.sent, n)   # (after a resend: home already had these)
        while self.window and self.window[0][0] <= n:
            self.window_bytes -= len(self.window.popleft()[2])
        self._refill()
        self.flush()

    def resend(self) -> None:
        """Send every unacknowledged chunk again (a reconnect, or no acknowledgement for
        a while): home keeps only the next one in order."""
        self.sent = self.acked
        self.flush()

    def flush(self) -> None:
        for n, stream, data in self.window:
            if n <= self.sent:
                continue
            if not self.send(n, stream, data):
                return
            self.sent = n

    def _number(self, stream: int, data: bytes) -> None:
        self.numbered += 1
        self.window.append((self.numbered, stream, data))
        self.window_bytes += len(data)

    def _spill_out(self, stream: int, data: bytes) -> bool:
        """False if the spill file cannot take it (no room, no file): then it is held in
        memory and the job's pipes wait."""
        record = _HEAD.pack(stream, len(data)) + data
        try:
            if self._spill is None:
                self._spill = os.open(self.spill_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
                self._spill_read = self._spill_end = 0
            if os.pwrite(self._spill, record, self._spill_end) != len(record):
                return False   # (a short write: the bytes past the end are overwritten later)
        except OSError:
            return False
        self._spill_end += len(record)
        return True

    def _refill(self) -> None:
        """Move spilled chunks, then held ones, into the window as it empties, in order."""
        while self.window_bytes < WINDOW and (self._spill is not None or self._held):
            if self._spill is None:
                self._number(*self._held.popleft())
                continue
            if self._spill_read >= self._spill_end:
                os.close(self._spill)
                self._spill = None
                continue
            stream, length = _HEAD.unpack(os.pread(self._spill, _HEAD.size, self._spill_read))
            data = os.pread(self._spill, length, self._spill_read + _HEAD.size)
            self._spill_read += _HEAD.size + length
            self._number(stream, data)

    def close(self) -> None:
        if self._spill is not None:
            os.close(self._spill)
            self._spill = None
