"""Plain remote execution (`qrun CMD` without --transparent): GNU Queue's `queue -i -w -p`."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from hosts import HostCluster


def plain(qrun_cmd: list[str], hosts: HostCluster, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    h = hosts[1]
    cmd = qrun_cmd + ["--via", " ".join(h.nsenter_prefix()), "--home-addr", h.home_ip, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


def test_runs_on_the_host_with_its_own_files(qrun_cmd: list[str], hosts: HostCluster) -> None:
    r = plain(qrun_cmd, hosts, "-D", "/", "--", "/bin/sh", "-c", "hostname; pwd; ls -d /tmp", stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["h2", "/", "/tmp"]


def test_missing_remote_cwd_is_an_error(qrun_cmd: list[str], hosts: HostCluster, tmp_path: Path) -> None:
    # tmp_path exists at home but not on the host (its /tmp is private): no silent fallback
    r = plain(qrun_cmd, hosts, "--", "/bin/pwd", cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert r.returncode == 122
    assert r.stdout == ""
    assert r.stderr.strip() == f"qrun: the working directory {tmp_path} does not exist on h2"


def test_export(qrun_cmd: list[str], hosts: HostCluster) -> None:
    env = dict(os.environ, MYVAR="from-home", OTHERVAR="also")
    show = ["--", "/bin/sh", "-c", 'echo "${MYVAR:-unset} ${OTHERVAR:-unset} ${NEWVAR:-unset}"']
    assert plain(qrun_cmd, hosts, "-D", "/", *show, env=env).stdout == "from-home also unset\n"
    assert plain(qrun_cmd, hosts, "-D", "/", "--export=NONE", *show, env=env).stdout == "unset unset unset\n"
    r = plain(qrun_cmd, hosts, "-D", "/", "--export=MYVAR,NEWVAR=given", *show, env=env)
    assert r.stdout == "from-home unset given\n", r.stderr


def test_output_is_teed_into_a_log(qrun_cmd: list[str], hosts: HostCluster, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    r = plain(qrun_cmd, hosts, "-D", "/", "-o", str(log), "--", "/bin/sh", "-c", "echo out; echo err >&2",
              stdin=subprocess.DEVNULL)
    assert r.returncode == 0
    assert (r.stdout, r.stderr) == ("out\n", "err\n")
    assert sorted(log.read_text().splitlines()) == ["err", "out"]


def test_status_stdin_and_signals(qrun_cmd: list[str], hosts: HostCluster) -> None:
    assert plain(qrun_cmd, hosts, "-D", "/", "--", "/bin/sh", "-c", "exit 7").returncode == 7
    r = plain(qrun_cmd, hosts, "-D", "/", "--", "/bin/sh", "-c", "kill -TERM $$")
    assert r.returncode == 128 + signal.SIGTERM
    r = plain(qrun_cmd, hosts, "-D", "/", "--", "/usr/bin/wc", "-l", input="a\nb\nc\n")
    assert r.stdout.strip() == "3"
    r = plain(qrun_cmd, hosts, "-D", "/", "--", "no-such-command-plain", stdin=subprocess.DEVNULL)
    assert r.returncode == 127
    assert "qrun: no-such-command-plain: command not found" in r.stderr
