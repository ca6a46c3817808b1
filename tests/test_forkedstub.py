"""The local launcher's stub is forked from qrun, not executed: it must start as a started
one would (its own session and command line, only its three standard fds, none of qrun's
files or signal handlers), report through the same pipes, and be reaped like a Popen. Runs as any user."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from qrun.homenode import launchers
from qrun.homenode.forkedstub import can_fork

# Run in a fresh interpreter, as qrun's CLI would be when it forks: one thread, no zmq.
PROBE = r"""
import json, os, signal, subprocess, sys, time
from qrun.homenode import launchers
from qrun.homenode.forkedstub import ForkedStub, can_fork
kept = open(os.devnull, "rb")                      # a file of qrun's, inheritable
os.set_inheritable(kept.fileno(), True)
signal.signal(signal.SIGTERM, lambda *_: None)     # a handler of qrun's
sys.stderr.write("unflushed ")                     # buffered in qrun: written once, by qrun
forkable = can_fork(launchers.STUB_COMMAND, interactive=True)
stub = ForkedStub(launchers.STUB_COMMAND)
deadline = time.monotonic() + 20
comm = ""
while comm != "qrun-stub" and time.monotonic() < deadline:
    comm = open(f"/proc/{stub.pid}/comm").read().strip()
    time.sleep(0.01)
fds = sorted(int(fd) for fd in os.listdir(f"/proc/{stub.pid}/fd"))
cmdline = open(f"/proc/{stub.pid}/cmdline", "rb").read().decode().rstrip("\0").split("\0")
sid = os.getsid(stub.pid) == stub.pid
sigcgt = int(open(f"/proc/{stub.pid}/status").read().split("SigCgt:")[1].split()[0], 16)
try:
    stub.wait(0.05)
    waited = "exited"
except subprocess.TimeoutExpired:
    waited = "timeout"
stub.stdin.write(b"{}\n")
stub.stdin.close()
err = stub.stderr.read().decode()
code = stub.wait()
print(json.dumps({"forkable": forkable, "comm": comm, "cmdline": cmdline, "fds": fds, "sid": sid,
                  "term_caught": bool(sigcgt & (1 << (signal.SIGTERM - 1))), "waited": waited,
                  "err": err, "code": code, "poll": stub.poll()}))
"""


def test_a_forked_stub_starts_as_a_started_one() -> None:
    r = subprocess.run([sys.executable, "-P", "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert r.stderr == "unflushed ", r.stderr
    assert got["forkable"] is True
    assert got["comm"] == "qrun-stub"
    assert got["cmdline"] == launchers.STUB_COMMAND, got["cmdline"]   # (what ps and pgrep -f see)
    assert got["fds"] == [0, 1, 2], got["fds"]
    assert got["sid"] is True
    assert got["term_caught"] is False
    assert got["waited"] == "timeout"   # (it waits for its bootstrap line)
    assert "bad bootstrap line on stdin" in got["err"] and "Traceback" not in got["err"], got["err"]
    assert got["code"] == got["poll"] == 125


def test_only_this_interpreters_stub_is_forked_and_only_from_one_thread() -> None:
    assert not can_fork(["ssh", "h1", *launchers.STUB_COMMAND], interactive=True)
    assert not can_fork(["/opt/other/python", "-P", "-m", "qrun.remote.stub"], interactive=True)
    assert not can_fork(launchers.STUB_COMMAND, interactive=False)   # (a shepherd's)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not can_fork(launchers.STUB_COMMAND, interactive=True)
    finally:
        stop.set()
        t.join()
