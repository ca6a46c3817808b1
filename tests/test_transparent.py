"""Real programs under `qrun --transparent` on a namespace test host, compared with native
runs, and the failure modes a user meets (bad input, a home node that dies)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import skip_or_fail
from hosts import HostCluster

GCC = shutil.which("gcc")
BUSYBOX = shutil.which("busybox")


def run(cmd: list[str], cwd: Path | str | None = None, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def compile_c(workdir: Path, name: str, source: str, *flags: str) -> Path:
    """Build a test program from C source at home; returns the executable."""
    src = workdir / f"{name}.c"
    src.write_text(source)
    exe = workdir / name
    r = run([GCC or "gcc", "-O1", *flags, "-o", str(exe), str(src)])
    assert r.returncode == 0, r.stderr
    return exe


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def test_the_job_sees_home_not_the_host(qrun_prefix: list[str], hosts: HostCluster, workdir: Path) -> None:
    (workdir / "only-at-home.txt").write_text("home data\n")
    r = run(qrun_prefix + ["/bin/sh", "-c", "cat only-at-home.txt; hostname; cat /proc/sys/kernel/hostname; pwd"],
            cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["home data", os.uname().nodename, os.uname().nodename, str(workdir)]
    # ...while the host itself cannot see that file at all
    inside = hosts[0].run(["/bin/sh", "-c", f"hostname; test -e {workdir}/only-at-home.txt && echo visible"])
    assert inside.stdout.split() == ["h1"]


@pytest.mark.skipif(not BUSYBOX, reason="busybox (busybox-static) is not installed")
def test_busybox_script_reads_home_files_and_writes_home_tmp(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    data = workdir / "data"
    data.mkdir()
    for i in range(20):
        (data / f"f{i:02}.txt").write_text("".join(f"line {i} {j}\n" for j in range(i + 1)))
    out = Path("/tmp") / f"qrun-bb-{os.getpid()}"
    script = workdir / "count.sh"
    script.write_text(f"""#!{BUSYBOX} sh
set -e
mkdir -p {out}
for f in data/*.txt; do wc -l < "$f" > {out}/$(basename "$f" .txt).count; done
cat data/*.txt | sort | uniq | wc -l > {out}/total
ls {out} | wc -l
""")
    script.chmod(0o755)
    try:
        native = run([str(script)], cwd=workdir)
        expect = tree_digest(out)
        shutil.rmtree(out)
        remote = run(qrun_prefix + [str(script)], cwd=workdir)
        assert remote.returncode == native.returncode == 0, remote.stderr
        assert remote.stdout == native.stdout == "21\n"
        assert tree_digest(out) == expect
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.skipif(not GCC or not shutil.which("make"), reason="gcc and make are needed")
def test_make_and_gcc_build_a_project_at_home(transparent: list[str], tmp_path: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    src = tmp_path / "proj"
    src.mkdir()
    (src / "util.h").write_text("int scale(int);\n")
    (src / "util.c").write_text('#include "util.h"\nint scale(int x) { return 3 * x; }\n')
    (src / "main.c").write_text('#include <stdio.h>\n#include "util.h"\n'
                                'int main(void) { printf("%d\\n", scale(14)); return 0; }\n')
    (src / "Makefile").write_text("prog: main.o util.o\n\tgcc -o $@ $^\n"
                                  "%.o: %.c util.h\n\tgcc -O2 -c $<\n")
    native_dir = tmp_path / "native"
    shutil.copytree(src, native_dir)
    n = run(["make", "-s"], cwd=native_dir)
    assert n.returncode == 0, n.stderr
    r = run(qrun_prefix + ["make", "-s"], cwd=src)
    assert r.returncode == 0, r.stderr
    assert tree_digest(src) == tree_digest(native_dir)
    assert run([str(src / "prog")]).stdout == "42\n"


def test_python_script_runs_with_its_home_path(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    script = workdir / "s.py"
    script.write_text("#!/usr/bin/python3\nimport os, socket, sys, json\n"
                      "json.dump({'file': __file__, 'cwd': os.getcwd(), 'host': socket.gethostname(),"
                      " 'argv': sys.argv[1:], 'files': sorted(os.listdir('.'))}, open('out.json', 'w'))\n"
                      "print(open('out.json').read())\n")
    script.chmod(0o755)
    native = run([str(script), "a b", "c"], cwd=workdir)
    (workdir / "out.json").unlink()
    remote = run(qrun_prefix + [str(script), "a b", "c"], cwd=workdir)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == native.stdout
    assert f'"file": "{script}"' in remote.stdout


@pytest.mark.skipif(not GCC, reason="gcc is needed")
def test_static_multithreaded_binary(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    exe = compile_c(workdir, "t", r'''
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static FILE *out;
static void *work(void *arg) {
    long id = (long)arg;
    char name[32]; snprintf(name, sizeof name, "part%ld", id);
    FILE *f = fopen(name, "w");
    for (int i = 0; i < 1000; i++) fprintf(f, "%ld:%d\n", id, i);
    fclose(f);
    pthread_mutex_lock(&m); fprintf(out, "thread %ld tid_differs=%d\n", id, (int)(syscall(SYS_gettid) != getpid())); pthread_mutex_unlock(&m);
    return 0;
}
int main(void) {
    pthread_t t[6]; out = fopen("log", "w");
    for (long i = 0; i < 6; i++) pthread_create(&t[i], 0, work, (void *)i);
    for (int i = 0; i < 6; i++) pthread_join(t[i], 0);
    fclose(out); puts("done"); return 0;
}
''', "-static", "-pthread")
    native = run([str(exe)], cwd=workdir)
    expect = tree_digest(workdir)
    expect_log = sorted((workdir / "log").read_text().splitlines())
    for p in workdir.glob("part*"):
        p.unlink()
    (workdir / "log").unlink()
    remote = run(qrun_prefix + [str(exe)], cwd=workdir)
    assert remote.returncode == 0 and remote.stdout == native.stdout == "done\n", remote.stderr
    assert sorted((workdir / "log").read_text().splitlines()) == expect_log
    got = tree_digest(workdir)
    assert {k: v for k, v in got.items() if k != "log"} == {k: v for k, v in expect.items() if k != "log"}


# ---- bad input -------------------------------------------------------------------------------

def test_missing_command_is_a_usage_error(qrun_cmd: list[str]) -> None:
    r = run(qrun_cmd + ["--transparent"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "qrun: missing command (usage: qrun --transparent [--host NAME] -- CMD [ARGS...])"]


def test_unknown_host(qrun_cmd: list[str]) -> None:
    from qrun.homenode import exitcodes
    r = run(qrun_cmd + ["--transparent", "--host", "nosuchhost", "--", "true"])
    assert r.returncode == exitcodes.NO_HOST
    assert r.stderr.strip() == "qrun: unknown host 'nosuchhost' (known: local, sandbox; or use --via PREFIX)"


def test_command_not_found(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    # A PATH every user can search: a directory of it the user may not enter makes the
    # search end in EACCES (126), natively as under qrun (execvp's rule), which is tested below.
    env = dict(os.environ, PATH="/usr/local/bin:/usr/bin:/bin")
    r = run(qrun_prefix + ["no-such-command-qrun"], cwd=workdir, env=env)
    assert r.returncode == 127
    assert "qrun: no-such-command-qrun: command not found" in r.stderr.splitlines()
    locked = workdir / "locked"
    locked.mkdir(mode=0o000)
    try:
        env["PATH"] = f"{locked}:/usr/bin:/bin"
        native = run(["env", "no-such-command-qrun"], cwd=workdir, env=env)
        r = run(qrun_prefix + ["no-such-command-qrun"], cwd=workdir, env=env)
        assert r.returncode == native.returncode, (r.stderr, native.stderr)
    finally:
        locked.chmod(0o755)


def test_unreachable_launcher(qrun_cmd: list[str]) -> None:
    r = run(qrun_cmd + ["--transparent", "--via", "/nonexistent/launcher", "--home-addr", "127.0.0.1",
                        "--", "true"])
    assert r.returncode == 125
    assert r.stderr.strip() == "qrun: cannot start the launcher `/nonexistent/launcher`: No such file or directory"


def _job_processes(hosts: HostCluster, marker: str) -> list[str]:
    r = hosts[0].run(["/bin/sh", "-c", f"ps -eo pid,args | grep -F {marker} | grep -v grep || true"])
    return [line for line in r.stdout.splitlines() if line.strip()]


def test_home_node_killed_mid_job_leaves_nothing_running(qrun_prefix: list[str], hosts: HostCluster,
                                                         workdir: Path) -> None:
    """Home dies: the job runs on for its lease (3 s past the 10 s silence timeout), then
    nothing of it is left on the host."""
    marker = f"299.{os.getpid()}"  # a unique argument to find the job's sleep by
    prefix = qrun_prefix[:-1] + ["--lease", "3", "--"]
    proc = subprocess.Popen(prefix + ["/bin/sh", "-c", f"echo started; exec sleep {marker}"],
                            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    deadline = time.monotonic() + 10
    while not _job_processes(hosts, marker) and time.monotonic() < deadline:
        time.sleep(0.05)  # "started" is printed just before the exec
    assert _job_processes(hosts, marker), "the job should be running on h1"
    os.killpg(proc.pid, signal.SIGKILL)   # the home node (qrun and its server) dies
    proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while _job_processes(hosts, marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _job_processes(hosts, marker) == []


def test_network_cut_past_the_lease_kills_the_job_and_says_so(qrun_cmd: list[str], hosts: HostCluster,
                                                              workdir: Path) -> None:
    h = hosts[1]
    if not h.iptables_available():
        skip_or_fail("iptables is not installed")
    marker = f"298.{os.getpid()}"
    cmd = qrun_cmd + ["--transparent", "--timeout", "3", "--lease", "4", "--via", " ".join(h.nsenter_prefix()),
                      "--home-addr", h.home_ip, "--", "/bin/sh", "-c", f"echo started; exec sleep {marker}"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "started\n"
        h.block_home()
        _, err = proc.communicate(timeout=30)
    finally:
        h.unblock_home()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 124
    assert "qrun: lost contact with" in err and "past the job's lease); the job was killed" in err, err
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = h.run(["/bin/sh", "-c", f"ps -eo args | grep -F {marker} | grep -v grep || true"])
        if not r.stdout.strip():
            break
        time.sleep(0.5)
    assert r.stdout.strip() == ""


def test_a_job_writing_home_outlives_a_partition(qrun_cmd: list[str], hosts: HostCluster,
                                                 workdir: Path, tmp_path: Path) -> None:
    """All traffic between h2 and home dropped for 10 s (iptables, in h2) while the job
    writes 50 MB to home, with --timeout 3: the job goes on, the stub reconnects, the file
    is the one a native run writes, and the record counts the reconnect."""
    h = hosts[1]
    if not h.iptables_available():
        skip_or_fail("iptables is not installed")
    job = ("i=0; while [ $i -lt 50 ]; do i=$((i+1)); head -c 1000000 /dev/zero | tr '\\0' x >> big; "
           "echo $i >> progress; sleep 0.2; done; echo done")
    native = tmp_path / "native"
    native.mkdir()
    subprocess.run(["/bin/sh", "-c", job], cwd=native, check=True, capture_output=True, timeout=120)
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    cmd = qrun_cmd + ["--transparent", "--timeout", "3", "--via", " ".join(h.nsenter_prefix()),
                      "--home-addr", h.home_ip, "--", "/bin/sh", "-c", job]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    out, err = h.partition_job(proc, str(workdir / "progress"), 10)
    assert (proc.returncode, out) == (0, "done\n"), err
    digest = [hashlib.sha256((d / "big").read_bytes()).hexdigest() for d in (native, workdir)]
    assert digest[0] == digest[1]
    assert (workdir / "progress").read_text() == (native / "progress").read_text()
    assert "lost contact" in err, err
    import sqlite3
    with sqlite3.connect(tmp_path / "state" / "qrun" / "jobs.db") as db:
        state, reconnects = db.execute("SELECT state, reconnects FROM jobs").fetchall()[-1]
    assert state == "DONE" and reconnects >= 1


def test_a_job_outlives_its_home_stopped_for_30_s(qrun_cmd: list[str], hosts: HostCluster,
                                                  workdir: Path) -> None:
    """qrun SIGSTOPped for 30 s (with --timeout 5) while the job keeps writing home: the
    job waits for it and finishes whole once it is continued."""
    h = hosts[1]
    job = "for i in $(seq 1 60); do echo $i >> log; echo line $i; sleep 0.1; done"
    cmd = qrun_cmd + ["--transparent", "--timeout", "5", "--via", " ".join(h.nsenter_prefix()),
                      "--home-addr", h.home_ip, "--", "/bin/sh", "-c", job]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (workdir / "log").exists():
            assert time.monotonic() < deadline, "the job did not get going"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(30)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
    assert proc.returncode == 0, err
    assert out == "".join(f"line {i}\n" for i in range(1, 61))
    assert (workdir / "log").read_text() == "".join(f"{i}\n" for i in range(1, 61))


def test_exit_status_and_signals(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    assert run(qrun_prefix + ["/bin/sh", "-c", "exit 42"], cwd=workdir).returncode == 42
    r = run(qrun_prefix + ["/bin/sh", "-c", "kill -USR1 $$"], cwd=workdir)
    assert r.returncode == 128 + signal.SIGUSR1
    assert r.stderr.strip().endswith("qrun: job killed by signal 10 (SIGUSR1)")


def test_stdin_streams_through(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    data = "".join(f"{i}\n" for i in range(20000))
    r = subprocess.run(qrun_prefix + ["/bin/sh", "-c", "tee copy | sort -n | tail -1; wc -l < copy"], input=data,
                       capture_output=True, text=True, cwd=workdir, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["19999", "20000"]


def test_signal_at_home_reaches_the_job(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    script = "trap 'echo got-term; exit 5' TERM; echo ready; while :; do sleep 0.1; done"
    proc = subprocess.Popen(qrun_prefix + ["/bin/sh", "-c", script], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert out == "got-term\n"
    assert proc.returncode == 5


def test_signal_to_a_home_pid_reaches_the_remote_process(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    script = "trap 'echo got-usr1; exit 0' USR1; echo $$ > pid; while :; do sleep 0.1; done"
    proc = subprocess.Popen(qrun_prefix + ["/bin/sh", "-c", script], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pidfile = workdir / "pid"
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    home_pid = int(pidfile.read_text())
    # the job's $$ is a real process here at home (its deputy)
    assert Path(f"/proc/{home_pid}").exists()
    os.kill(home_pid, signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
    assert out == "got-usr1\n", err
    assert proc.returncode == 0


def test_sandbox_host_is_isolated(qrun_cmd: list[str], workdir: Path) -> None:
    from qrun.homenode.launchers import sandbox_support
    ok, why = sandbox_support()
    if not ok:
        pytest.skip(why)
    (workdir / "f").write_text("x\n")
    r = run(qrun_cmd + ["--transparent", "--host", "sandbox", "-v", "--", "/bin/sh", "-c", "cat f; hostname"],
            cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["x", os.uname().nodename]
    assert "qrun: host=sandbox status=0" in r.stderr


def test_sandbox_job_submitted_from_below_the_home_directory(qrun_cmd: list[str]) -> None:
    """The sandbox hides the home directory and the submit directory: one inside the
    other is hidden with it (it used to fail the job: "cannot hide ...")."""
    from qrun.homenode.launchers import sandbox_support
    ok, why = sandbox_support()
    if not ok:
        pytest.skip(why)
    home = Path(tempfile.mkdtemp(prefix="qrun-home-", dir="/var/tmp"))   # (not below /tmp: that is kept)
    try:
        sub = home / "project"
        sub.mkdir()
        (sub / "f").write_text("x\n")
        env = {**os.environ, "HOME": str(home)}
        r = subprocess.run(qrun_cmd + ["--transparent", "--host", "sandbox", "--", "/bin/sh", "-c", "pwd; cat f"],
                           cwd=sub, env=env, capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, f"{sub}\nx\n"), r.stderr
        r = subprocess.run(qrun_cmd + ["--host", "sandbox", "--", "ls", str(home)], cwd="/", env=env,
                           capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, ""), r.stderr   # (plain: the host's own, hidden, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ---- nothing silently wrong ---------------------------------------------------------------

DENIED_C = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
static const char *e(long rc) { return rc == -1 ? strerrorname_np(errno) : "ok"; }
int main(void) {
    for (int i = 0; i < 2; i++) {
        printf("io_uring_setup: %s\n", e(syscall(SYS_io_uring_setup, 1, NULL)));
        printf("sethostname: %s\n", e(sethostname("x", 1)));
        printf("nr1000: %s\n", e(syscall(1000)));
    }
    return 0;
}
'''


@pytest.mark.skipif(not GCC, reason="gcc is needed")
def test_unsupported_calls_fail_with_an_errno_and_one_warning(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    exe = compile_c(workdir, "d", DENIED_C)
    r = run(qrun_prefix + [str(exe)], cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["io_uring_setup: ENOSYS", "sethostname: EPERM", "nr1000: ENOSYS"] * 2
    warnings = [line for line in r.stderr.splitlines() if line.startswith("qrun-stub: ")]
    assert len(warnings) == 3, r.stderr  # one line per call, not per attempt
    assert any("io_uring_setup() is not supported under qrun: ENOSYS" in w for w in warnings)
    assert any("unsupported syscall number 1000: ENOSYS" in w for w in warnings)


def test_path_policy_local_and_home_overrides(qrun_cmd: list[str], hosts: HostCluster, workdir: Path) -> None:
    h = hosts[2]
    name = f"qrun-policy-{os.getpid()}"
    home_side = Path("/dev/shm") / name
    home_side.write_text("home\n")
    try:
        assert h.run(["/bin/sh", "-c", f"echo host > /dev/shm/{name}"]).returncode == 0
        base = qrun_cmd + ["--transparent", "--via", " ".join(h.nsenter_prefix()), "--home-addr", h.home_ip]
        cat = ["--", "/bin/cat", str(home_side)]
        assert run(base + cat, cwd=workdir).stdout == "host\n"            # /dev is local by default
        assert run(base + ["--home", "/dev/shm"] + cat, cwd=workdir).stdout == "home\n"
        (workdir / "f").write_text("at home\n")
        assert h.run(["/bin/sh", "-c", f"mkdir -p {workdir} && echo on host > {workdir}/f"]).returncode == 0
        assert run(base + ["--", "/bin/cat", "f"], cwd=workdir).stdout == "at home\n"
        assert run(base + ["--local", str(workdir), "--", "/bin/cat", "f"], cwd=workdir).stdout == "on host\n"
    finally:
        home_side.unlink()
        h.run(["/bin/sh", "-c", f"rm -rf /dev/shm/{name} {workdir}"])


def test_stub_killed_mid_job_takes_the_job_with_it(qrun_prefix: list[str], hosts: HostCluster,
                                                   workdir: Path) -> None:
    marker = f"297.{os.getpid()}"
    proc = subprocess.Popen(qrun_prefix + ["/bin/sh", "-c", f"echo started; exec sleep {marker}"],
                            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    h = hosts[0]
    deadline = time.monotonic() + 10
    while not _job_processes(hosts, marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    stubs = h.run(["/bin/sh", "-c", "pgrep -f remote.stub"]).stdout.split()
    assert stubs, "no stub running on h1"
    h.run(["kill", "-KILL", *stubs])
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 124
    assert "died before the job ended" in err
    deadline = time.monotonic() + 10
    while _job_processes(hosts, marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _job_processes(hosts, marker) == []  # PTRACE_O_EXITKILL


def test_ctrl_c_reaches_the_job_and_twice_stops_it(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    script = "trap 'echo got-int' INT; echo ready; while :; do sleep 0.1; done"
    proc = subprocess.Popen(qrun_prefix + ["/bin/sh", "-c", script], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline() == "got-int\n"   # the job saw it and went on
    time.sleep(1.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)                # twice within a second: stop at once
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL, err


def test_chdir_option_sets_the_job_cwd(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    sub = workdir / "sub dir"
    sub.mkdir()
    (sub / "here").write_text("yes\n")
    r = run(qrun_prefix[:-1] + ["-D", str(sub), "--", "/bin/sh", "-c", "pwd; cat here"], cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{sub}\nyes\n"


def test_sandbox_as_an_unprivileged_user(qrun_cmd: list[str]) -> None:
    runuser = shutil.which("runuser")
    if os.geteuid() != 0 or not runuser:
        pytest.skip("needs root (to become an unprivileged user) and runuser")
    python = str(Path(qrun_cmd[0]).parent / "python")  # the interpreter of qrun's environment
    probe = subprocess.run([runuser, "-u", "nobody", "--", python, "-c", "import qrun.homenode"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"this checkout is not readable by nobody: {probe.stderr.strip()[-200:]}")
    ok, why = subprocess.run([runuser, "-u", "nobody", "--", python, "-c",
                              "from qrun.homenode.launchers import sandbox_support as s; ok, w = s(); print(ok, w)"],
                             capture_output=True, text=True, timeout=60).stdout.partition(" ")[::2]
    if ok != "True":
        pytest.skip(why.strip() or "no user namespaces")
    import tempfile
    wd = Path(tempfile.mkdtemp(prefix="qrun-nobody-", dir="/tmp"))
    wd.chmod(0o777)
    try:
        _run_as_nobody(runuser, qrun_cmd, wd)
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def _run_as_nobody(runuser: str, qrun_cmd: list[str], wd: Path) -> None:
    r = subprocess.run([runuser, "-u", "nobody", "--", *qrun_cmd, "--transparent", "--host", "sandbox", "-v",
                        "--", "/bin/sh", "-c", "id -u; hostname; echo made > f"],
                       cwd=wd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["65534", os.uname().nodename]
    assert (wd / "f").read_text() == "made\n"
    assert (wd / "f").stat().st_uid == 65534  # created at home, as the user
    assert "qrun: host=sandbox" in r.stderr


LOCKS_C = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static const char *e(int rc) { return rc == -1 ? strerrorname_np(errno) : "ok"; }
int main(void) {
    int fd = open("lockfile", O_RDWR | O_CREAT, 0644);
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
    printf("parent: %s\n", e(fcntl(fd, F_SETLK, &fl)));
    fflush(stdout);
    if (fork() == 0) {
        int fd2 = open("lockfile", O_RDWR);
        struct flock f2 = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
        printf("child: %s\n", e(fcntl(fd2, F_SETLK, &f2)));
        fflush(stdout);
        _exit(0);
    }
    wait(NULL);
    printf("fifo: %s\n", e(open("fifo", O_RDONLY)));
    return 0;
}
'''


@pytest.mark.skipif(not GCC, reason="gcc is needed")
def test_record_locks_exclude_and_home_fifos_fail_fast(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    exe = compile_c(workdir, "l", LOCKS_C)
    os.mkfifo(workdir / "fifo")
    started = time.monotonic()
    r = run(qrun_prefix + [str(exe)], cwd=workdir, timeout=60)
    assert r.returncode == 0, r.stderr
    # natively the child's lock conflicts too (it is another process); the FIFO would block
    assert r.stdout.splitlines() == ["parent: ok", "child: EAGAIN", "fifo: EOPNOTSUPP"]
    assert "named pipes at home are not supported" in r.stderr
    assert time.monotonic() - started < 30


def test_sigkill_to_a_home_pid_kills_the_remote_process(transparent: list[str], workdir: Path) -> None:
    qrun_prefix = transparent  # both modes: local (everyone) and a namespace host (root)
    # SIGKILL cannot be caught by the deputy: its death at home is what gets relayed
    proc = subprocess.Popen(qrun_prefix + ["/bin/sh", "-c", "echo $$ > pid; exec sleep 60"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pidfile = workdir / "pid"
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert "qrun: job killed by signal 9 (SIGKILL)" in err
