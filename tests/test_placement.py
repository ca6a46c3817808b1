"""Host lists, the cluster file, the placement formula and the load agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from qrun.homenode import agent, config, hostlist
from qrun.homenode.placement import HostView, Ledger, PlacementError, Requirement, choose, views_for


@pytest.mark.parametrize("expr, want", [
    ("node[1-3,7]", ["node1", "node2", "node3", "node7"]),
    ("a,b[01-03]", ["a", "b01", "b02", "b03"]),
    ("h[1-2]x[1-2]", ["h1x1", "h1x2", "h2x1", "h2x2"]),
    ("h1,h1,h2", ["h1", "h2"]),
])
def test_hostlist_expands(expr: str, want: list[str]) -> None:
    assert hostlist.expand(expr) == want


@pytest.mark.parametrize("bad", ["node[1-", "node]", "node[3-1]", "node[a-b]"])
def test_hostlist_rejects_bad_syntax(bad: str) -> None:
    with pytest.raises(hostlist.HostListError):
        hostlist.expand(bad)


def test_cluster_file_is_validated(tmp_path: Path) -> None:
    good = tmp_path / "c.toml"
    good.write_text('max_jobs_per_user = 3\n[hosts.n1]\nlauncher = "ssh"\nspeed = 2\n'
                    'resources = { scratch_gb = 500 }\n[hosts.n2]\nlauncher = "slurm"\n')
    cfg = config.load(str(good))
    assert cfg.max_jobs_per_user == 3
    assert cfg.hosts["n1"].speed == 2 and cfg.hosts["n1"].resources == {"scratch_gb": 500.0}
    assert cfg.hosts["n2"].launcher == "slurm"
    for text, word in [('[hosts.n1]\nlauncher = "rsh"\n', "launcher"),
                       ('[hosts.n1]\nspeed = -1\n', "positive"),
                       ('[hosts.n1]\ncolour = "red"\n', "colour"),
                       ('surprise = 1\n', "surprise"),
                       ('[hosts.n1\n', "Expected")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(config.ConfigError, match=word):
            config.load(str(bad))
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(str(tmp_path / "missing.toml"))


def test_cluster_file_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "home" / ".config" / "qrun" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('home_addr = "user"\n')
    env_file = tmp_path / "env.toml"
    env_file.write_text('home_addr = "env"\n')
    cli_file = tmp_path / "cli.toml"
    cli_file.write_text('home_addr = "cli"\n')
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QRUN_CONF", raising=False)
    assert config.load().home_addr == "user"
    monkeypatch.setenv("QRUN_CONF", str(env_file))
    assert config.load().home_addr == "env"
    assert config.load(str(cli_file)).home_addr == "cli"


def _views(specs: dict[str, tuple[float | None, int, float]]) -> list[HostView]:
    cfg = config.parse({"hosts": {n: {"speed": s} for n, (_, _, s) in specs.items()}})
    views = views_for(cfg, list(specs))
    for v in views:
        load, cpus, _ = specs[v.name]
        v.load, v.cpus = load, cpus
    return views


def test_choose_prefers_the_lowest_weighted_load() -> None:
    views = _views({"a": (2.0, 4, 1.0), "b": (2.0, 4, 2.0), "c": (0.5, 1, 1.0), "d": (None, 64, 9.0)})
    # scores: a 0.5, b 0.25, c 0.5; d is silent
    assert choose(views, []).name == "b"
    assert [v.why_not for v in views if v.name == "d"] == ["agent silent"]


def test_a_host_at_its_load_threshold_takes_no_job() -> None:
    cfg = config.parse({"hosts": {"hot": {"max_load": 2}, "cool": {"max_load": 2.5}, "any": {}}})
    views = views_for(cfg, ["hot", "cool", "any"])
    for v, load in zip(views, (2.0, 1.0, 9.0), strict=True):
        v.load, v.cpus = load, 8
    assert choose(views, []).name == "cool"   # (hot is at its threshold; any has none, but more load)
    assert views[0].why_not == "busy (load 2.00 >= max_load 2)"
    with pytest.raises(config.ConfigError, match="max_load"):
        config.parse({"hosts": {"x": {"max_load": -1}}})


def test_requirements_filter_hosts() -> None:
    cfg = config.parse({"hosts": {"big": {"resources": {"scratch_gb": 500}}, "small": {}}})
    views = views_for(cfg, ["big", "small"])
    for v in views:
        v.load, v.cpus = (5.0 if v.name == "big" else 0.0), 1
    assert choose(views, [Requirement.parse("scratch_gb>=100")]).name == "big"
    with pytest.raises(PlacementError, match="no eligible host"):
        choose(views, [Requirement.parse("scratch_gb>=1000")])
    with pytest.raises(PlacementError):
        Requirement.parse("scratch_gb is big")


def test_virtual_load_spreads_a_burst(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    ledger = Ledger()
    landed = []
    for _ in range(6):
        views = _views({"a": (0.0, 2, 1.0), "b": (0.0, 2, 1.0), "c": (0.0, 2, 1.0)})
        ledger.annotate(views)
        host = choose(views, []).name
        assert ledger.claim(host, cap=0)
        landed.append(host)
        ledger.release()
    assert sorted(landed) == ["a", "a", "b", "b", "c", "c"]


def test_cap_on_running_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    ledger = Ledger()
    assert ledger.claim("a", cap=1)
    assert not ledger.claim("a", cap=1)  # this process already runs one
    ledger.release()
    assert ledger.claim("a", cap=1)
    ledger.release()


def test_agent_reports_injected_load_over_curve(tmp_path: Path) -> None:
    pub, sec = zmq.curve_keypair()
    port = _free_port()
    conf = tmp_path / "c.toml"
    conf.write_text(f'agent_public_key = "{pub.decode()}"\nagent_secret_key = "{sec.decode()}"\n'
                    f'agent_port = {port}\n[hosts.here]\naddress = "127.0.0.1"\n')
    load_file = tmp_path / "load.json"
    load_file.write_text(json.dumps({"load1": 3.25, "cpus": 6}))
    proc = subprocess.Popen([sys.executable, "-m", "qrun.homenode.agent", "--config", str(conf),
                             "--bind", f"tcp://127.0.0.1:{port}", "--load-file", str(load_file)],
                            stderr=subprocess.PIPE, text=True)
    try:
        cfg = config.load(str(conf))
        views = views_for(cfg, ["here"])
        deadline = time.monotonic() + 10
        while views[0].load is None and time.monotonic() < deadline:
            agent.query(cfg, views, timeout=0.5)
        assert (views[0].load, views[0].cpus) == (3.25, 6)
        # a client that does not know the agent's key learns nothing
        other = config.load(str(conf))
        other.agent_public_key = zmq.curve_keypair()[0].decode()
        stranger = views_for(other, ["here"])
        agent.query(other, stranger, timeout=0.5)
        assert stranger[0].load is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_agent_refuses_to_start_without_keys(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("")
    r = subprocess.run([sys.executable, "-m", "qrun.homenode.agent", "--config", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "qrun agent --keygen" in r.stderr



def test_bad_host_list_is_a_usage_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "qrun.homenode.cli", "-w", "node[1-", "--", "true"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "qrun: unbalanced '[' in 'node[1-'"


def test_hosts_table_without_agents_says_so(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[hosts.a]\n[hosts.b]\nresources = { scratch_gb = 5 }\n')
    r = subprocess.run([sys.executable, "-m", "qrun.homenode.cli", "hosts", "--config", str(conf)],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, XDG_STATE_HOME=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines[1:3]] == [["a", "up"], ["b", "up"]]
    assert "scratch_gb=5" in lines[2]
    assert lines[-1] == "(no agents configured: load is not measured, jobs are spread round-robin)"
