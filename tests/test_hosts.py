"""Tests of the namespace test hosts themselves (tests/hosts.py)."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hosts import Host, HostCluster, can_make_hosts

# The pyenv shim lives under the (hidden) home dir and costs ~160 ms anyway: use the system python.
PY = "/usr/bin/python3"

CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
s.settimeout(float(sys.argv[3]))
s.sendall(b"ping")
print(s.recv(16).decode())
"""

# Listens on argv[1], reports its port, echoes one connection, then reports the peer's address.
SERVER = """
import socket, sys
srv = socket.socket()
srv.bind((sys.argv[1], 0))
srv.listen(1)
srv.settimeout(10)
print(srv.getsockname()[1], flush=True)
conn, peer = srv.accept()
conn.sendall(conn.recv(16))
conn.close()
print(peer[0], flush=True)
"""

needs_hosts = pytest.mark.skipif(not can_make_hosts()[0], reason=can_make_hosts()[1])


def _proc_state(pid: int) -> tuple[str, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _pidns_members(pid1: int) -> dict[int, int]:
    """Global pid -> start time of every process in the pid namespace of pid1."""
    target = os.readlink(f"/proc/{pid1}/ns/pid")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != target:
                continue
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        st = _proc_state(int(entry))
        if st is not None:
            found[int(entry)] = st[1]
    return found


def _still_running(pid: int, starttime: int) -> bool:
    st = _proc_state(pid)
    return st is not None and st[1] == starttime and st[0] not in ("Z", "X")


def _init_pids(prefix: str) -> list[int]:
    """Live PID-1s of a cluster, found by the tag in their command line."""
    tag = f"qrun-host-init:{prefix}:".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        st = _proc_state(int(entry))
        if tag in cmdline and st is not None and st[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


def _our_netns_and_links(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    names += os.listdir("/sys/class/net")
    return sorted(n for n in names if n.startswith(prefix))


@contextmanager
def echo_server(bind_ip: str) -> Iterator[tuple[int, list[str]]]:
    """Home-side TCP echo server; yields its port and the list of peer addresses it served."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind_ip, 0))
    srv.listen(8)
    srv.settimeout(0.1)
    peers: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.sendall(conn.recv(16))
                    peers.append(peer[0])
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], peers
    finally:
        stop.set()
        t.join(5)
        srv.close()


def connect_from(host: Host, ip: str, port: int, timeout: float = 2.0) -> tuple[bool, float, str]:
    t0 = time.monotonic()
    r = host.run([PY, "-c", CLIENT, ip, str(port), str(timeout)], timeout=timeout + 10)
    elapsed = time.monotonic() - t0
    return r.returncode == 0 and r.stdout.strip() == "ping", elapsed, r.stdout + r.stderr


def _readline(proc: subprocess.Popen[str], timeout: float = 5.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output from process inside the host"
    return proc.stdout.readline().strip()


# -- the session fixture ---------------------------------------------------------------------------


def test_hostnames(hosts: HostCluster) -> None:
    assert [h.name for h in hosts] == ["h1", "h2", "h3"]
    home_name = socket.gethostname()
    for h in hosts:
        r = h.run(["hostname"], check=True)
        assert r.stdout.strip() == h.name
        assert r.stdout.strip() != home_name


def test_own_pid_namespace(host: Host) -> None:
    r = host.run(["sh", "-c", "tr '\\0\\n' '  ' </proc/1/cmdline; echo; ls /proc"], check=True)
    init_cmdline, listing = r.stdout.split("\n", 1)
    assert "qrun-host-init" in init_cmdline
    pids = [p for p in listing.split() if p.isdigit()]
    assert len(pids) < 20, pids
    assert Path(f"/proc/{host.pid}/status").read_text().count("NSpid") == 1


def test_private_tmp_and_shm(host: Host, hosts: HostCluster) -> None:
    marker = f"qrun-home-only-{uuid.uuid4().hex}"
    made = [Path("/tmp") / marker, Path("/dev/shm") / marker]
    for p in made:
        p.write_text("home")
    try:
        script = (
            f"ls -A /tmp /dev/shm; test -e /tmp/{marker} && echo LEAK; "
            f"test -e /dev/shm/{marker} && echo LEAK; echo end"
        )
        r = host.run(["sh", "-c", script], check=True)
        assert "LEAK" not in r.stdout
        assert marker not in r.stdout
        # Both are tmpfs mounts that only this host sees: empty but for what the cluster
        # deliberately shares (qrun's own installation when it lives under /tmp).
        shared_tops = sorted({Path(p).relative_to("/tmp").parts[0] for p in hosts.share})
        # (state that stubs of earlier tests left on this shared host is not home's)
        listed = [w for w in r.stdout.split() if not w.startswith("qrun-stub-")]
        assert listed == ["/dev/shm:", "/tmp:", *shared_tops, "end"]
        inner = f"qrun-host-only-{uuid.uuid4().hex}"
        host.run(["touch", f"/tmp/{inner}"], check=True)
        assert not (Path("/tmp") / inner).exists()
        assert host.run(["test", "-e", f"/tmp/{inner}"]).returncode == 0
    finally:
        for p in made:
            p.unlink()


def test_tmp_is_private_per_host(hosts: HostCluster) -> None:
    name = f"/tmp/qrun-h1-only-{uuid.uuid4().hex}"
    hosts[0].run(["touch", name], check=True)
    assert hosts[1].run(["test", "-e", name]).returncode != 0


def test_home_dir_hidden(host: Host) -> None:
    home = os.path.expanduser("~")
    assert os.listdir(home), "home dir is empty at home, so hiding it proves nothing"
    r = host.run(["ls", "-A", home], check=True)
    assert r.stdout == ""
    assert host.run(["test", "-d", home]).returncode == 0


def test_test_home_hidden_even_for_later_files(host: Host) -> None:
    d = Path("/srv/qrun-test-home")
    f = d / f"late-{uuid.uuid4().hex}"
    f.write_text("created at home after the hosts started")
    try:
        r = host.run(["ls", "-A", str(d)], check=True)
        assert r.stdout == ""
    finally:
        f.unlink()


def test_rest_of_root_fs_shared(host: Host) -> None:
    r = host.run([PY, "-c", "import sys; print(sys.version_info[:2])"], check=True)
    assert r.stdout.strip() == "(3, 11)" or r.stdout.startswith("(3,")
    assert host.run(["cat", "/etc/os-release"], check=True).stdout == Path(
        "/etc/os-release").read_text()
    here = os.path.realpath(__file__)
    if not here.startswith(("/tmp/", os.path.expanduser("~") + "/", "/srv/qrun-test-home/")):
        assert host.run(["test", "-f", here]).returncode == 0


def test_network_inside(host: Host) -> None:
    r = host.run(["ip", "-o", "-4", "addr", "show"], check=True)
    lines = [line.split()[1:4] for line in r.stdout.splitlines()]
    assert lines == [["lo", "inet", "127.0.0.1/8"], ["eth0", "inet", f"{host.ip}/24"]]
    loopback = (
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1);"
        "c = socket.create_connection(s.getsockname(), timeout=2); print('ok')"
    )
    assert host.run([PY, "-c", loopback], check=True).stdout.strip() == "ok"


def test_run_cwd_is_resolved_inside(host: Host) -> None:
    assert host.run(["pwd"], cwd="/etc", check=True).stdout.strip() == "/etc"
    # The hidden home must stay empty even when used as cwd.
    assert host.run(["ls", "-A"], cwd=os.path.expanduser("~"), check=True).stdout == ""


def test_tcp_host_to_home(hosts: HostCluster) -> None:
    with echo_server(hosts.home_ip) as (port, peers):
        for h in hosts:
            ok, _, out = connect_from(h, h.home_ip, port)
            assert ok, out
    assert peers == [h.ip for h in hosts]


def test_tcp_h1_to_h2(hosts: HostCluster) -> None:
    h1, h2 = hosts[0], hosts[1]
    server = h2.popen([PY, "-c", SERVER, h2.ip], stdout=subprocess.PIPE, text=True)
    try:
        port = int(_readline(server))
        ok, _, out = connect_from(h1, h2.ip, port)
        assert ok, out
        assert _readline(server) == h1.ip
    finally:
        server.kill()
        server.wait(5)


def test_block_home(hosts: HostCluster) -> None:
    h1, h2 = hosts[0], hosts[1]
    if not h1.iptables_available():
        pytest.skip("iptables does not work inside the test hosts")
    with echo_server(h1.home_ip) as (port, _):
        h1.block_home()
        try:
            ok, elapsed, out = connect_from(h1, h1.home_ip, port, timeout=2.0)
            assert not ok, out
            assert "timed out" in out
            assert elapsed < 4.0
            # Only h1 is cut off.
            assert connect_from(h2, h2.home_ip, port)[0]
            h1.block_home()  # idempotent
        finally:
            h1.unblock_home()
        h1.unblock_home()  # idempotent
        ok, _, out = connect_from(h1, h1.home_ip, port)
        assert ok, out
    r = h1.run(["iptables", "-S"], check=True)
    assert "DROP" not in r.stdout


# -- own clusters: lifecycle -----------------------------------------------------------------------


@needs_hosts
def test_close_kills_everything_and_removes_netns() -> None:
    cluster = HostCluster(n=2)
    assert _our_netns_and_links(cluster.prefix) == []
    with cluster:
        assert cluster.setup_seconds < 2.0
        assert len(_our_netns_and_links(cluster.prefix)) == 2 * 2 + 1  # netns, veth, bridge
        h1 = cluster["h1"]
        h1.run(["sh", "-c", "sleep 1000 >/dev/null 2>&1 &"], check=True)
        attached = h1.popen(["sleep", "1000"])
        deadline = time.monotonic() + 5
        members: dict[int, int] = {}
        # Two PID-1s, their sleeps, and the two sleeps above; popen's nsenter needs a moment.
        while len(members) < 2 + 2 + 2:
            assert time.monotonic() < deadline, members
            time.sleep(0.01)
            members = {}
            for h in cluster:
                members.update(_pidns_members(h.pid))
    assert cluster.teardown_seconds < 2.0
    assert attached.wait(5) != 0
    alive = [pid for pid, st in members.items() if _still_running(pid, st)]
    assert alive == []
    assert _init_pids(cluster.prefix) == []
    assert not any(h.is_alive() for h in cluster)
    assert _our_netns_and_links(cluster.prefix) == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert cluster.prefix not in listed.stdout
    cluster.close()  # idempotent


@needs_hosts
def test_failed_setup_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: HostCluster, deadline: float) -> None:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(HostCluster, "_wait_ready", fail)
    cluster = HostCluster(n=2)
    with pytest.raises(RuntimeError, match="injected failure"):
        cluster.start()
    holders = [h._holder for h in cluster]
    assert holders and all(p is not None and p.poll() is not None for p in holders)
    assert _init_pids(cluster.prefix) == []
    assert _our_netns_and_links(cluster.prefix) == []
    cluster.close()


@needs_hosts
def test_failing_init_reports_reason() -> None:
    blocker = Path(f"/tmp/qrun-not-a-dir-{uuid.uuid4().hex}")
    blocker.write_text("")
    try:
        # Hidden paths under /tmp are made inside the private /tmp, so this one is fine ...
        with HostCluster(n=1, hide=[blocker / "x"]) as c:
            assert c[0].run(["ls", "-A", str(blocker / "x")], check=True).stdout == ""
        # ... but a file at home cannot be masked.
        with pytest.raises(ValueError, match="not a directory"):
            HostCluster(n=1, hide=["/etc/os-release"]).start()
    finally:
        blocker.unlink()


@needs_hosts
def test_share_keeps_dir_under_tmp_visible(tmp_path: Path) -> None:
    (tmp_path / "seen").write_text("shared")
    with HostCluster(n=1, share=[tmp_path]) as c:
        h = c[0]
        assert h.run(["cat", str(tmp_path / "seen")], check=True).stdout == "shared"
        h.run(["touch", str(tmp_path / "from-host")], check=True)
        assert (tmp_path / "from-host").exists()
        # Only the shared dir itself came along, not its siblings in home's /tmp.
        r = h.run(["ls", "-A", str(tmp_path.parent)], check=True)
        assert r.stdout.split() == [tmp_path.name]


@needs_hosts
def test_killed_test_process_takes_hosts_down(tmp_path: Path) -> None:
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); import hosts;"
        "c = hosts.HostCluster(n=1).start(); print(c.prefix, c[0].pid, flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent)],
                             stdout=subprocess.PIPE, text=True)
    try:
        prefix, pid1_s = _readline(child, timeout=10).split()
        pid1 = int(pid1_s)
        st = _proc_state(pid1)
        assert st is not None and st[0] != "Z"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    deadline = time.monotonic() + 5
    while _still_running(pid1, st[1]):
        assert time.monotonic() < deadline, "host survived its SIGKILLed test process"
        time.sleep(0.01)
    # The network objects outlive a SIGKILL; the next cluster sweeps them.
    assert _our_netns_and_links(prefix) != []
    with HostCluster(n=1):
        assert _our_netns_and_links(prefix) == []
