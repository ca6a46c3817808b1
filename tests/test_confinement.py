"""What a stub holding the job's key can reach at home, and how a path's route is decided:
by where it really leads, however it is written."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hosts import HostCluster
from qrun.homenode.server import HomeServer
from qrun.syscalls import wire

WELCOME: dict[str, Any] = {"argv": ["true"], "env": {}, "cwd": "/", "umask": 0o022, "identity": {},
                           "policy": {"local": ["/proc", "/usr"], "home": []}, "options": {}}


class FakeStub:
    """Speaks the protocol with the job's own keys, as a compromised execution host could."""

    def __init__(self, srv: HomeServer) -> None:
        self.srv = srv
        self.seq = 0
        self.sock = srv.ctx.socket(zmq.DEALER)
        self.sock.curve_serverkey = srv.keys.server_public
        self.sock.curve_publickey = srv.keys.client_public
        self.sock.curve_secretkey = srv.keys.client_secret
        self.sock.setsockopt(zmq.ROUTING_ID, b"job1:rpc")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(srv.endpoint)

    def call(self, op: str, *args: Any) -> dict[str, Any]:
        self.seq += 1
        self.sock.send(wire.encode("req", seq=self.seq, tid=1, op=op, a=list(args), umask=0o022))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if self.srv.sock.poll(10):
                self.srv.receive(time.monotonic())
            if self.sock.poll(5):
                msg = wire.decode(self.sock.recv())
                if msg["t"] != "drop":  # (drops for a stub's cache come unasked)
                    return msg
        raise AssertionError(f"no reply to {op}")

    def open(self, path: bytes, flags: int = os.O_RDONLY, handle: int | None = None) -> dict[str, Any]:
        return self.call("open", handle, path, flags, 0o644, False, None, None)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "in").write_text("inside\n")
    (tmp_path / "canary").write_text("outside\n")
    os.chmod(tmp_path / "canary", 0o600)
    (root / "abs").symlink_to("/etc/passwd")
    (root / "rel").symlink_to("../canary")
    (root / "procself").symlink_to("/proc/self")
    return root


@pytest.fixture
def stub(tree: Path, tmp_path: Path) -> Iterator[FakeStub]:
    srv = HomeServer("job1", WELCOME, "tcp://127.0.0.1:0", roots=[str(tree)])
    try:
        yield FakeStub(srv)
    finally:
        srv.close()


def test_nothing_outside_the_home_roots_is_reachable(stub: FakeStub, tree: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    root = os.fsencode(tree)
    assert stub.open(root + b"/in")["r"] == 0  # beneath the root: served
    refused = [
        stub.open(b"/etc/passwd"),
        stub.open(root + b"/../canary"),
        stub.open(root + b"/abs"),                      # absolute symlink out
        stub.open(root + b"/rel"),                      # relative symlink out
        stub.open(root + b"/procself/status"),          # home's /proc: the server itself
        stub.open(b"/proc/self/environ"),
        stub.open(root + b"/../canary", os.O_WRONLY | os.O_TRUNC),
        stub.call("unlink", root + b"/../canary"),
        stub.call("rename", root + b"/in", root + b"/../moved"),
        stub.call("chmod", root + b"/rel", 0o777),
        stub.call("truncate", root + b"/rel", 0),
        stub.call("newfstatat", None, b"/etc/shadow", None, 0),
        stub.call("mkdir", root + b"/../made", 0o755),
        stub.call("symlink", b"/etc", root + b"/../ln"),
    ]
    for rep in refused:
        assert rep["r"] == -1 and rep["e"] == "EACCES", rep
    sub = stub.open(root + b"/sub", os.O_RDONLY | os.O_DIRECTORY)["o"]["handle"]
    rep = stub.open(b"../../canary", os.O_RDONLY, handle=sub)   # relative to a handle
    assert rep["e"] == "EACCES", rep
    assert stub.call("fchmod", 999, 0o644)["e"] == "EBADF"      # a handle this job never had
    assert stub.call("kill", os.getpid(), 0)["e"] == "EPERM"    # home processes outside the job
    assert canary.read_text() == "outside\n" and stat.S_IMODE(canary.stat().st_mode) == 0o600
    assert not (tmp_path / "moved").exists() and not (tmp_path / "made").exists()
    assert not (tmp_path / "ln").exists() and (tree / "in").exists()


def test_a_symlink_swapped_during_calls_never_leads_out(stub: FakeStub, tree: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    flip = tree / "flip"
    (tree / "target").write_text("inside\n")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            for target in ("target", "../canary"):
                tmp = tree / "flip.tmp"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(target)
                os.replace(tmp, flip)
    t = threading.Thread(target=swap, daemon=True)
    t.start()
    try:
        served = 0
        for _ in range(300):
            rep = stub.call("chmod", os.fsencode(flip), 0o666)
            served += rep["r"] == 0
            assert rep["r"] == 0 or rep["e"] in ("EACCES", "ENOENT"), rep
    finally:
        stop.set()
        t.join()
    assert stat.S_IMODE(canary.stat().st_mode) == 0o600, "a chmod reached the file outside"
    assert served > 0, "the swap never let a call through (the test proves nothing)"


# ---- a path's route does not depend on how it is written --------------------------------

def test_a_local_tree_is_local_however_it_is_reached(qrun_prefix: list[str], hosts: HostCluster,
                                                     tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "localdir").mkdir(parents=True)
    (work / "localdir" / "x").write_text("home-side\n")
    (work / "pself").symlink_to("/proc/self")
    hosts[0].run(["sh", "-c", f"mkdir -p {work}/localdir && echo host-side > {work}/localdir/x"])
    try:
        check_local_routes(qrun_prefix, work)
    finally:  # the host's /tmp is shared by the session's tests: leave it as it was
        hosts[0].run(["rm", "-rf", "/tmp/" + work.relative_to("/tmp").parts[0]])


def check_local_routes(qrun_prefix: list[str], work: Path) -> None:
    script = (
        "import os\n"
        "d = os.open('.', os.O_RDONLY)\n"
        "print(open('localdir/x').read().strip())\n"
        "print(open('localdir/x', opener=lambda p, f: os.open(p, f, dir_fd=d)).read().strip())\n"
        "print(open('sub/../localdir/x').read().strip() if os.path.isdir('sub') else 'no sub')\n"
        "print(sorted(f for _, _, fs, _ in os.fwalk('.') for f in fs if f == 'x'))\n"
        "print(open('pself/comm').read().strip())\n")
    prefix = [a for a in qrun_prefix]
    prefix[-1:-1] = ["--local", str(work / "localdir")]
    r = subprocess.run(prefix + ["/usr/bin/python3", "-c", script], cwd=work, capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["host-side", "host-side", "no sub", "['x']", "python3"], r.stderr
