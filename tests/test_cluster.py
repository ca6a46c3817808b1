"""qrun on a cluster of namespace hosts: real OpenSSH and real Slurm launchers, host choice
by load, and the failures a user meets. Runs as root (CI); skips cleanly elsewhere."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from conftest import skip_or_fail
from hosts import HostCluster
from qrun.homenode import config
from qrun.homenode.placement import Ledger, choose, views_for

AGENT_PORT = 17781


def write_config(path: Path, hosts: HostCluster, ssh_config: str, extra_hosts: str = "",
                 agents: tuple[str, str] | None = None, **top: object) -> Path:
    lines = [f'home_addr = "{hosts[0].home_ip}"', f'ssh_command = "ssh -F {ssh_config}"',
             f"agent_port = {AGENT_PORT}"]
    if agents:
        lines += [f'agent_public_key = "{agents[0]}"', f'agent_secret_key = "{agents[1]}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    for h in hosts:
        lines += [f"[hosts.{h.name}]", 'launcher = "ssh"', f'address = "{h.ip}"']
    path.write_text("\n".join(lines) + "\n" + extra_hosts)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Each test keeps its own placement ledger."""
    return dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))


def qrun(qrun_cmd: list[str], conf: Path, *args: str, env: dict[str, str], cwd: Path | str = "/",
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(qrun_cmd + ["--config", str(conf), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd, stdin=subprocess.DEVNULL)


def close_masters(ssh_config: str, host: object) -> None:
    """qrun's ssh master connection to a host outlives a job (ControlPersist): close it, so
    the next job has to authenticate again."""
    cm = os.path.join(os.path.expanduser("~"), ".cache", "qrun", "ssh-%C")
    subprocess.run(["ssh", "-F", ssh_config, "-o", f"ControlPath={cm}", "-O", "exit",
                    host.ip], capture_output=True, timeout=30)  # type: ignore[attr-defined]


def stubs_left(hosts: HostCluster) -> list[str]:
    out = []
    for h in hosts:
        r = h.run(["/bin/sh", "-c", "pgrep -af '[r]emote[.]stub' || true"])
        out += [f"{h.name}: {line}" for line in r.stdout.splitlines() if line.strip()]
    return out


# ---- OpenSSH ---------------------------------------------------------------------------------

def test_transparent_job_over_ssh(qrun_cmd: list[str], ssh_cluster: object, cluster_hosts: HostCluster,
                                  tmp_path: Path, env: dict[str, str]) -> None:
    conf = write_config(tmp_path / "c.toml", cluster_hosts, ssh_cluster.ssh_config)  # type: ignore[attr-defined]
    work = tmp_path / "work"
    work.mkdir()
    (work / "input").write_text("home file\n")
    r = qrun(qrun_cmd, conf, "--transparent", "-w", "h2", "-v", "--", "/bin/sh", "-c",
             "cat input; hostname; echo written > output", env=env, cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["home file", os.uname().nodename]
    assert (work / "output").read_text() == "written\n"
    assert "qrun: host=h2 status=0" in r.stderr


def test_a_job_over_ssh_outlives_a_partition_longer_than_its_timeout(
        qrun_cmd: list[str], ssh_cluster: object, cluster_hosts: HostCluster, tmp_path: Path,
        env: dict[str, str]) -> None:
    """All traffic between h2 and home dropped for 12 s (iptables, in h2) with --timeout 3,
    while a job started over ssh writes home: whatever becomes of the ssh connection, the
    stub lives on through the job's lease, reconnects, and the job's files and output are
    whole."""
    h = cluster_hosts[1]
    if not h.iptables_available():
        skip_or_fail("iptables is not installed")
    conf = write_config(tmp_path / "c.toml", cluster_hosts, ssh_cluster.ssh_config)  # type: ignore[attr-defined]
    work = tmp_path / "work"
    work.mkdir()
    job = "for i in $(seq 1 60); do echo $i >> log; echo line $i; sleep 0.2; done"
    proc = subprocess.Popen(qrun_cmd + ["--config", str(conf), "--transparent", "-w", "h2", "--timeout", "3",
                                        "--lease", "120", "--", "/bin/sh", "-c", job],
                            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    out, err = h.partition_job(proc, str(work / "log"), 12)
    assert proc.returncode == 0, err
    assert out == "".join(f"line {i}\n" for i in range(1, 61))
    assert (work / "log").read_text() == "".join(f"{i}\n" for i in range(1, 61))
    assert "lost contact" in err and "is back" in err, err


def test_plain_job_over_ssh(qrun_cmd: list[str], ssh_cluster: object, cluster_hosts: HostCluster,
                            tmp_path: Path, env: dict[str, str]) -> None:
    conf = write_config(tmp_path / "c.toml", cluster_hosts, ssh_cluster.ssh_config)  # type: ignore[attr-defined]
    r = qrun(qrun_cmd, conf, "-w", "h2", "-D", "/", "--", "hostname", env=env)
    assert (r.returncode, r.stdout) == (0, "h2\n"), r.stderr
    started = time.monotonic()
    for _ in range(3):  # the ssh master connection is reused: no new key exchange per job
        assert qrun(qrun_cmd, conf, "-w", "h2", "-D", "/", "--", "true", env=env).returncode == 0
    assert time.monotonic() - started < 60


# ---- Slurm -------------------------------------------------------------------------------------

def test_transparent_job_through_slurm(qrun_cmd: list[str], slurm_cluster: object, cluster_hosts: HostCluster,
                                       tmp_path: Path, env: dict[str, str]) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'home_addr = "{cluster_hosts[0].home_ip}"\n')
    work = tmp_path / "work"
    work.mkdir()
    (work / "input").write_text("via slurm\n")
    slurm_env = dict(env, **slurm_cluster.env)  # type: ignore[attr-defined]
    r = qrun(qrun_cmd, conf, "--launcher", "slurm", "--transparent", "-v", "--", "/bin/sh", "-c",
             "cat input; hostname", env=slurm_env, cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["via slurm", os.uname().nodename]
    assert any(f"qrun: host={h.name} status=0" in r.stderr for h in cluster_hosts), r.stderr
    r = qrun(qrun_cmd, conf, "--launcher", "slurm", "-w", "h3", "-v", "-D", "/", "--", "hostname",
             env=slurm_env)
    assert (r.returncode, r.stdout) == (0, "h3\n"), r.stderr


# ---- host choice ----------------------------------------------------------------------------------

@pytest.fixture
def agents(cluster_hosts: HostCluster, cluster_state_dir: str) -> Iterator[tuple[str, str, dict[str, Path]]]:
    """Agents on h1 and h2 reporting injected loads; h3 has none (it stays silent)."""
    pub, sec = (k.decode() for k in zmq.curve_keypair())
    d = Path(cluster_state_dir) / f"agents-{os.getpid()}"
    d.mkdir(exist_ok=True)
    conf = d / "agent.toml"
    conf.write_text(f'agent_public_key = "{pub}"\nagent_secret_key = "{sec}"\n')
    loads = {h.name: d / f"{h.name}.json" for h in cluster_hosts}
    procs = []
    for h in list(cluster_hosts)[:2]:
        procs.append(h.popen([sys.executable, "-m", "qrun.homenode.agent", "--config", str(conf),
                              "--bind", f"tcp://{h.ip}:{AGENT_PORT}", "--load-file", str(loads[h.name])]))
    try:
        yield pub, sec, loads
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


def test_jobs_land_where_the_formula_says(qrun_cmd: list[str], ssh_cluster: object, cluster_hosts: HostCluster,
                                          agents: tuple[str, str, dict[str, Path]], tmp_path: Path,
                                          env: dict[str, str]) -> None:
    pub, sec, loads = agents
    loads["h1"].write_text(json.dumps({"load1": 3.0, "cpus": 4}))
    loads["h2"].write_text(json.dumps({"load1": 0.4, "cpus": 4}))  # never ties with h1
    conf = write_config(tmp_path / "c.toml", cluster_hosts, ssh_cluster.ssh_config, agents=(pub, sec))  # type: ignore[attr-defined]
    # the lighter host is also the faster one: it should take most, but not all, of the burst
    text = conf.read_text().replace('[hosts.h2]\nlauncher = "ssh"', '[hosts.h2]\nlauncher = "ssh"\nspeed = 2.0')
    conf.write_text(text)
    env = dict(env, QRUN_VIRTUAL_TTL="10000000")  # no fading: the outcome is the formula's alone
    hosts_json = subprocess.run(qrun_cmd + ["hosts", "--json", "--config", str(conf)], capture_output=True,
                                text=True, env=env, timeout=60)
    table = {row["host"]: row for row in json.loads(hosts_json.stdout)}
    assert table["h3"]["state"] == "silent" and table["h1"]["load"] == 3.0 and table["h2"]["cpus"] == 4
    assert table["h2"]["score"] == 0.05 and table["h1"]["score"] == 0.75 and table["h3"]["score"] is None
    shown = subprocess.run(qrun_cmd + ["hosts", "--config", str(conf)], capture_output=True, text=True,
                           env=env, timeout=60).stdout.splitlines()
    assert shown[0].split() == ["HOST", "STATE", "LOAD", "CPUS", "SPEED", "MEM", "RUNNING", "MAX", "SCORE",
                               "LAUNCHER", "RESOURCES", "NOTE"]
    rows = {line.split()[0]: line.split() for line in shown[1:]}
    assert rows["h2"][:4] == ["h2", "up", "0.40", "4"] and rows["h2"][4] == "2"
    assert rows["h3"][:3] == ["h3", "silent", "-"] and rows["h3"][-2:] == ["agent", "silent"]

    # What the formula predicts for 30 jobs in a row (same code, no I/O)
    cfg = config.load(str(conf))
    expected: collections.Counter[str] = collections.Counter()
    sim = Ledger(tmp_path / "sim" / "placement.json")
    views = views_for(cfg, ["h1", "h2", "h3"])
    for _ in range(30):
        for v in views:
            v.why_not = ""
            v.load, v.cpus = {"h1": (3.0, 4), "h2": (0.4, 4), "h3": (None, 0)}[v.name]
        sim.annotate(views)
        host = choose(views, []).name
        with sim._locked() as data:  # record a dispatch only (the job is over at once)
            data["dispatches"].append([host, time.time()])
        expected[host] += 1

    landed: collections.Counter[str] = collections.Counter()
    for _ in range(30):
        r = qrun(qrun_cmd, conf, "-w", "h[1-3]", "-D", "/", "--", "hostname", env=env)
        assert r.returncode == 0, r.stderr
        landed[r.stdout.strip()] += 1
    assert landed == expected
    assert landed["h3"] == 0                       # a silent host gets nothing
    assert landed["h2"] > landed["h1"] > 0         # the lighter host most, but not all of a burst


def test_require_and_user_cap(qrun_cmd: list[str], ssh_cluster: object, cluster_hosts: HostCluster,
                              tmp_path: Path, env: dict[str, str]) -> None:
    extra = ""
    conf = write_config(tmp_path / "c.toml", cluster_hosts, ssh_cluster.ssh_config, extra,  # type: ignore[attr-defined]
                        max_jobs_per_user=1)
    conf.write_text(conf.read_text().replace('[hosts.h3]\nlauncher = "ssh"',
                                             '[hosts.h3]\nlauncher = "ssh"\nresources = { scratch_gb = 500 }'))
    r = qrun(qrun_cmd, conf, "--require", "scratch_gb>=100", "-D", "/", "--", "hostname", env=env)
    assert (r.returncode, r.stdout) == (0, "h3\n"), r.stderr
    # with a cap of one running job, a second job waits until the first is done
    first = subprocess.Popen(qrun_cmd + ["--config", str(conf), "-w", "h1", "-D", "/", "--", "sleep", "2"],
                             env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    started = time.monotonic()
    r = qrun(qrun_cmd, conf, "-w", "h2", "-D", "/", "--", "true", env=env)
    waited = time.monotonic() - started
    first.communicate(timeout=60)
    assert r.returncode == 0, r.stderr
    assert "qrun: waiting: 1 of your jobs are running (max_jobs_per_user)" in r.stderr
    assert waited > 0.5


# ---- bad input ----------------------------------------------------------------------------------------

def test_host_list_matching_nothing(qrun_cmd: list[str], ssh_cluster: object, cluster_hosts: HostCluster,
                                    tmp_path: Path, env: dict[str, str]) -> None:
    conf = write_config(tmp_path / "c.toml", cluster_hosts, ssh_cluster.ssh_config)  # type: ignore[attr-defined]
    r = qrun(qrun_cmd, conf, "-w", "nosuch[1-2]", "--", "true", env=env)
    assert r.returncode == 121
    assert r.stderr.strip() == "qrun: unknown hosts: nosuch1, nosuch2"
    r = qrun(qrun_cmd, conf, "-w", "h[1-2]", "-x", "h[1-2]", "--", "true", env=env)
    assert r.returncode == 121
    assert r.stderr.strip().splitlines() == ["qrun: the host list h[1-2] minus h[1-2] matches no host"]


def test_unreachable_and_refusing_hosts(qrun_cmd: list[str], ssh_cluster: object, cluster_hosts: HostCluster,
                                        tmp_path: Path, env: dict[str, str]) -> None:
    ghost_ip = cluster_hosts[0].ip.rsplit(".", 1)[0] + ".99"   # in our own subnet, nobody there
    conf = write_config(tmp_path / "c.toml", cluster_hosts, ssh_cluster.ssh_config,  # type: ignore[attr-defined]
                        f'[hosts.ghost]\nlauncher = "ssh"\naddress = "{ghost_ip}"\n')
    r = qrun(qrun_cmd, conf, "-w", "ghost", "--", "true", env=env)
    assert r.returncode == 118, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("qrun: cannot reach ghost (")
    close_masters(ssh_cluster.ssh_config, cluster_hosts[2])  # type: ignore[attr-defined]
    ssh_cluster.refuse("h3")  # type: ignore[attr-defined]
    try:
        r = qrun(qrun_cmd, conf, "-w", "h3", "--", "true", env=env)
    finally:
        ssh_cluster.allow("h3")  # type: ignore[attr-defined]
    assert r.returncode == 119, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("qrun: h3 refused the ssh connection (")
    assert stubs_left(cluster_hosts) == []


def test_slurm_down(qrun_cmd: list[str], slurm_cluster: object, cluster_hosts: HostCluster, tmp_path: Path,
                    env: dict[str, str]) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'home_addr = "{cluster_hosts[0].home_ip}"\n')
    slurm_env = dict(env, **slurm_cluster.env)  # type: ignore[attr-defined]
    slurm_cluster.down()  # type: ignore[attr-defined]
    try:
        r = qrun(qrun_cmd, conf, "--launcher", "slurm", "--", "true", env=slurm_env, timeout=180)
    finally:
        slurm_cluster.up()  # type: ignore[attr-defined]
    assert r.returncode == 120, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("qrun: Slurm is not available (")
    assert stubs_left(cluster_hosts) == []


def test_a_job_still_queued_in_slurm_is_cancelled_when_qrun_gives_up(
        qrun_cmd: list[str], slurm_cluster: object, cluster_hosts: HostCluster, tmp_path: Path,
        env: dict[str, str]) -> None:
    import signal
    slurm_env = dict(env, **slurm_cluster.env)  # type: ignore[attr-defined]
    conf = tmp_path / "c.toml"
    conf.write_text(f'home_addr = "{cluster_hosts[0].home_ip}"\n')

    def squeue(*args: str) -> str:
        return subprocess.run(["squeue", "-h", *args], env=slurm_env, capture_output=True, text=True,
                              timeout=30).stdout

    holder = subprocess.run(["sbatch", "--parsable", "-N3", "--exclusive", "-J", "holder", "-o", "/dev/null",
                             "--wrap", "sleep 120"], env=slurm_env, capture_output=True, text=True,
                            timeout=30, cwd="/")
    assert holder.returncode == 0, holder.stderr
    hid = holder.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 30
        while "R" not in squeue("-j", hid, "-o", "%t").split() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc = subprocess.Popen(qrun_cmd + ["--config", str(conf), "--launcher", "slurm", "-D", "/", "--",
                                            "true"], env=slurm_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        assert proc.poll() is None, proc.communicate()
        queued = [line for line in squeue("-o", "%j %t").splitlines() if line.startswith("qrun-")]
        assert queued and queued[0].split()[1] == "PD", squeue("-o", "%j %t")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "waiting for Slurm to start the job" in err, err
        deadline = time.monotonic() + 15
        while any(ln.startswith("qrun-") for ln in squeue("-o", "%j").splitlines()) \
                and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not any(ln.startswith("qrun-") for ln in squeue("-o", "%j").splitlines()), squeue()
    finally:
        subprocess.run(["scancel", hid], env=slurm_env, capture_output=True, timeout=30)
