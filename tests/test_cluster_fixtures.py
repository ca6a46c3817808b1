"""The ssh and Slurm test clusters (tests/cluster.py) behave like real ones."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time

import pytest
from cluster import SlurmCluster, SshCluster, slurm_missing, ssh_missing
from hosts import HostCluster, can_make_hosts

# Anything run inside the hosts uses the system python: the project's may live elsewhere.
PY = "/usr/bin/python3"
JOB_END_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def ssh(cluster: SshCluster, host: str, *cmd: str, timeout: float = 30
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cluster.ssh_argv(host, *cmd), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)


# -- ssh ------------------------------------------------------------------------------------------


def test_ssh_runs_on_the_named_host_and_comes_from_home(
        ssh_cluster: SshCluster, cluster_hosts: HostCluster) -> None:
    h2 = cluster_hosts["h2"]
    r = ssh(ssh_cluster, "h2", "hostname; echo $SSH_CONNECTION")
    assert r.returncode == 0, r.stderr + ssh_cluster.logs("h2")
    name, connection = r.stdout.splitlines()[:2]
    assert name == "h2"
    client_ip, _, server_ip, server_port = connection.split()
    assert (client_ip, server_ip, server_port) == (h2.home_ip, h2.ip, "22")


def test_every_host_answers_by_name_and_by_ip(
        ssh_cluster: SshCluster, cluster_hosts: HostCluster) -> None:
    for h in cluster_hosts:
        for target in (h.name, h.ip):
            # ssh hands the remote shell one command line, so the words must be quoted for it.
            r = ssh(ssh_cluster, target,
                    shlex.join([PY, "-c", "import socket; print(socket.gethostname())"]))
            assert (r.returncode, r.stdout.strip()) == (0, h.name), r.stderr


def test_second_ssh_goes_through_the_control_master(ssh_cluster: SshCluster) -> None:
    assert ssh(ssh_cluster, "h1", "true").returncode == 0
    check = subprocess.run(["ssh", "-F", ssh_cluster.ssh_config, "-O", "check", "h1"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    assert check.returncode == 0, check.stderr
    r = ssh(ssh_cluster, "h1", "echo", "again")
    assert (r.returncode, r.stdout) == (0, "again\n"), r.stderr


def test_client_key_is_invisible_and_useless_inside_the_hosts(
        ssh_cluster: SshCluster, cluster_hosts: HostCluster) -> None:
    h1, h2 = cluster_hosts["h1"], cluster_hosts["h2"]
    assert h1.run(["test", "-e", ssh_cluster.key], timeout=10).returncode != 0
    # Even with the key in hand, a login from another host than home is refused.
    leaked = os.path.join(ssh_cluster.state_dir, "leaked-key")
    shutil.copyfile(ssh_cluster.key, leaked)
    os.chmod(leaked, 0o600)
    try:
        r = h1.run(["ssh", "-F", "/dev/null", "-i", leaked, "-o", "BatchMode=yes",
                    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-o", "ConnectTimeout=5", f"root@{h2.ip}", "hostname"], timeout=30)
    finally:
        os.unlink(leaked)
    assert r.returncode == 255
    assert "Permission denied" in r.stderr
    assert "not allowed because not listed in AllowUsers" in ssh_cluster.logs("h2")


def test_refuse_makes_ssh_fail_and_allow_restores_it(ssh_cluster: SshCluster) -> None:
    # With a master already open, refuse() must still take effect.
    assert ssh(ssh_cluster, "h3", "true").returncode == 0
    ssh_cluster.refuse("h3")
    try:
        r = ssh(ssh_cluster, "h3", "hostname")
        assert r.returncode == 255, r.stdout
        assert "Permission denied" in r.stderr
        assert ssh(ssh_cluster, "h2", "true").returncode == 0  # only h3 is affected
    finally:
        ssh_cluster.allow("h3")
    r = ssh(ssh_cluster, "h3", "hostname")
    assert (r.returncode, r.stdout) == (0, "h3\n"), r.stderr


# -- Slurm ----------------------------------------------------------------------------------------


def test_srun_on_a_named_node(slurm_cluster: SlurmCluster) -> None:
    r = slurm_cluster.run(slurm_cluster.srun_argv("-N1", "-w", "h2", "hostname"))
    assert (r.returncode, r.stdout) == (0, "h2\n"), r.stderr + slurm_cluster.logs()


def test_srun_on_all_nodes(slurm_cluster: SlurmCluster) -> None:
    r = slurm_cluster.run(slurm_cluster.srun_argv("-N3", "-l", "hostname"))
    assert r.returncode == 0, r.stderr + slurm_cluster.logs()
    assert sorted(r.stdout.splitlines()) == ["0: h1", "1: h2", "2: h3"]


def test_srun_task_runs_inside_the_host(slurm_cluster: SlurmCluster,
                                        cluster_hosts: HostCluster) -> None:
    code = "import os, socket; print(socket.gethostname(), os.getpid() < 1000)"
    r = slurm_cluster.run(slurm_cluster.srun_argv("-N1", "-w", "h3", PY, "-c", code))
    # A small pid means the task lives in h3's pid namespace, not just under its name.
    assert (r.returncode, r.stdout) == (0, "h3 True\n"), r.stderr


def test_sbatch_wrap_job_completes(slurm_cluster: SlurmCluster) -> None:
    jobs = os.path.join(slurm_cluster.state_dir, "jobs")
    os.makedirs(jobs, exist_ok=True)
    r = slurm_cluster.run(["sbatch", "--parsable", "-N1", "-o", f"{jobs}/job-%j.out",
                           f"--chdir={jobs}", "--wrap", "hostname; echo finished"])
    assert r.returncode == 0, r.stderr + slurm_cluster.logs()
    job_id = r.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 30
    state = ""
    while time.monotonic() < deadline:
        show = slurm_cluster.run(["scontrol", "show", "job", job_id], timeout=10)
        m = re.search(r"\bJobState=(\S+)", show.stdout)
        state = m.group(1) if m else ""
        if state in JOB_END_STATES:
            break
        time.sleep(0.1)
    assert state == "COMPLETED", show.stdout + slurm_cluster.logs()
    assert re.search(r"\bExitCode=0:0\b", show.stdout)
    with open(f"{jobs}/job-{job_id}.out") as f:
        out = f.read().splitlines()
    assert out[-1] == "finished" and out[0] in ("h1", "h2", "h3")


def test_srun_fails_while_slurm_is_down_and_works_after_up(slurm_cluster: SlurmCluster) -> None:
    slurm_cluster.down()
    try:
        # The subprocess timeout is the bound: srun must give up by itself before it.
        r = slurm_cluster.run(slurm_cluster.srun_argv("-N1", "--immediate=5", "true"), timeout=20)
        assert r.returncode != 0
        assert "Unable to contact slurm controller" in r.stderr
    finally:
        slurm_cluster.up()
    r = slurm_cluster.run(slurm_cluster.srun_argv("-N1", "hostname"))
    assert r.returncode == 0, r.stderr + slurm_cluster.logs()
    assert r.stdout in ("h1\n", "h2\n", "h3\n")


# -- teardown -------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_stop_leaves_nothing_running_and_is_idempotent() -> None:
    for reason in (can_make_hosts()[1], ssh_missing(), slurm_missing()):
        if reason:
            pytest.skip(reason)
    state = tempfile.mkdtemp(prefix="qrun-cl-", dir="/tmp")
    try:
        with HostCluster(n=2, hide=[SshCluster.home_only_dir(state)], share=[state]) as hosts:
            sshc = SshCluster(hosts, state).start()
            slurm = SlurmCluster(hosts, state).start()
            assert ssh(sshc, "h2", "true").returncode == 0
            pids = sshc.pids() + slurm.pids()
            assert len(pids) == 2 + 2 + 2  # sshd per host; munged, slurmctld; slurmd per host
            slurm.stop()
            sshc.stop()
            assert [p for p in pids if _alive(p)] == []
            assert sshc.pids() == [] and slurm.pids() == []
            master = subprocess.run(["ssh", "-F", sshc.ssh_config, "-O", "check", "h2"],
                                    stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            assert master.returncode != 0
            slurm.stop()
            sshc.stop()
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(state)
