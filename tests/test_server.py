"""The home server on its own: authentication, validation, and exactly-once execution."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from qrun.homenode.server import HomeServer, JobFailed, Keys
from qrun.syscalls import wire

WELCOME: dict[str, Any] = {"argv": ["true"], "env": {}, "cwd": "/", "umask": 0o022,
                           "identity": {}, "policy": {"local": [], "home": []},
                           "options": {"timeout": 5}}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HomeServer]:
    srv = HomeServer("job1", WELCOME, f"ipc://{tmp_path}/s.sock")
    yield srv
    srv.close()


def client(srv: HomeServer, keys: Keys | None = None, role: str = "rpc") -> zmq.Socket:
    k = keys or srv.keys
    s = srv.ctx.socket(zmq.DEALER)
    s.curve_serverkey = srv.keys.server_public
    s.curve_publickey = k.client_public
    s.curve_secretkey = k.client_secret
    s.setsockopt(zmq.ROUTING_ID, f"job1:{role}".encode())
    s.setsockopt(zmq.LINGER, 0)
    s.connect(srv.endpoint)
    return s


def exchange(srv: HomeServer, sock: zmq.Socket, frame: bytes, wait: float = 2.0) -> dict[str, Any] | None:
    sock.send(frame)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if srv.sock.poll(20):
            srv.receive(time.monotonic())
        if sock.poll(10):
            return wire.decode(sock.recv())
    return None


def req(seq: int, op: str, args: list[Any]) -> bytes:
    return wire.encode("req", seq=seq, tid=1, op=op, a=args, umask=0o022)


def test_handshake_checks_the_table_digest(server: HomeServer) -> None:
    c = client(server)
    bad = wire.encode("hello", job="job1", arch="x86_64", digest="0" * 16, version=1, host="h", pid=1)
    with pytest.raises(JobFailed) as failed:
        exchange(server, c, bad)
    assert failed.value.code == 123 and "another qrun version" in str(failed.value)
    rep = wire.decode(c.recv()) if c.poll(2000) else None
    assert rep is not None and rep["t"] == "error" and "another qrun version" in rep["msg"]
    good = wire.encode("hello", job="job1", arch="x86_64", digest=wire.table_digest(),
                       version=wire.PROTOCOL_VERSION, host="h", pid=1)
    rep = exchange(server, c, good)
    assert rep is not None and rep["t"] == "welcome" and rep["argv"] == ["true"]


def test_a_resent_request_is_answered_from_the_cache_not_run_twice(server: HomeServer, tmp_path: Path) -> None:
    c = client(server)
    target = os.fsencode(tmp_path / "made")
    first = exchange(server, c, req(1, "mkdir", [target, 0o755]))
    again = exchange(server, c, req(1, "mkdir", [target, 0o755]))
    assert first is not None and again is not None
    assert first["r"] == 0 and first["e"] is None
    assert again == first  # run twice, it would have failed with EEXIST
    third = exchange(server, c, req(2, "mkdir", [target, 0o755]))
    assert third is not None and third["e"] == "EEXIST"


def test_malformed_requests_get_errors_and_the_server_keeps_serving(server: HomeServer, tmp_path: Path) -> None:
    c = client(server)
    rep = exchange(server, c, b"\x00garbage")
    assert rep is not None and rep["t"] == "error" and "protocol error" in rep["msg"]
    for seq, (op, args) in enumerate([("execve", [b"/bin/sh", 0, 0]),         # not forwardable
                                      ("mkdir", [b"relative", 0o755]),        # relative, no handle
                                      ("read", [999, 10, 10]),                # unknown handle
                                      ("mkdir", ["not bytes", 0o755]),        # wrong type
                                      ("mkdir", [b"/x"]),                     # wrong arity
                                      ("open", [None, b"/a\0b", 0, 0, False, None])], start=1):
        rep = exchange(server, c, req(seq, op, args))
        assert rep is not None and rep["t"] == "rep" and rep["r"] == -1, op
        assert rep["e"] in ("EINVAL", "EBADF"), (op, rep)
    rep = exchange(server, c, req(99, "newfstatat", [None, os.fsencode(tmp_path), None, 0]))
    assert rep is not None and rep["r"] == 0 and len(rep["o"]["2"]) == 16


def test_a_client_with_another_key_is_not_served(server: HomeServer) -> None:
    intruder = client(server, Keys.fresh())
    assert exchange(server, intruder, req(1, "mkdir", [b"/tmp/qrun-intruder", 0o755]), wait=1.0) is None
    assert not os.path.exists("/tmp/qrun-intruder")


def test_open_gives_copies_for_reading_and_placeholders_otherwise(server: HomeServer, tmp_path: Path) -> None:
    c = client(server)
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    rep = exchange(server, c, req(1, "open", [None, os.fsencode(f), os.O_RDONLY, 0, False, None]))
    assert rep is not None and rep["o"]["kind"] == "copy" and rep["o"]["data"] == b"hello"
    rep = exchange(server, c, req(2, "open", [None, os.fsencode(f), os.O_WRONLY | os.O_APPEND, 0, False, None]))
    assert rep is not None and rep["o"]["kind"] == "placeholder"
    h = rep["o"]["handle"]
    rep = exchange(server, c, req(3, "write", [h, b" world", 6]))
    assert rep is not None and rep["r"] == 6
    assert f.read_bytes() == b"hello world"
    rep = exchange(server, c, req(4, "open", [None, os.fsencode(f), os.O_RDONLY, 0, True, None]))
    assert rep is not None and rep["e"] == "EACCES"  # not executable
