"""Control messages from home to the stub: signals, stdin and stream closes."""

from __future__ import annotations

import time
from typing import Any

import zmq
from qrun.syscalls import wire

CTL_RESEND = 1.0       # seconds before an unacknowledged control message is sent again
CTL_WINDOW = 64        # control messages (stdin chunks of 64 KiB) in flight at most


class ControlChannel:
    """Signals, stdin and stream closes reach the stub exactly once and in order: each is
    numbered and resent every second until the stub's ping acknowledges it (a message
    on a connection that dies, e.g. while qrun was stopped, would be lost)."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.ident: bytes | None = None                  # the stub's control connection, once pinged
        # Control messages sent so far; None for a server that took a job over, until the
        # stub's first ping says how many it has had (then numbering goes on from there).
        self.n: int | None = 0
        self.unacked: dict[int, list[Any]] = {}          # n -> [frame, last sent]
        self.held: list[tuple[str, dict[str, Any]]] = []  # sent before the numbering was known

    def send(self, kind: str, **fields: Any) -> None:
        if self.n is None:
            self.held.append((kind, fields))
            return
        self.n += 1
        frame = wire.encode(kind, n=self.n, **fields)
        self.unacked[self.n] = [frame, time.monotonic()]
        if self.ident is not None:
            self.sock.send_multipart([self.ident, frame])

    def resend(self, now: float) -> None:
        if self.ident is None:
            return
        for entry in self.unacked.values():
            if now - entry[1] >= CTL_RESEND:
                self.sock.send_multipart([self.ident, entry[0]])
                entry[1] = now

    def acked(self, ack: object) -> None:
        if isinstance(ack, int) and not isinstance(ack, bool):
            for n in [n for n in self.unacked if n <= ack]:
                del self.unacked[n]

    def attach(self, ident: bytes, ack: object) -> None:
        """The stub's first ping names its control connection (and, after a takeover, says
        how many control messages it has had): what waited goes out now."""
        self.ident = ident
        if self.n is None:
            self.n = ack if isinstance(ack, int) and not isinstance(ack, bool) and ack >= 0 else 0
            for kind, fields in self.held:
                self.send(kind, **fields)
            self.held = []
            return
        for frame, _ in self.unacked.values():
            self.sock.send_multipart([ident, frame])

    def has_room(self) -> bool:
        """Whether more may be sent now (flow control: the stub acknowledges)."""
        return self.ident is not None and len(self.unacked) < CTL_WINDOW
