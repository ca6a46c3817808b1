"""The home server on its own: authentication, validation, and exactly-once execution."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.utils.z85
from qrun.homenode import servestate
from qrun.homenode.jobstore import serving_dir
from qrun.homenode.server import HomeServer, JobFailed, Keys
from qrun.remote.channel import Rpc
from qrun.syscalls import structs, wire

WELCOME: dict[str, Any] = {"argv": ["true"], "env": {}, "cwd": "/", "umask": 0o022,
                           "identity": {}, "policy": {"local": [], "home": []},
                           "options": {"timeout": 5}}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HomeServer]:
    srv = HomeServer("job1", WELCOME, "tcp://127.0.0.1:0")  # CURVE, as over a network
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


def exchange(srv: HomeServer, sock: zmq.Socket, frame: bytes | list[bytes],
             wait: float = 2.0) -> dict[str, Any] | None:
    sock.send_multipart([frame] if isinstance(frame, bytes) else frame)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if srv.sock.poll(20):
            srv.receive(time.monotonic())
        if sock.poll(10):
            head, *data = sock.recv_multipart(copy=False)
            msg = wire.decode_frames(head.bytes, [f.buffer for f in data])
            if msg["t"] != "drop":  # (home's drops for the stub's cache come unasked)
                return msg
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


def test_a_fetch_sends_its_data_as_a_frame_of_its_own_and_a_resend_sends_it_again(server: HomeServer,
                                                                                   tmp_path: Path) -> None:
    c = client(server)
    f = tmp_path / "big"
    body = os.urandom(3 << 20)  # (over the size sent whole in the open's reply)
    f.write_bytes(body)
    rep = exchange(server, c, req(1, "open", [None, os.fsencode(f), os.O_RDONLY, 0, False, None, None]))
    assert rep is not None and rep["o"]["kind"] == "copy" and "data" not in rep["o"]
    h = rep["o"]["handle"]
    c.send(req(2, "fetch", [h, 1 << 20, 1 << 20]))
    while not c.poll(20):
        server.receive(time.monotonic())
    frames = c.recv_multipart()
    assert len(frames) == 2 and frames[1] == body[1 << 20:2 << 20]
    assert "data" not in wire.decode(frames[0])["o"]
    again = exchange(server, c, req(2, "fetch", [h, 1 << 20, 1 << 20]))
    assert again is not None and bytes(again["o"]["data"]) == frames[1] and again["r"] == 1 << 20


def test_a_resend_is_answered_from_the_cache_while_its_reply_is_in_the_window(server: HomeServer,
                                                                              tmp_path: Path) -> None:
    c = client(server)
    made = [os.fsencode(tmp_path / f"d{i}") for i in range(wire.REPLY_WINDOW + 1)]
    first = exchange(server, c, req(1, "mkdir", [made[0], 0o755]))
    for seq in range(2, wire.REPLY_WINDOW + 1):
        assert (rep := exchange(server, c, req(seq, "mkdir", [made[seq - 1], 0o755]))) and rep["r"] == 0
    again = exchange(server, c, req(1, "mkdir", [made[0], 0o755]))
    assert first is not None and first["r"] == 0 and again == first  # (run twice: EEXIST)
    last = wire.REPLY_WINDOW + 1
    assert (rep := exchange(server, c, req(last, "mkdir", [made[-1], 0o755]))) and rep["r"] == 0
    late = exchange(server, c, req(1, "mkdir", [made[0], 0o755]))  # out of the window now
    assert late is not None and late["e"] == "EINVAL" and late["o"]["why"] == "request out of sequence"


def test_a_request_ahead_of_a_lost_one_waits_for_the_resend_of_both(server: HomeServer, tmp_path: Path) -> None:
    c = client(server)
    a, b = os.fsencode(tmp_path / "a"), os.fsencode(tmp_path / "b")
    assert exchange(server, c, req(2, "mkdir", [b, 0o755]), wait=0.5) is None  # (1 was lost)
    assert not os.path.exists(b)
    first = exchange(server, c, req(1, "mkdir", [a, 0o755]))
    second = exchange(server, c, req(2, "mkdir", [b, 0o755]))
    assert first is not None and first["r"] == 0 and second is not None and second["r"] == 0
    far = exchange(server, c, req(3 + wire.REPLY_WINDOW, "mkdir", [a, 0o755]))
    assert far is not None and far["o"]["why"] == "request out of sequence"


def test_a_pipelined_run_of_fetches_brings_the_whole_file_in_order(server: HomeServer, tmp_path: Path) -> None:
    f = tmp_path / "big"
    body = os.urandom((5 << 20) + 123)
    f.write_bytes(body)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            if server.sock.poll(20):
                server.receive(time.monotonic())

    pump = threading.Thread(target=serve)
    pump.start()
    try:
        rpc = Rpc(client(server), timeout=10)
        rep = rpc.call("open", [None, os.fsencode(f), os.O_RDONLY, 0, False, None, None])
        h = rep["o"]["handle"]
        asks = [[h, at, 1 << 20] for at in range(0, len(body) + (1 << 20), 1 << 20)]
        reps = list(rpc.pipeline("fetch", asks, tid=1))
        assert [r["seq"] for r in reps] == list(range(2, 2 + len(asks)))
        assert b"".join(bytes(r["o"]["data"]) for r in reps) == body
        assert reps[-1]["r"] == 0  # (asked past the end)
        # a consumer that stops early leaves replies in flight; the next call gets its own
        for _ in rpc.pipeline("fetch", asks, tid=1):
            break
        rep = rpc.call("fetch", [h, 0, 10], tid=1)
        assert bytes(rep["o"]["data"]) == body[:10] and rep["seq"] == rpc.seq
    finally:
        done.set()
        pump.join()


def wb(seq: int, args: list[Any], pieces: list[bytes]) -> list[bytes]:
    """A write-back request as the stub sends it: its data in frames after the map."""
    return wire.encode_frames("req", pieces, seq=seq, tid=1, op="writeback", a=args,  # type: ignore[return-value]
                              umask=0o022)


def test_only_a_reply_or_a_write_back_may_carry_data_frames() -> None:
    x = memoryview(b"x")
    with pytest.raises(wire.ProtocolError, match="'drop' message with 1 data frames"):
        wire.decode_frames(wire.encode("drop", c=[], all=True, n=1), [x])
    with pytest.raises(wire.ProtocolError, match="'req' message with 1 data frames"):
        wire.decode_frames(req(1, "fetch", [1, 0, 1]), [x])
    with pytest.raises(wire.ProtocolError, match="'rep' message with 2 data frames"):
        wire.decode_frames(wire.encode("rep", seq=1, r=1, e=None, o={}), [x, x])
    rep = wire.decode_frames(wire.encode("rep", seq=1, r=1, e=None, o={}), [x])
    assert bytes(rep["o"]["data"]) == b"x"
    head, *data = wb(1, [1, 0, None], [b"xy", b"z"])
    msg = wire.decode_frames(head, [memoryview(d) for d in data])
    assert msg["a"][:3] == [1, 0, None] and [bytes(p) for p in msg["a"][3]] == [b"xy", b"z"]
    assert wire.decode_frames(wb(1, [1, 0, 5], [])[0])["a"] == [1, 0, 5, []]  # (a size alone)
    with pytest.raises(wire.ProtocolError, match="257 data frames"):
        wire.decode_frames(head, [x] * (wire.MAX_DATA_FRAMES + 1))


def test_a_write_back_in_data_frames_is_written_in_order_and_too_many_frames_are_refused(
        server: HomeServer, tmp_path: Path) -> None:
    c = client(server)
    f = tmp_path / "w"
    f.write_bytes(b"hello")
    rep = exchange(server, c, req(1, "open", [None, os.fsencode(f), os.O_RDWR, 0, False, None, None]))
    assert rep is not None and rep["o"]["writable"]
    h = rep["o"]["handle"]
    rep = exchange(server, c, wb(2, [h, 5, 12], [b" wo", b"", b"rld", b"!"]))
    assert rep is not None and rep["e"] is None and rep["r"] == 7 and f.read_bytes() == b"hello world!"
    # data in the map is not a write-back's form; too many frames is not a message of ours
    rep = exchange(server, c, req(3, "writeback", [h, 0, None, b"J"]))
    assert rep is not None and rep["e"] == "EINVAL"
    rep = exchange(server, c, wb(4, [h, 0, None], [b"J"] * (wire.MAX_DATA_FRAMES + 1)))
    assert rep is not None and rep["t"] == "error" and "data frames" in rep["msg"]
    rep = exchange(server, c, req(4, "fetch", [h, 0, 5]))
    assert rep is not None and rep["seq"] == 4 and bytes(rep["o"]["data"]) == b"hello"
    assert f.read_bytes() == b"hello world!"


def test_malformed_requests_get_errors_and_the_server_keeps_serving(server: HomeServer, tmp_path: Path) -> None:
    c = client(server)
    rep = exchange(server, c, b"\x00garbage")
    assert rep is not None and rep["t"] == "error" and "protocol error" in rep["msg"]
    cases: list[tuple[str, list[Any]]] = [("execve", [b"/bin/sh", 0, 0]),         # not forwardable
                                      ("mkdir", [b"relative", 0o755]),        # relative, no handle
                                      ("fchmod", [999, 0o644]),               # unknown handle
                                      ("mkdir", ["not bytes", 0o755]),        # wrong type
                                      ("mkdir", [b"/x"]),                     # wrong arity
                                      ("open", [None, b"/a\0b", 0, 0, False, None, None])]
    for seq, (op, args) in enumerate(cases, start=1):
        rep = exchange(server, c, req(seq, op, args))
        assert rep is not None and rep["t"] == "rep" and rep["r"] == -1, op
        assert rep["e"] in ("EINVAL", "EBADF"), (op, rep)
    rep = exchange(server, c, req(7, "newfstatat", [None, os.fsencode(tmp_path), None, 0]))
    assert rep is not None and rep["r"] == 0 and len(rep["o"]["2"]) == 16


def test_a_client_with_another_key_is_not_served(server: HomeServer) -> None:
    intruder = client(server, Keys.fresh())
    assert exchange(server, intruder, req(1, "mkdir", [b"/tmp/qrun-intruder", 0o755]), wait=1.0) is None
    assert not os.path.exists("/tmp/qrun-intruder")


def test_open_gives_local_copies_of_regular_files_and_takes_their_writes_back(server: HomeServer,
                                                                               tmp_path: Path) -> None:
    c = client(server)
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    rep = exchange(server, c, req(1, "open", [None, os.fsencode(f), os.O_RDONLY, 0, False, None, None]))
    assert rep is not None and rep["o"]["kind"] == "copy" and rep["o"]["data"] == b"hello"
    assert "writable" not in rep["o"]
    rep = exchange(server, c, req(2, "open", [None, os.fsencode(f), os.O_RDWR, 0, False, None, None]))
    assert rep is not None and rep["o"]["kind"] == "copy" and rep["o"]["data"] == b"hello"
    assert rep["o"]["writable"] and rep["o"]["readable"]
    # `>> f`: write-only append; opened readable at home, but nothing is fetched
    rep = exchange(server, c, req(3, "open", [None, os.fsencode(f), os.O_WRONLY | os.O_APPEND, 0, False, None,
                                              None]))
    assert rep is not None and rep["o"]["kind"] == "copy" and rep["o"]["unfetched"] and "data" not in rep["o"]
    h = rep["o"]["handle"]
    # write-back at an offset although the job's open appends (home's fd does not)
    rep = exchange(server, c, wb(4, [h, 5, None], [b" world"]))
    assert rep is not None and rep["r"] == 6 and rep["o"]["stat"][structs.STAT_FIELDS.index("size")] == 11
    rep = exchange(server, c, wb(5, [h, 0, 9], [b"J"]))
    assert rep is not None and rep["e"] is None
    assert f.read_bytes() == b"Jello wor"
    rep = exchange(server, c, req(6, "writeback", [h, 0, None, "not bytes"]))
    assert rep is not None and rep["e"] == "EINVAL"
    rep = exchange(server, c, req(7, "open", [None, os.fsencode(f), os.O_RDONLY, 0, True, None, None]))
    assert rep is not None and rep["e"] == "EACCES"  # not executable
    d = tmp_path / "d"
    d.mkdir()
    rep = exchange(server, c, req(8, "open", [None, os.fsencode(d), os.O_RDONLY | os.O_DIRECTORY, 0, False, None,
                                              None]))
    assert rep is not None and rep["o"]["kind"] == "placeholder"


def test_hostile_requests_are_refused_one_by_one(server: HomeServer, tmp_path: Path) -> None:
    """Each of these once raised out of the server (and took the job with it)."""
    c = client(server)
    canary = os.fsencode(tmp_path / "canary")
    cases: list[tuple[str, list[Any]]] = [
        ("open", [None, canary]),                                        # arity
        ("fetch", [1]), ("fcntl", []), ("deputy", []), ("deputy", ["a", "b"]),
        ("open", [None, canary, os.O_CREAT | os.O_WRONLY, "abc", False, None, None]),  # str mode
        ("fcntl", [1, "3", 0]),
        ("open", [None, canary, 2**40, 0o644, False, None, None]),       # flags too large
        ("open", [None, canary, -2**63, 0o644, False, None, None]),
        ("kill", [2**40, 9]), ("kill", [0, 9]), ("kill", [-1, 9]),
        ("mkdir", [{"a": 1}, 0o755]), ("mkdir", [canary, {"mode": 1}]),  # a dict for a value
        ("mkdir", [[2**64 - 1], 0o755]), ("mkdir", [[None], 0o755]),         # bad fd paths
        ("fsetxattr", [1, b"user.x", b"x", 2**64 - 1, 0]), ("fchmod", [-5, 0o644]),
        ("open", [None, canary, 0, 0, "yes", None, None]),
    ]
    for seq, (op, args) in enumerate(cases, start=1):
        rep = exchange(server, c, req(seq, op, args))
        assert rep is not None and rep["t"] == "rep" and rep["r"] == -1, (op, args, rep)
        assert rep["e"] in ("EINVAL", "EBADF"), (op, args, rep)
    assert not os.path.exists(canary)
    # A sequence number far ahead is refused, and does not make home ignore what follows.
    rep = exchange(server, c, req(2**64 - 1, "mkdir", [canary, 0o755]))
    assert rep is not None and rep["e"] == "EINVAL" and not os.path.exists(canary)
    rep = exchange(server, c, req(len(cases) + 1, "mkdir", [canary, 0o755]))
    assert rep is not None and rep["r"] == 0 and os.path.isdir(canary)


def test_a_malformed_exit_report_is_a_failed_job_not_a_crash(server: HomeServer) -> None:
    from qrun.homenode.server import exit_status
    assert exit_status({"code": "7"})["error_kind"] == "launch"
    assert exit_status({"signal": 2**40})["code"] == 1
    assert exit_status({"code": 7}) == {"code": 7}
    assert exit_status({"signal": 9, "core": 0}) == {"signal": 9, "core": False}


def test_seeded_fuzz_never_crashes_the_server(server: HomeServer, tmp_path: Path,
                                              request: pytest.FixtureRequest) -> None:
    """Random operations with random, mostly wrong arguments: every request gets exactly one
    reply and the server keeps serving. Paths stay inside tmp_path; kill is left out (a
    random pid is somebody's process)."""
    import random

    from qrun.homenode import schema
    from qrun.homenode.executor import FORWARDABLE
    rounds = int(request.config.getoption("--fuzz-rounds"))
    rng = random.Random(1234)
    base = os.fsencode(tmp_path)
    ints = [0, 1, 2, 3, -1, 7, 0o755, 2**31, -2**31 - 1, 2**40, 2**63, -2**63, 2**64 - 1]
    values: list[Any] = [None, True, False, 1.5, "text", b"", b"\0", {"k": 1}, [], [None], [1],
                         [2**64 - 1], [1, 2], b"x" * 100]

    def value() -> Any:
        pick = rng.random()
        if pick < 0.35:
            return rng.choice(ints)
        if pick < 0.6:
            return base + b"/" + rng.choice([b"a", b"b", b"d/e", b"..", b"", b"a/"])
        return rng.choice(values)

    ops = sorted(FORWARDABLE) + sorted(op for op in schema.OPS if op != "kill")
    c = client(server)
    for seq in range(1, rounds + 1):
        op = rng.choice(ops)
        args = [value() for _ in range(rng.randint(0, 8))]
        rep = exchange(server, c, req(seq, op, args))
        assert rep is not None and rep["t"] == "rep" and rep["seq"] == seq, (op, args, rep)
    rep = exchange(server, c, req(rounds + 1, "newfstatat", [None, base, None, 0]))
    assert rep is not None and rep["r"] == 0


def test_seeded_decoder_fuzz_raises_only_protocol_errors(request: pytest.FixtureRequest) -> None:
    """Random bytes and mutated real messages: decode returns a checked message or raises
    ProtocolError, nothing else."""
    import random
    rng = random.Random(99)
    seeds = [wire.encode("req", seq=1, tid=1, op="open", a=[None, b"/x", 0, 0, False, None, None], umask=18),
             wire.encode("exit", status={"code": 0}, usage={}, host="h"),
             wire.encode("out", fd=1, d=b"data"), wire.encode("hello", job="j", arch="x86_64", digest="d",
                                                             version=1, host="h", pid=1)]
    rounds = int(request.config.getoption("--fuzz-rounds"))
    decoded = 0
    for _ in range(rounds):
        if rng.random() < 0.3:
            data = rng.randbytes(rng.randint(0, 64))
        else:
            mutable = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            data = bytes(mutable)
        try:
            msg = wire.decode(data)
        except wire.ProtocolError:
            continue
        decoded += 1
        assert isinstance(msg, dict) and isinstance(msg["t"], str)
    assert decoded > 0, "no mutation survived decoding: the fuzz explored nothing"


def test_the_key_gate_admits_only_the_jobs_key_over_curve(server: HomeServer) -> None:
    gate = server.auth
    own = zmq.utils.z85.decode(server.keys.client_public)
    other = zmq.utils.z85.decode(Keys.fresh().client_public)

    def status(*frames: bytes) -> bytes:
        return gate.answer(list(frames))[2]

    base = (b"1.0", b"id", b"", b"127.0.0.1", b"job1:rpc")
    assert status(*base, b"CURVE", own) == b"200"
    assert status(*base, b"CURVE", other) == b"400"
    assert status(*base, b"NULL") == b"400"
    assert status(*base, b"PLAIN", b"user", b"pass") == b"400"
    assert status(*base, b"CURVE", own, own) == b"400"
    assert status(b"2.0", *base[1:], b"CURVE", own) == b"400"
    assert gate.answer([b"1.0"]) == [b"1.0", b"", b"400", b"malformed request", b"", b""]


def test_only_a_private_unix_socket_goes_without_the_cipher(tmp_path: Path) -> None:
    """On a Unix socket in a directory only we may enter, the kernel admits nobody else,
    so the channel is plain (CURVE would cost most of a local data path); anywhere else,
    including a Unix socket others could reach, it is CURVE."""
    private, shared = tmp_path / "private", tmp_path / "shared"
    private.mkdir(mode=0o700)
    shared.mkdir()
    shared.chmod(0o755)
    plain = HomeServer("job1", WELCOME, f"ipc://{private}/s.sock")
    open_dir = HomeServer("job1", WELCOME, f"ipc://{shared}/s.sock")
    tcp = HomeServer("job1", WELCOME, "tcp://127.0.0.1:0")
    try:
        assert (plain.encrypted, open_dir.encrypted, tcp.encrypted) == (False, True, True)
        assert b'"encrypted": false' in plain.bootstrap_line()
        s = plain.ctx.socket(zmq.DEALER)   # no keys at all: the directory is the gate
        s.setsockopt(zmq.ROUTING_ID, b"job1:rpc")
        s.setsockopt(zmq.LINGER, 0)
        s.connect(plain.endpoint)
        rep = exchange(plain, s, req(1, "mkdir", [os.fsencode(tmp_path / "made"), 0o755]))
        assert rep is not None and rep["r"] == 0 and (tmp_path / "made").is_dir()
        s.close()
    finally:
        for srv in (plain, open_dir, tcp):
            srv.close()


def test_without_its_key_gate_the_server_admits_no_one(server: HomeServer, tmp_path: Path) -> None:
    """libzmq lets any CURVE client in when no ZAP handler answers, unless the socket
    enforces its ZAP domain: the server's does."""
    server.auth.stop()
    intruder = client(server, Keys.fresh())
    target = tmp_path / "intruder"
    assert exchange(server, intruder, req(1, "mkdir", [os.fsencode(target), 0o755]), wait=1.0) is None
    assert not target.exists()


def test_answers_about_a_held_file_are_dropped_when_it_changes_and_forgotten_when_it_closes(
        server: HomeServer, tmp_path: Path) -> None:
    """fstat of a file the job holds (newfstatat(handle, "", AT_EMPTY_PATH)) is kept,
    watching that inode; once the handle is closed, no change of the file concerns it."""
    def dropped() -> set[int]:
        time.sleep(0.05)  # (inotify's events are queued by now)
        return {n for d in server.answers.changed() for n in wire.decode(d)["c"]}
    c = client(server)
    f = tmp_path / "held"
    f.write_bytes(b"x")
    rep = exchange(server, c, req(1, "open", [None, os.fsencode(f), os.O_RDONLY, 0, False, None, None]))
    assert rep is not None and rep["o"]["kind"] == "copy"
    h = rep["o"]["handle"]
    empty_path = 0x1000  # AT_EMPTY_PATH
    rep = exchange(server, c, req(2, "newfstatat", [h, b"", None, empty_path]))
    assert rep is not None and rep["e"] is None and rep["o"].get("c") == 2
    assert rep["o"]["2"][structs.STAT_FIELDS.index("size")] == 1
    os.chmod(f, 0o600)
    assert 2 in dropped()
    rep = exchange(server, c, req(3, "newfstatat", [h, b"", None, empty_path]))
    assert rep is not None and rep["o"].get("c") == 3 and h in server.handle_answers
    closing = wire.encode("req", seq=4, tid=1, op="newfstatat", a=[None, os.fsencode(tmp_path), None, 0],
                          umask=0o022, close=[h])
    rep = exchange(server, c, closing)
    assert rep is not None and rep["e"] is None and h not in server.handle_answers
    os.chmod(f, 0o644)
    assert 3 not in dropped()


def _hello(srv: HomeServer, c: zmq.Socket) -> None:
    rep = exchange(srv, c, wire.encode("hello", job="job1", arch="x86_64", digest=wire.table_digest(),
                                       version=wire.PROTOCOL_VERSION, host="h", pid=1))
    assert rep is not None and rep["t"] == "welcome"


def _killed(srv: HomeServer) -> servestate.Taken:
    """What `srv` leaves when it is killed: its state stays, its socket goes."""
    assert srv.serve_state is not None
    srv.serve_state.close(remove=False)
    srv.serve_state = None
    srv.close()
    taken = servestate.take(serving_dir(Path(srv.succession["records"]), 1))
    assert taken is not None
    return taken


def _succession(records: Path) -> dict[str, Any]:
    return {"records": str(records), "describe": "h", "kind": "local", "launcher": [1, ""], "cleanup": [],
            "verbose": False, "argv0": "true"}


def _successor(taken: servestate.Taken, directory: Path) -> HomeServer:
    k = taken.server["keys"]
    keys = Keys(k["server_public"].encode(), k["server_secret"].encode(), k["client_public"].encode(), b"")
    srv = HomeServer("job1", taken.server["welcome"], taken.server["endpoint"], keys=keys,
                     serve_state=servestate.ServeState(directory), succession=_succession(directory.parent.parent))
    srv.take_over(taken)
    return srv


def test_a_successor_answers_its_predecessors_last_calls_and_never_runs_them_again(tmp_path: Path) -> None:
    """A server killed after calls ran: its successor answers the stub's resends of the
    window's journaled calls from the journal, runs an unjournaled one (a stat) again, and
    numbering goes on. One killed while a call ran: the resend fails with EIO (it may have
    taken effect). Older requests are refused, and the stub is told to forget every kept
    answer before anything else."""
    records = tmp_path / "records"
    directory = serving_dir(records, 1)
    srv = HomeServer("job1", WELCOME, "tcp://127.0.0.1:0", serve_state=servestate.ServeState(directory),
                     succession=_succession(records))
    keys = srv.keys
    c = client(srv)
    _hello(srv, c)
    made, other = os.fsencode(tmp_path / "made"), os.fsencode(tmp_path / "other")
    assert exchange(srv, c, req(1, "mkdir", [made, 0o755]))["r"] == 0  # type: ignore[index]
    assert exchange(srv, c, req(2, "mkdir", [other, 0o755]))["r"] == 0  # type: ignore[index]
    assert exchange(srv, c, req(3, "newfstatat", [None, made, None, 0]))["r"] == 0  # type: ignore[index]
    c.close()
    srv = _successor(_killed(srv), directory)
    c = client(srv, keys)
    c.send(req(1, "mkdir", [made, 0o755]))
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        if srv.sock.poll(20):
            srv.receive(time.monotonic())
        if c.poll(10):
            got.append(wire.decode(c.recv()))
    assert len(got) == 2, got
    drop, first = got
    assert drop["t"] == "drop" and drop["all"] and drop["n"] > 1 << 40
    assert (first["t"], first["r"], first["e"]) == ("rep", 0, None)   # (run twice: EEXIST)
    second = exchange(srv, c, req(2, "mkdir", [other, 0o755]))
    assert second is not None and (second["r"], second["e"]) == (0, None)
    looked = exchange(srv, c, req(3, "newfstatat", [None, made, None, 0]))
    assert looked is not None and looked["r"] == 0   # (a stat: it may run again)
    assert exchange(srv, c, req(4, "rmdir", [other]))["r"] == 0  # type: ignore[index]
    srv.serve_state.began(5)  # type: ignore[union-attr]  # (killed while call 5 ran)
    srv.serve_state.running(5)  # type: ignore[union-attr]
    c.close()
    srv = _successor(_killed(srv), directory)
    c = client(srv, keys)
    stale = exchange(srv, c, req(1, "mkdir", [made, 0o755]))
    assert stale is not None and stale["e"] == "EINVAL" and "sequence" in stale["o"]["why"]
    unknown = exchange(srv, c, req(5, "rmdir", [made]))
    assert unknown is not None and unknown["e"] == "EIO" and os.path.isdir(made)
    gone = exchange(srv, c, req(6, "rmdir", [made]))
    assert gone is not None and gone["r"] == 0 and not os.path.exists(made)
    srv.close()
    assert not directory.exists()   # (served to the end: nothing is left for a successor)


def test_the_serve_state_keeps_open_handles_positions_and_locks(tmp_path: Path) -> None:
    state = servestate.ServeState(tmp_path / "s")
    state.start({"job": "j", "endpoint": "ipc:///x", "welcome": WELCOME, "hello": {}, "roots": [], "timeout": 5,
                 "keys": {}, **_succession(tmp_path)})
    files = [os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)]
    for name in ("a", "b"):
        (tmp_path / name).write_text(name)
        files.append(os.open(tmp_path / name, os.O_RDWR))
    for h, fd in enumerate(files, 1):
        state.opened(h, fd, os.fsencode(f"/proc/self/fd/{fd}") if h == 1 else os.fsencode(tmp_path / "ab"[h - 2]))
    state.positioned(1, 7)
    state.closed(2)
    whole = structs.layout(servestate.ARCH, "flock").pack(type=1, whence=0, start=0, len=0, pid=0)
    part = structs.layout(servestate.ARCH, "flock").pack(type=1, whence=0, start=5, len=1, pid=0)
    state.locked(3, ["flock", 2])
    state.locked(3, ["fcntl", 37, part])
    unlock = structs.layout(servestate.ARCH, "flock").pack(type=2, whence=0, start=0, len=0, pid=0)
    state.locked(3, ["fcntl", 37, whole])
    state.locked(3, ["fcntl", 37, unlock])   # (unlocks the whole file: what came before goes)
    state.locked(3, ["fcntl", 37, part])
    state.written(12)
    state.close(remove=False)
    taken = servestate.take(tmp_path / "s")
    assert taken is not None
    assert sorted(taken.handles) == [1, 3] and taken.next_handle == 4
    assert taken.handles[1].pos == 7
    assert taken.handles[3].locks == [["flock", 2], ["fcntl", 37, part]]
    assert taken.out_seen == 12
    out = tmp_path / "out"
    out.write_bytes(b"x" * 10)
    with open(out, "ab") as f:
        state = servestate.ServeState(tmp_path / "s")
        state.start({"job": "j"}, taken)
        state.writing(12, f.fileno(), 10, 5)   # (chunk 13: was it written before the kill?)
        assert servestate._out_seen((tmp_path / "s" / "streams").read_bytes()) == 12
        f.write(b"y" * 5)
        f.flush()
        assert servestate._out_seen((tmp_path / "s" / "streams").read_bytes()) == 13
        state.close(remove=False)
    for fd in files:
        os.close(fd)
