"""The recipes of docs/habits.md and docs/cluster.md that need a real sshd or a real Slurm, run
as written against the namespace hosts of tests/cluster.py (root only; skips elsewhere), and
the ssh and Slurm launcher behaviours they rely on: one master connection for concurrent
first jobs, srun starting the stub in `/`, qrun inside an allocation.

The hosts h1..h3 appear under the names the docs use (node1..node3, host) through an ssh
config of aliases and an `ssh` on PATH that uses it; the job's directory, the cluster file
and the recipes' commands (cmd, cmd1, cmd2) live in a directory shared with the hosts, as
on a cluster with a shared file system."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import recipes
from hosts import HostCluster

SCRIPTS = {
    "cmd": '#!/bin/sh\necho "ran${*:+ $*} in $(pwd) on $(hostname)"\n',
    "cmd1": "#!/bin/sh\necho one\n",
    "cmd2": "#!/bin/sh\nexec tr o 0\n",
}
ALIASES = {"host": 0, "node1": 0, "node2": 1, "node3": 2}


@dataclass
class RealSite:
    base: Path
    env: dict[str, str]
    home_ip: str
    ssh_config: str

    @property
    def work(self) -> Path:
        return self.base / "work"

    def run(self, line: str, *, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/bin/sh", "-c", line], cwd=cwd or self.work, env=env or self.env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def real_site(qrun_cmd: list[str], ssh_cluster: object, cluster_hosts: HostCluster,
              cluster_state_dir: str) -> Iterator[RealSite]:
    base = Path(cluster_state_dir) / f"recipes-{os.getpid()}"
    bin_dir = base / "bin"
    for d in (bin_dir, base / "work", base / "state"):
        d.mkdir(parents=True, exist_ok=True)
    aliases = base / "ssh_config"
    blocks = [f"Host {name}\n    HostName {cluster_hosts[i].ip}\n    HostKeyAlias {cluster_hosts[i].ip}\n"
              for name, i in ALIASES.items()]
    # Include first: after a Host line it would belong to that Host block only.
    aliases.write_text(f"Include {ssh_cluster.ssh_config}\n" + "".join(blocks))  # type: ignore[attr-defined]
    scripts = dict(SCRIPTS, ssh=f'#!/bin/sh\nexec /usr/bin/ssh -F {aliases} "$@"\n')
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (base / "work" / "FILE").write_text("from a file\n")
    conf = base / "cluster.toml"
    home_ip = cluster_hosts[0].home_ip
    conf.write_text(f'home_addr = "{home_ip}"\n' + "".join(f"[hosts.{n}]\n" for n in ALIASES))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QRUN_", "SLURM"))}
    env.update(QRUN_CONF=str(conf), XDG_STATE_HOME=str(base / "state"),
               PATH=os.pathsep.join([str(bin_dir), os.path.dirname(qrun_cmd[0]), env.get("PATH", "")]))
    yield RealSite(base, env, home_ip, ssh_cluster.ssh_config)  # type: ignore[attr-defined]


@pytest.fixture
def slurm_env(real_site: RealSite, slurm_cluster: object) -> dict[str, str]:
    env = dict(slurm_cluster.env)  # type: ignore[attr-defined]
    env.update({k: v for k, v in real_site.env.items() if k in ("PATH", "QRUN_CONF", "XDG_STATE_HOME")})
    return env


ANY = "h[123]"
EXPECT_SSH: dict[str, str] = {   # recipe -> regex for its stdout
    "qrun -- cmd": rf"ran in {{work}} on {ANY}\n",
    "qrun -w host -- cmd": r"ran in {work} on h1\n",
    'for h in node1 node2 node3; do qrun -w "$h" -D / -- uptime; done': r"(.*load average.*\n){3}",
    "qrun -w node1 -- cmd": r"ran in {work} on h1\n",
    "qrun -w 'node[1-3]' -- cmd": rf"ran in {{work}} on {ANY}\n",
    "qrun … < FILE": r"from a file\n",
    'qrun -D "$HOME" -- cmd': rf"ran in {{home}} on {ANY}\n",
    "qrun -w host -- cmd args": r"ran args in {work} on h1\n",
    "qrun --via 'ssh host' --home-addr ADDR -- cmd args": r"ran args in {work} on h1\n",
    "qrun -w host -- sh -c 'cmd1 \\| cmd2'": r"0ne\n",
    "qrun … < /dev/null": "",
    "qrun hosts": r"HOST .*\n(.*\n)*.*node3.*\n(.*\n)*",
    "qrun hosts -w LIST": r"HOST .*\nnode1 .*\nnode2 .*\n(\(.*\)\n)?",
    "ssh HOST true": "",
    "ssh -o ControlPath=~/.cache/qrun/ssh-%C -O exit alice@10.0.0.11": "",
}


def test_every_ssh_recipe_has_an_expectation() -> None:
    assert set(recipes.runs(recipes.SSH)) == set(EXPECT_SSH)


@pytest.mark.parametrize("recipe", recipes.runs(recipes.SSH))
def test_ssh_recipe(real_site: RealSite, recipe: str) -> None:
    if "-O exit" in recipe:  # closes the master of a job that just ran on node1
        assert real_site.run("qrun -w node1 -- true").returncode == 0
    r = real_site.run(recipes.shell_line(recipe, home_addr=real_site.home_ip))
    assert r.returncode == 0, f"{recipe}: status {r.returncode}\n{r.stderr}"
    want = EXPECT_SSH[recipe].replace("{work}", re.escape(str(real_site.work)))
    want = want.replace("{home}", re.escape(os.path.expanduser("~")))
    assert re.fullmatch(want, r.stdout), (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "ControlSocket" not in r.stderr, r.stderr
    if "-O exit" in recipe:
        assert "Exit request sent." in r.stderr
    if recipe.startswith("setsid"):
        log = real_site.work / "job.log"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (log.exists() and log.read_text()):
            time.sleep(0.2)
        assert re.fullmatch(rf"ran in {re.escape(str(real_site.work))} on {ANY}\n", log.read_text())
        log.unlink()


def test_concurrent_first_jobs_print_nothing(real_site: RealSite) -> None:
    """Before: the jobs that lost the race for the control socket printed `ControlSocket ...
    already exists, disabling multiplexing` and logged in on their own."""
    real_site.run("ssh -o ControlPath=~/.cache/qrun/ssh-%C -O exit node2")
    procs = [subprocess.Popen(["/bin/sh", "-c", "qrun -w node2 -- hostname"], cwd=real_site.work,
                              env=real_site.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, results
    assert [out for out, _ in results] == ["h2\n"] * 4
    assert [err for _, err in results] == [""] * 4


def test_slurm_recipe(real_site: RealSite, slurm_env: dict[str, str]) -> None:
    (recipe,) = [r for r in recipes.runs(recipes.SLURM) if r.startswith("qrun")]
    r = real_site.run(recipes.shell_line(recipe), env=slurm_env)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rf"ran in {re.escape(str(real_site.work))} on {ANY}\n", r.stdout), r.stdout
    assert r.stderr == ""


def test_sbatch_recipe(real_site: RealSite, slurm_env: dict[str, str]) -> None:
    """qrun inside an allocation, with a cluster file whose home_addr names the submit host."""
    (recipe,) = [r for r in recipes.runs(recipes.SLURM) if r.startswith("sbatch")]
    r = real_site.run(recipes.shell_line(recipe), env=slurm_env)
    assert r.returncode == 0, r.stderr
    m = re.search(r"Submitted batch job (\d+)", r.stdout)
    assert m, r.stdout
    job = m.group(1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        q = subprocess.run(["squeue", "-h", "-j", job], env=slurm_env, capture_output=True, text=True, timeout=30)
        if q.returncode == 0 and not q.stdout.strip():
            break
        time.sleep(0.5)
    out = real_site.work / f"slurm-{job}.out"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not out.exists():
        time.sleep(0.2)
    assert re.fullmatch(rf"{ANY}\n", out.read_text()), out.read_text()


def test_slurm_stub_starts_in_root_and_exclude_reaches_srun(real_site: RealSite, slurm_env: dict[str, str],
                                                            tmp_path: Path) -> None:
    """tmp_path does not exist on the nodes: srun used to start there and slurmstepd said
    `couldn't chdir to ... going to /tmp instead`, twice, on every transparent job."""
    (tmp_path / "input").write_text("home\n")
    r = real_site.run("qrun --launcher slurm --transparent -- sh -c 'pwd; cat input'", env=slurm_env,
                      cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{tmp_path}\nhome\n", "")
    r = real_site.run("qrun --launcher slurm -x 'h[1-2]' -D / -- hostname", env=slurm_env)
    assert (r.returncode, r.stdout) == (0, "h3\n"), r.stderr


def test_stub_command_paths_are_shared(real_site: RealSite) -> None:
    """The fixture's premise: the hosts see the shared directory (else every recipe above
    would fail with 122 for a reason of the test's own)."""
    r = real_site.run(f"qrun -w node3 -- ls {real_site.work}/FILE")
    assert (r.returncode, r.stdout) == (0, f"{real_site.work}/FILE\n"), r.stderr
    assert sys.executable  # the stub runs with this interpreter on the hosts
