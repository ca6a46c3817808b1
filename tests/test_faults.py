"""Faults between the stub and home: lost control messages, half-open connections, floods of
unauthenticated connections. Every fault is bounded in count and time, and aims only at
loopback or this suite's own namespace hosts."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from qrun.homenode import cli
from qrun.homenode.server import HomeServer
from qrun.syscalls import wire


def run(cmd: list[str], cwd: Path | str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# ---- lost control messages --------------------------------------------------------------

@pytest.mark.parametrize("lost", ["exit", "bye"])
def test_a_lost_exit_or_bye_does_not_change_the_outcome(lost: str, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    dropped: list[str] = []
    if lost == "exit":
        real_message = HomeServer._message

        def drop_first_exit(self: HomeServer, ident: bytes, payload: bytes, data: Any, started: float) -> Any:
            if not dropped and wire.decode(payload)["t"] == "exit":
                dropped.append("exit")
                return None
            return real_message(self, ident, payload, data, started)
        monkeypatch.setattr(HomeServer, "_message", drop_first_exit)
    else:
        real_send = HomeServer._send

        def drop_first_bye(self: HomeServer, ident: bytes, kind: str, **fields: Any) -> None:
            if kind == "bye" and not dropped:
                dropped.append("bye")
                return
            real_send(self, ident, kind, **fields)
        monkeypatch.setattr(HomeServer, "_send", drop_first_bye)
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    code = cli.main(["--transparent", "--host", "local", "--timeout", "20", "--", "sh", "-c", "exit 7"])
    took = time.monotonic() - t0
    assert dropped == [lost]
    assert code == 7
    assert took < 8, f"the job's end took {took:.1f} s"


# ---- a stub that reconnects while home still holds its old connection --------------------

def test_a_reconnecting_stub_takes_over_its_routing_id(tmp_path: Path) -> None:
    """ROUTER_HANDOVER: without it, home keeps the old (half-open) connection's routing id
    and silently drops everything the new one sends."""
    srv = HomeServer("job1", {"argv": ["true"], "env": {}, "cwd": "/", "umask": 0o022, "identity": {},
                              "policy": {"local": [], "home": []}, "options": {}},
                     "tcp://127.0.0.1:0")  # (CURVE, as over a network)
    try:
        socks = []
        for seq in (1, 2):  # the second connects while the first is still connected
            s = srv.ctx.socket(zmq.DEALER)
            s.curve_serverkey = srv.keys.server_public
            s.curve_publickey = srv.keys.client_public
            s.curve_secretkey = srv.keys.client_secret
            s.setsockopt(zmq.ROUTING_ID, b"job1:rpc")
            s.setsockopt(zmq.LINGER, 0)
            s.connect(srv.endpoint)
            socks.append(s)
            s.send(wire.encode("req", seq=seq, tid=1, op="newfstatat", a=[None, b"/", None, 0],
                               umask=0o022))
            deadline = time.monotonic() + 3
            got = None
            while time.monotonic() < deadline and got is None:
                if srv.sock.poll(20):
                    srv.receive(time.monotonic())
                if s.poll(10):
                    got = wire.decode(s.recv())
            assert got is not None and got["r"] == 0, f"connection {seq} was not served"
        for s in socks:
            s.close()
    finally:
        srv.close()


STUB_WRAPPER = r"""
import json, os, sys
# Test only: point the stub at a proxy instead of home, and tell the proxy where home is.
proxy_port, note = sys.argv[1], sys.argv[2]
line = b""
while not line.endswith(b"\n"):
    line += os.read(0, 1)
boot = json.loads(line)
with open(note, "w") as f:
    f.write(boot["endpoint"])
host = boot["endpoint"].rsplit(":", 1)[0]
boot["endpoint"] = f"{host}:{proxy_port}"
r, w = os.pipe()
os.write(w, (json.dumps(boot) + "\n").encode())
os.close(w)
os.dup2(r, 0)
os.execv(sys.argv[3], sys.argv[3:])
"""


class FaultyProxy:
    """A TCP relay between the stub and home that can freeze its existing connections
    (kept open, nothing relayed, ever again: a dead NAT or a vanished route, as both ends
    see it), pause every connection, old or new (a partition: what was sent arrives
    afterwards), and cut connections (both ends reset) at seeded random moments."""

    def __init__(self, note: Path) -> None:
        self.note = note
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.paused = threading.Event()
        self.stop = threading.Event()
        self.generation = 0   # connections of earlier generations are frozen
        self.accepted = 0
        self.cut_times: list[float] = []
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            host, port = self.note.read_text().removeprefix("tcp://").rsplit(":", 1)
            try:
                upstream = socket.create_connection((host, int(port)))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, self.generation), daemon=True).start()

    def freeze(self) -> None:
        self.generation += 1

    def _pipe(self, src: socket.socket, dst: socket.socket, gen: int) -> None:
        src.settimeout(0.1)
        while not self.stop.is_set():
            if self.paused.is_set() or gen != self.generation:
                time.sleep(0.05)
                continue
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut_all(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.cut_times.append(time.monotonic())

    def cut_randomly(self, seed: int, cuts: int, mean_gap: float) -> threading.Thread:
        import random
        rng = random.Random(seed)

        def run() -> None:
            for _ in range(cuts):
                if self.stop.wait(rng.expovariate(1 / mean_gap)):
                    return
                self.cut_all()
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.cut_all()


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[FaultyProxy]:
    p = FaultyProxy(tmp_path / "home-endpoint")
    yield p
    p.close()


def _through(proxy: FaultyProxy, tmp_path: Path) -> list[str]:
    wrapper = tmp_path / "wrap.py"
    wrapper.write_text(STUB_WRAPPER)
    """qrun options that start the stub behind the proxy."""
    return ["--stub-command", shlex.join([sys.executable, str(wrapper), str(proxy.port),
                                          str(tmp_path / "home-endpoint"), sys.executable, "-P",
                                          "-m", "qrun.remote.stub"])]


def test_a_job_survives_a_half_open_connection(qrun_cmd: list[str], faulty: FaultyProxy,
                                               tmp_path: Path) -> None:
    """Every connection freezes mid-job; the stub's heartbeats notice, it reconnects through
    the proxy, and the job ends as it would have, well within --timeout."""
    (tmp_path / "f").write_text("home file\n")
    job = "sleep 1.5; cat f; sleep 6; cat f; echo done > g"
    cmd = qrun_cmd + ["--transparent", "--timeout", "20", "--via", "env", "--home-addr", "127.0.0.1",
                      *_through(faulty, tmp_path), "--", "/bin/sh", "-c", job]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    time.sleep(3.0)
    before = faulty.accepted
    faulty.freeze()
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (0, "home file\nhome file\n"), err
    assert (tmp_path / "g").read_text() == "done\n"
    assert faulty.accepted > before, "the stub never reconnected (were the connections frozen?)"


# ---- a flood of idle, unauthenticated connections ------------------------------------------

def test_a_connection_flood_does_not_starve_the_job(qrun_cmd: list[str], tmp_path: Path) -> None:
    """1100 idle TCP connections to the home node, at `ulimit -n 512`, while the job opens
    200 home files at once: the job gets all of them (its calls wait while the
    connections hold the fds; home drops them when their handshake times out)."""
    import resource

    import psutil
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"this test opens 1100 connections itself; the fd limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(4096, hard)), hard))
    for i in range(200):
        (tmp_path / f"in{i}").write_text(f"{i}\n")
    job = ("sleep 3; /usr/bin/python3 -c \"fs=[open('in%d' % i) for i in range(200)]; "
           "print(sum(int(f.read()) for f in fs))\"")
    cmd = ["prlimit", "--nofile=512:512", "--"] + qrun_cmd + [
        "--transparent", "--timeout", "20", "--via", "env", "--home-addr", "127.0.0.1", "--",
        "/bin/sh", "-c", job]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    port = None
    deadline = time.monotonic() + 10
    while port is None and time.monotonic() < deadline:
        try:
            listening = [c for c in psutil.Process(proc.pid).net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            listening = []
        port = listening[0].laddr.port if listening else None
        time.sleep(0.05)
    assert port is not None, "qrun never listened"
    flood: list[socket.socket] = []
    try:
        for _ in range(1100):
            s = socket.socket()
            s.settimeout(1)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()  # refused while home stopped listening: that is the point
                continue
            flood.append(s)
        out, err = proc.communicate(timeout=60)
    finally:
        for s in flood:
            s.close()
        if proc.poll() is None:
            proc.kill()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (proc.returncode, out) == (0, f"{sum(range(200))}\n"), err
    assert len(flood) > 100, "the flood never reached home"
    assert os.path.exists(tmp_path / "in0")


# ---- leases: contact lost for longer than --timeout, and home that never returns ----------

def _records(tmp_path: Path) -> list[dict[str, Any]]:
    import sqlite3
    with sqlite3.connect(tmp_path / "state" / "qrun" / "jobs.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY id")]


def test_a_job_outlives_a_partition_longer_than_its_timeout(qrun_cmd: list[str], faulty: FaultyProxy,
                                                            tmp_path: Path) -> None:
    """Nothing relayed for 8 s, with --timeout 2: both sides wait (the job's lease), the
    stub reconnects, and the job's output and files are whole."""
    (tmp_path / "f").write_text("home file\n")
    job = "for i in $(seq 1 40); do echo line $i; echo $i >> log; sleep 0.2; done; cat f"
    cmd = qrun_cmd + ["--transparent", "--timeout", "2", "--lease", "60", "-v", "--via", "env",
                      "--home-addr", "127.0.0.1", *_through(faulty, tmp_path), "--", "/bin/sh", "-c", job]
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=env)
    time.sleep(2.5)
    faulty.paused.set()
    time.sleep(8)
    faulty.paused.clear()
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert out == "".join(f"line {i}\n" for i in range(1, 41)) + "home file\n"
    assert (tmp_path / "log").read_text() == "".join(f"{i}\n" for i in range(1, 41))
    assert "lost contact" in err and "is back" in err, err
    rec = _records(tmp_path)[-1]
    assert rec["state"] == "DONE" and rec["reconnects"] >= 1, rec
    assert f"reconnects={rec['reconnects']}" in err


def _sleeps(seconds: str) -> list[str]:
    r = subprocess.run(["pgrep", "-a", "-x", "sleep"], capture_output=True, text=True)
    return [line for line in r.stdout.splitlines() if line.split()[-1] == seconds]


def test_home_that_never_returns_ends_the_job_at_its_lease(qrun_cmd: list[str], faulty: FaultyProxy,
                                                           tmp_path: Path) -> None:
    """qrun SIGKILLed: the job runs on until its lease (3 s past --timeout 1) runs out, and
    then nothing of it is left on the execution host."""
    seconds = str(200_000 + os.getpid() % 50_000)
    cmd = qrun_cmd + ["--transparent", "--timeout", "1", "--lease", "3", "--via", "env",
                      "--home-addr", "127.0.0.1", *_through(faulty, tmp_path), "--", "sleep", seconds]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not _sleeps(seconds):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)
    proc.kill()
    proc.communicate(timeout=30)
    killed = time.monotonic()
    time.sleep(1.5)
    assert _sleeps(seconds), "the job did not outlive home's silence timeout"
    while _sleeps(seconds):
        assert time.monotonic() - killed < 30, "the job outlived its lease"
        time.sleep(0.2)
    assert time.monotonic() - killed >= 3.5   # (timeout 1 + lease 3, from the last word heard)


def test_resent_requests_run_once_across_cut_connections(qrun_cmd: list[str], faulty: FaultyProxy,
                                                         tmp_path: Path) -> None:
    """Connections reset at seeded random moments (at most 8 times) while the job mkdirs,
    renames, links, unlinks, creates with O_EXCL and appends: each ran exactly once at home
    (a second run of any of them would fail, or double a line), and no output is lost.
    $QRUN_CUT_SEED picks other moments (default 8)."""
    job = ('i=0; while [ $i -lt 25 ]; do i=$((i+1)); mkdir d$i && echo $i > d$i/f && mv d$i/f d$i/g && '
           'ln d$i/g d$i/h && rm d$i/h && (set -C; echo x > d$i/excl) && echo $i >> app && '
           'echo out $i || exit 9; done')
    cmd = qrun_cmd + ["--transparent", "--timeout", "5", "--lease", "60", "--via", "env",
                      "--home-addr", "127.0.0.1", *_through(faulty, tmp_path), "--", "/bin/sh", "-c", job]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    cutter = faulty.cut_randomly(seed=int(os.environ.get("QRUN_CUT_SEED", "8")), cuts=8, mean_gap=0.4)
    out, err = proc.communicate(timeout=120)
    cutter.join(timeout=10)
    assert (proc.returncode, err) == (0, ""), err
    assert out == "".join(f"out {i}\n" for i in range(1, 26))
    assert (tmp_path / "app").read_text() == "".join(f"{i}\n" for i in range(1, 26))
    for i in range(1, 26):
        d = tmp_path / f"d{i}"
        assert sorted(p.name for p in d.iterdir()) == ["excl", "g"]
        assert (d / "g").read_text() == f"{i}\n" and (d / "g").stat().st_nlink == 1
    assert len(faulty.cut_times) >= 3 and faulty.accepted > 2, "the connections were hardly cut"
