"""Where the stub of a job Slurm queued (sbatch) phones home: a CURVE ROUTER of the daemon,
on the home address the job's cluster file names, at a port that stays the same across
daemon restarts (stubs started hours later still find it).

Its key pair and ports are kept in `rendezvous.json` beside the records (mode 0600: the
secret key). Only the keys of the jobs sbatch queued are admitted (ZAP, checked by
the daemon's KeyGate); the stub says which job (and array task) it is, the daemon checks
that the key it connected with is that job's, starts the job's shepherd and then tells the
stub where that shepherd's home server listens (see Daemon.claim). Every message is a wire
map; one of any other shape is dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq
from qrun.homenode.zap import KeyGate
from qrun.syscalls import wire

MAX_MESSAGE = 4096       # no claim is longer
HANDSHAKE_MS = 5000


class RendezvousError(Exception):
    pass


class Rendezvous:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "rendezvous.json"
        self.public, self.secret, self.ports = self._load()
        self.keys: frozenset[bytes] = frozenset()   # the stubs' keys admitted (Z85), set each tick
        self.ctx = zmq.Context()
        self.gate = KeyGate(self.ctx, lambda key: key in self.keys)
        self.gate.start()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.curve_server = True
        self.sock.curve_publickey = self.public
        self.sock.curve_secretkey = self.secret
        self.sock.zap_domain = b"qrun"
        self.sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        self.sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.bound: dict[str, str] = {}
        self.problems: list[str] = []
        for addr in list(self.ports):
            try:
                self.endpoint(addr)
            except RendezvousError as exc:
                self.problems.append(str(exc))

    def _load(self) -> tuple[bytes, bytes, dict[str, int]]:
        try:
            with open(self.path) as f:
                d = json.load(f)
            ports = {str(a): int(p) for a, p in d["ports"].items()}
            return d["public"].encode(), d["secret"].encode(), ports
        except FileNotFoundError:
            public, secret = zmq.curve_keypair()
            return public, secret, {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RendezvousError(f"cannot read {self.path}: {exc}") from None

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"public": self.public.decode(), "secret": self.secret.decode(),
                       "ports": self.ports}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def endpoint(self, addr: str) -> str:
        """Where stubs reach the daemon at `addr`: bound now if it is not yet, at the port
        it had before (a new one the first time, kept from then on)."""
        if addr in self.bound:
            return self.bound[addr]
        host = f"[{addr}]" if ":" in addr else addr
        port = self.ports.get(addr, 0)
        try:
            self.sock.bind(f"tcp://{host}:{port or '*'}")
        except zmq.ZMQError as exc:
            raise RendezvousError(f"cannot listen for Slurm's stubs on {host}:{port or 'any port'}: "
                                  f"{exc}") from None
        endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if not port:
            self.ports[addr] = int(endpoint.rsplit(":", 1)[1])
            try:
                self._save()
            except OSError as exc:
                raise RendezvousError(f"cannot write {self.path}: {exc.strerror}") from None
        self.bound[addr] = endpoint
        return endpoint

    def messages(self) -> Iterator[tuple[bytes, bytes, dict[str, Any]]]:
        """Each waiting message: (its connection, the key it came with, the message)."""
        while self.sock.poll(0):
            frames = self.sock.recv_multipart(copy=False)
            if len(frames) != 2:
                continue
            key = str(frames[1].get("User-Id") or "")
            try:
                msg = wire.decode(frames[1].bytes)
            except ValueError:
                continue
            yield frames[0].bytes, key.encode(), msg

    def reply(self, ident: bytes, kind: str, **fields: Any) -> None:
        try:
            self.sock.send_multipart([ident, wire.encode(kind, **fields)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass   # (gone, or not keeping up: it asks again)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.gate.stop()
        self.ctx.destroy(linger=0)
