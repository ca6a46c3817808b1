"""The wire protocol between stub and home node: msgpack maps, never pickle.

Every message is a map with a string "t" (its type). `decode` checks the type and the
fields each type requires, so a malformed or hostile message raises ProtocolError
instead of reaching any handler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import xxhash
from qrun.syscalls.table import TABLE

# 2: write-back data travels in frames after the map (REQUEST_DATA_OPS)
PROTOCOL_VERSION = 4
MAX_MESSAGE = 64 << 20
MAX_REQUEST_FRAME = 16 << 20   # the largest frame home accepts (libzmq drops the connection)


# Transport liveness, the same on both ends: ZeroMQ heartbeats find a connection that went
# silent (half-open TCP, a dead NAT entry) within seconds, so the stub's reconnect can take
# over its routing id at home (ROUTER_HANDOVER) long before the job's --timeout.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000


def liveness_options() -> dict[str, int]:
    """zmq socket options (by name) for both ends of a job's connections."""
    return {"HEARTBEAT_IVL": HEARTBEAT_IVL_MS, "HEARTBEAT_TIMEOUT": HEARTBEAT_TIMEOUT_MS,
            "HEARTBEAT_TTL": 2 * HEARTBEAT_TIMEOUT_MS, "TCP_KEEPALIVE": 1,
            "TCP_KEEPALIVE_IDLE": 10, "TCP_KEEPALIVE_INTVL": 5, "TCP_KEEPALIVE_CNT": 3}


# How many requests the stub may have in flight (a pipelined fetch), and so how many
# replies home keeps to answer resends from.
REPLY_WINDOW = 4

# Bulk data travels in frames of its own after the message's map, never packed into it,
# so neither end copies it in Python (on this machine 1.06 GB/s against 0.26 GB/s packed
# into the map, for 8 MiB chunks over ipc). A fetch's reply carries its data ("o.data")
# as one frame, written into the local copy straight from ZeroMQ's buffer; a write-back
# request carries its last argument, the data, as one frame per block read, written at
# home with one pwritev (no end joins the blocks).
REPLY_DATA_OPS = frozenset({"fetch"})
REQUEST_DATA_OPS = frozenset({"writeback"})
MAX_DATA_FRAMES = 256
Frames = list[bytes | memoryview]   # one message as it is sent


class ProtocolError(ValueError):
    pass


# type -> {field: allowed python types}
_SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"job": (str,), "arch": (str,), "digest": (str,), "version": (int,),
              "host": (str,), "pid": (int,)},
    "welcome": {"argv": (list,), "env": (dict,), "cwd": (str,), "umask": (int,),
                "identity": (dict,), "policy": (dict,), "options": (dict,)},
    "req": {"seq": (int,), "tid": (int,), "op": (str,), "a": (list,), "umask": (int,)},
    "rep": {"seq": (int,), "r": (int,), "e": (str, type(None)), "o": (dict,)},
    # the job's output: chunk n (numbered from 1, kept by the stub until home's ack or pong
    # says "out": n or later, and sent again after a reconnect)
    "out": {"fd": (int,), "d": (bytes,), "n": (int,)},
    "ack": {"out": (int,)},
    "in": {"d": (bytes,)},
    "closed": {"fd": (int,)},   # home's stdout or stderr reader went away
    "state": {"stopped": (bool,)},  # the job's main process stopped, or went on
    "winch": {"rows": (int,), "cols": (int,)},  # home's terminal changed size (--pty)
    "sig": {"pid": (int,), "sig": (int,)},
    # home -> stub: kept answers (numbered by the request that got them) now stale; all: every
    # one; n: this drop's number (a gap means one was lost). Replies carry "dn", the drops so far.
    # After a takeover it may carry "lost": handles the new home server could not open again.
    "drop": {"c": (list,), "all": (bool,), "n": (int,)},
    # home -> stub: directory d's entries, [name, number, stat or None, link target or None]
    # each, the set of names numbered n (homenode/listings.py); numbered answers as above
    "list": {"d": (bytes,), "n": (int,), "e": (list,)},
    "ping": {},
    "pong": {"out": (int,)},
    "exit": {"status": (dict,), "usage": (dict,), "host": (str,)},
    "bye": {},
    "error": {"msg": (str,), "code": (int,)},
    # a stub Slurm started -> the daemon's rendezvous: which job (and array task) it is;
    # the reply: where the job's home server listens, or "later" while it is starting
    "claim": {"job": (int,), "task": (int, type(None)), "slurm": (str,)},
    "serve": {"endpoint": (str,), "server_key": (str,), "job": (str,)},
    "later": {},
    # host agents (qrun agent)
    "load?": {},
    "load": {"host": (str,), "load1": (float, int), "cpus": (int,), "mem_total": (int,),
             "mem_avail": (int,)},
}


# What a transparent job's exit report counts about its data path, in the order `qrun -v`
# prints it: requests sent home, calls answered from the metadata cache and from directory
# listings, opens answered by a kept handle, bytes fetched and written back, copies evicted.
DATA_PATH_COUNTS = ("calls", "cached", "listed", "reopened", "fetched", "written_back", "evicted")


def encode(kind: str, **fields: Any) -> bytes:
    fields["t"] = kind
    return msgpack.packb(fields, use_bin_type=True)


def encode_frames(kind: str, bulk: bytes | memoryview | Sequence[bytes | memoryview] | None,
                  **fields: Any) -> Frames:
    """A message's frames: its map, then its bulk data if it has any (REPLY_DATA_OPS,
    REQUEST_DATA_OPS), one frame per piece of a list."""
    head = encode(kind, **fields)
    if bulk is None:
        return [head]
    return [head, bulk] if isinstance(bulk, (bytes, memoryview)) else [head, *bulk]


def decode_frames(head: bytes, data: list[memoryview] | None = None) -> dict[str, Any]:
    """A message received as its map and the data frames after it (views of ZeroMQ's
    buffers: no copy). A reply's one data frame becomes "o.data"; the frames of a request
    of REQUEST_DATA_OPS become its last argument, a list (empty for no frame: its data
    never travels in the map)."""
    msg = decode(head)
    data = data or []
    if msg["t"] == "req" and msg["op"] in REQUEST_DATA_OPS and len(data) <= MAX_DATA_FRAMES:
        msg["a"].append(data)  # (no frame at all: no data)
    elif not data:
        return msg
    elif msg["t"] == "rep" and len(data) == 1:
        msg["o"]["data"] = data[0]
    else:
        raise ProtocolError(f"a {msg['t']!r} message with {len(data)} data frames")
    return msg


def decode(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("message too large")
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_MESSAGE)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(f"undecodable message: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("message is not a map")
    kind = msg.get("t")
    schema = _SCHEMA.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    for name, types in schema.items():
        if name not in msg:
            raise ProtocolError(f"{kind}: missing field {name!r}")
        if not isinstance(msg[name], types) or isinstance(msg[name], bool) and bool not in types:
            raise ProtocolError(f"{kind}: field {name!r} has the wrong type")
    return msg


def table_digest() -> str:
    """Fingerprint of everything both sides must agree on; compared at handshake."""
    # (xxh3, not a cryptographic hash: it only catches a mismatch, and OpenSSL's hashlib
    # costs both interpreters of every job a few ms to load)
    h = xxhash.xxh3_64(str(PROTOCOL_VERSION).encode())
    for s in TABLE:
        h.update(repr((s.name, s.x86_64, s.aarch64, s.args, s.route.value, s.handler,
                       s.answer, s.updates_copies, s.on_copy, s.cached)).encode())
    return h.hexdigest()
