"""The ZAP handler (ZeroMQ RFC 27) that admits a job's stub: a CURVE client is accepted
only if its public key is the job's own (or, for the daemon's rendezvous socket, one of
the keys of the jobs Slurm queues). The key, in Z85, is the connection's User-Id. libzmq
asks it about every connection of the context's CURVE server sockets before any message
of that connection is delivered.

Written here rather than taken from `zmq.auth` because that package pulls in asyncio, a
tenth of qrun's start-up, for a check this small."""

from __future__ import annotations

import threading
from collections.abc import Callable

import zmq
from zmq.utils import z85

ZAP_ENDPOINT = "inproc://zeromq.zap.01"   # fixed by the RFC: libzmq connects here
ZAP_VERSION = b"1.0"


class KeyGate:
    """Runs the handler on its own thread from `start()` to `stop()`."""

    def __init__(self, ctx: zmq.Context, allowed: bytes | Callable[[bytes], bool]) -> None:
        """`allowed`: the one key admitted (Z85), or a check of a key (Z85), asked on this
        handler's thread."""
        self.ctx = ctx
        if isinstance(allowed, bytes):
            self.admits: Callable[[bytes], bool] = allowed.__eq__
        else:
            self.admits = allowed
        self._stop_addr = f"inproc://qrun-zap-stop-{id(self)}"
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        # Bound before start() returns: a connection arriving first would find no handler,
        # and libzmq would then refuse it.
        self._sock = self.ctx.socket(zmq.REP)
        self._sock.linger = 0
        self._sock.bind(ZAP_ENDPOINT)
        self._stop_r = self.ctx.socket(zmq.PAIR)
        self._stop_r.bind(self._stop_addr)
        self._thread = threading.Thread(target=self._serve, name="qrun-zap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        waker = self.ctx.socket(zmq.PAIR)
        waker.linger = 0
        waker.connect(self._stop_addr)
        waker.send(b"")
        self._thread.join()
        waker.close()
        self._thread = None

    def answer(self, frames: list[bytes]) -> list[bytes]:
        """The reply to one request: 200 for the job's key over CURVE, 400 for anything
        else, including a malformed request (a bad request must not stop the handler)."""
        if len(frames) < 6 or frames[0] != ZAP_VERSION:
            request_id = frames[1] if len(frames) > 1 else b""
            return [ZAP_VERSION, request_id, b"400", b"malformed request", b"", b""]
        request_id, mechanism, credentials = frames[1], frames[5], frames[6:]
        if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            key = z85.encode(credentials[0])
            try:
                ok = self.admits(key)
            except Exception:   # (a failing check refuses; it must not end the handler)
                ok = False
            if ok:
                return [ZAP_VERSION, request_id, b"200", b"OK", key, b""]
        return [ZAP_VERSION, request_id, b"400", b"not this job's key", b"", b""]

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._stop_r, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self._stop_r in events:
                    return
                if self._sock in events:
                    self._sock.send_multipart(self.answer(self._sock.recv_multipart()))
        finally:
            self._sock.close()
            self._stop_r.close()
