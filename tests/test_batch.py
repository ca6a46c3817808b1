"""Batch jobs: `qrun submit` and the per-user daemon, job records, queueing, arrays and
dependencies, cancel, wait, acct and output. The jobs run on the local host, so every
developer runs these; the cluster test at the end needs the namespace hosts (root)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qrun.homenode import daemon as daemon_mod
from qrun.homenode.jobstore import Store

BOUND = 90.0   # seconds any one wait in these tests may take


class Batch:
    """A user's batch world: their own records, runtime directory and daemon."""

    def __init__(self, qrun_cmd: list[str], root: Path) -> None:
        self.qrun_cmd = qrun_cmd
        self.root = root
        self.env = dict(os.environ, XDG_STATE_HOME=str(root / "state"))
        self.env.pop("QRUN_CONF", None)
        self.work = root / "work"
        self.work.mkdir()

    def qrun(self, *args: str, timeout: float = BOUND, check: bool = False) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(self.qrun_cmd + list(args), capture_output=True, text=True, timeout=timeout,
                           env=self.env, cwd=self.work, stdin=subprocess.DEVNULL)
        if check:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r

    def submit(self, *args: str) -> str:
        r = self.qrun("submit", *args, check=True)
        assert r.stdout.strip().isdigit(), r.stdout
        return r.stdout.strip()

    def records(self) -> list[dict[str, Any]]:
        r = self.qrun("acct", "--json", check=True)
        out: list[dict[str, Any]] = json.loads(r.stdout)
        return out

    def record(self, label: str) -> dict[str, Any]:
        return next(j for j in self.records() if j["label"] == label)

    def diagnosis(self) -> str:
        """The records' states and reasons and the daemon's log, for a failure's message."""
        log = Path(self.env["XDG_STATE_HOME"]) / "qrun" / "daemon.log"
        states = [(j["label"], j["state"], j["reason"]) for j in self.records()]
        return f"{states}\n{log.read_text()[-3000:] if log.exists() else 'no daemon log'}"

    def daemon_pid(self) -> int | None:
        path = Path(self.env["XDG_STATE_HOME"]) / "qrun" / "daemon.sock"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(str(path))
            s.sendall(b'{"op": "ping"}\n')
            return int(json.loads(s.makefile().readline())["pid"])
        except OSError:
            return None
        finally:
            s.close()

    def stop(self) -> None:
        """The daemon, and any shepherd still running, go (the test bounds what it starts)."""
        pid = self.daemon_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            _gone(pid)
        db = Path(self.env["XDG_STATE_HOME"]) / "qrun" / "jobs.db"
        if db.exists():
            with sqlite3.connect(db) as conn:
                pids = [r[0] for r in conn.execute(
                    "SELECT pid FROM jobs WHERE pid IS NOT NULL AND state IN ('PENDING', 'RUNNING')")]
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


def most_at_once(recs: list[dict[str, Any]]) -> int:
    """How many of these jobs ran at once at most, from their records' start and end."""
    events = sorted([(r["started"], 1) for r in recs] + [(r["ended"], -1) for r in recs])
    running, most = 0, 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def wait_until(what: str, ok: Any, within: float = BOUND, why: Any = None) -> None:
    """Until ok() is true, at most `within` seconds; `why()` adds to the failure's message."""
    deadline = time.monotonic() + within
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (f": {why()}" if why else "")
        time.sleep(0.1)


@pytest.fixture
def batch(qrun_cmd: list[str], tmp_path: Path) -> Iterator[Batch]:
    b = Batch(qrun_cmd, tmp_path)
    try:
        yield b
    finally:
        b.stop()


LOCAL = ("--transparent", "--host", "local", "--timeout", "20")


def test_submit_returns_at_once_and_the_job_outlives_its_submitter(batch: Batch) -> None:
    marker = batch.work / "started"
    job = batch.submit(*LOCAL, "-J", "three", "--", "sh", "-c",
                       f"sleep 1; echo out; echo err >&2; touch {marker}; exit 3")
    # submit has returned (its process is gone) and the job has not got far
    assert not marker.exists()
    assert batch.record(job)["state"] in ("PENDING", "RUNNING")
    r = batch.qrun("wait", job)
    assert r.returncode == 3, r.stderr
    rec = batch.record(job)
    assert (rec["state"], rec["exit_code"], rec["signal"], rec["name"]) == ("FAILED", 3, None, "three")
    assert rec["batch"] and rec["host"] == "local" and rec["launcher"] == "local" and rec["attempts"] == 1
    assert rec["started"] >= rec["submitted"] and rec["ended"] >= rec["started"]
    assert rec["calls"] > 0 and rec["maxrss_kb"] > 0
    out = (batch.work / f"qrun-{job}.out").read_text()
    assert "out\n" in out and "err\n" in out
    assert batch.qrun("output", job, check=True).stdout == out
    table = batch.qrun("acct", job, check=True).stdout.splitlines()
    assert table[0].split()[:4] == ["JOBID", "NAME", "STATE", "EXIT"]
    assert table[1].split()[:4] == [job, "three", "FAILED", "3"]


def test_a_killed_job_counts_as_128_plus_its_signal(batch: Batch) -> None:
    job = batch.submit(*LOCAL, "--", "sh", "-c", "kill -9 $$")
    assert batch.qrun("wait", job).returncode == 137
    rec = batch.record(job)
    assert (rec["state"], rec["exit_code"], rec["signal"]) == ("FAILED", 137, 9)
    assert "137 (SIGKILL)" in batch.qrun("acct", job, check=True).stdout


def test_the_users_cap_holds_across_jobs(batch: Batch) -> None:
    conf = batch.root / "cluster.toml"
    conf.write_text("max_jobs_per_user = 2\n")
    jobs = [batch.submit("--config", str(conf), *LOCAL, "--", "sleep", "1") for _ in range(6)]
    assert batch.qrun("wait", *jobs).returncode == 0
    recs = [batch.record(j) for j in jobs]
    assert all(r["state"] == "DONE" for r in recs)
    most = most_at_once(recs)
    assert most <= 2


def test_arrays_and_dependencies(batch: Batch) -> None:
    array = batch.submit(*LOCAL, "--array", "1-4%2", "-o", "task-%a.out", "--", "sh", "-c",
                         'echo "$QRUN_ARRAY_JOB_ID $QRUN_ARRAY_TASK_ID"')
    ok = batch.submit(*LOCAL, "--afterok", array, "--", "sh", "-c", "cat task-*.out > all.txt")
    notok = batch.submit(*LOCAL, "--afternotok", array, "--", "touch", "never")
    failing = batch.submit(*LOCAL, "--", "false")
    blocked = batch.submit(*LOCAL, "--afterok", failing, "--", "touch", "never2")
    assert batch.qrun("wait", ok).returncode == 0
    assert (batch.work / "all.txt").read_text() == "".join(f"{array} {i}\n" for i in range(1, 5))
    tasks = [j for j in batch.records() if j["array_job"] == int(array)]
    assert [t["label"] for t in tasks] == [f"{array}_{i}" for i in range(1, 5)]
    assert all(t["state"] == "DONE" for t in tasks)
    assert batch.record(ok)["started"] >= max(t["ended"] for t in tasks)
    wait_until("the failing job", lambda: batch.record(failing)["state"] == "FAILED")
    wait_until("the blocked job's reason", lambda: "never satisfied" in batch.record(blocked)["reason"])
    for j in (notok, blocked):
        rec = batch.record(j)
        assert rec["state"] == "PENDING" and "dependency never satisfied" in rec["reason"], rec
    status = batch.qrun("status", check=True).stdout
    assert "dependency never satisfied" in status and f"\n{blocked} " in status
    assert not (batch.work / "never").exists() and not (batch.work / "never2").exists()
    assert batch.qrun("cancel", notok, blocked).returncode == 0
    assert batch.record(notok)["state"] == "CANCELLED" and batch.record(notok)["started"] is None
    assert batch.qrun("wait", notok).returncode == 143


def _left(seconds: set[str]) -> list[str]:
    """The `sleep` processes still running with one of these (unique) durations."""
    r = subprocess.run(["pgrep", "-a", "-x", "sleep"], capture_output=True, text=True)
    return [line for line in r.stdout.splitlines() if line.split()[-1] in seconds]


def test_cancel_leaves_nothing_running(batch: Batch) -> None:
    base = 100_000 + os.getpid() % 50_000 * 4
    seconds = {str(base + i) for i in range(4)}
    script = (f'sleep {base} & setsid sh -c "sleep {base + 1} & sleep {base + 2}" & '
              f"sleep {base + 3}")
    job = batch.submit(*LOCAL, "--", "sh", "-c", script)
    wait_until("the job's processes", lambda: len(_left(seconds)) == 4)
    r = batch.qrun("cancel", job)
    assert r.returncode == 0, r.stderr
    wait_until("the cancel", lambda: batch.record(job)["state"] == "CANCELLED")
    wait_until("no process left", lambda: not _left(seconds), within=30)
    assert batch.qrun("wait", job).returncode == 143
    assert "CANCELLED" in batch.qrun("status", "--all", check=True).stdout


def test_the_daemon_can_die_and_come_back_while_jobs_run(batch: Batch) -> None:
    first = batch.submit(*LOCAL, "--", "sh", "-c", "sleep 2; echo first > first.txt")
    wait_until("the first job to run", lambda: batch.record(first)["state"] == "RUNNING")
    pid = batch.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert _gone(pid)
    second = batch.submit(*LOCAL, "--", "sh", "-c", "echo second > second.txt")   # (a new daemon)
    assert batch.daemon_pid() not in (None, pid)
    assert batch.qrun("wait", first, second).returncode == 0
    assert (batch.work / "first.txt").read_text() == "first\n"
    assert (batch.work / "second.txt").read_text() == "second\n"
    assert [batch.record(j)["state"] for j in (first, second)] == ["DONE", "DONE"]
    db = Path(batch.env["XDG_STATE_HOME"]) / "qrun" / "jobs.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


TAKEN_OVER_JOB = """
import errno, fcntl, os, time
def wait_for(name):
    while not os.path.exists(name):
        time.sleep(0.05)
def steps(first, last):
    for i in range(first, last):
        os.mkdir(f"d{i}")
        os.rename(f"d{i}", f"e{i}")
        with open(f"x{i}", "x") as f:
            f.write(str(i))
        log.write(f"{i}\\n")
        log.flush()
        print("line", i, flush=True)
entries = os.scandir("big")
seen = [next(entries).name for _ in range(100)]
held = open("held.txt", "w")
fcntl.flock(held, fcntl.LOCK_EX)
doomed = open("doomed.txt", "r+")
log = open("log.txt", "a")
steps(0, 100)
print("ready", flush=True)
wait_for("go")
steps(100, 200)
print("again", flush=True)
wait_for("go2")
steps(200, 300)
seen += [e.name for e in entries]
print("entries", len(seen), len(set(seen)))
doomed.write("more")
try:
    doomed.close()
except OSError as exc:
    print("doomed:", errno.errorcode[exc.errno])
"""


def test_a_killed_shepherd_is_succeeded_and_the_job_goes_on(batch: Batch) -> None:
    """The job's home server (its shepherd) is SIGKILLed twice while the job holds a
    directory half read, a flock and open files: each time the daemon starts a successor
    that serves on where the stub expects it. Every call ran once (mkdir, rename, O_EXCL,
    O_APPEND), every output line came once, the lock stayed the job's, and a file deleted
    while no server held it fails only the calls on it, with one line in the job's log."""
    (batch.work / "big").mkdir()
    for i in range(3000):
        (batch.work / "big" / f"f{i}").touch()
    (batch.work / "doomed.txt").write_text("x")
    (batch.work / "job.py").write_text(TAKEN_OVER_JOB)
    job = batch.submit(*LOCAL, "--", "python3", "job.py")
    out = batch.work / f"qrun-{job}.out"
    log = Path(batch.env["XDG_STATE_HOME"]) / "qrun" / "daemon.log"

    def shepherd() -> int:
        with sqlite3.connect(Path(batch.env["XDG_STATE_HOME"]) / "qrun" / "jobs.db") as conn:
            return int(conn.execute("SELECT pid FROM jobs WHERE id = ?", (int(job),)).fetchone()[0])

    def said(text: str) -> bool:
        return out.exists() and text in out.read_text()

    wait_until("the job's first steps", lambda: said("ready\n"), why=batch.diagnosis)
    daemon = batch.daemon_pid()
    assert daemon is not None
    first = shepherd()
    os.kill(daemon, signal.SIGSTOP)   # (so that the file goes while no server holds it)
    try:
        os.kill(first, signal.SIGKILL)
        assert _gone(first)
        (batch.work / "doomed.txt").unlink()
        assert batch.record(job)["state"] == "RUNNING"   # (a reader leaves it to the daemon)
    finally:
        os.kill(daemon, signal.SIGCONT)
    wait_until("a successor", lambda: said("(takeover 1)"), why=batch.diagnosis)
    with open(batch.work / "held.txt", "a") as f:   # the job's flock was taken again
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (batch.work / "go").touch()
    wait_until("the job's next steps", lambda: said("again\n"), why=batch.diagnosis)
    second = shepherd()
    assert second != first
    os.kill(second, signal.SIGKILL)
    wait_until("a second successor", lambda: said("(takeover 2)"), why=batch.diagnosis)
    assert log.read_text().count("serves on") == 2
    (batch.work / "go2").touch()
    assert batch.qrun("wait", job).returncode == 0, batch.diagnosis()
    lines = out.read_text().splitlines()
    assert [x for x in lines if x.startswith("line ")] == [f"line {i}" for i in range(300)]
    assert "entries 3000 3000" in lines and "doomed: ESTALE" in lines
    notes = [x for x in lines if x.startswith("qrun: ")]
    assert any("takeover 1" in x for x in notes) and any("takeover 2" in x for x in notes), lines
    assert any("doomed.txt cannot be opened again" in x for x in notes), lines
    assert (batch.work / "log.txt").read_text() == "".join(f"{i}\n" for i in range(300))
    assert sorted(p.name for p in batch.work.glob("e*")) == sorted(f"e{i}" for i in range(300))
    assert not list(batch.work.glob("d[0-9]*"))
    assert all((batch.work / f"x{i}").read_text() == str(i) for i in range(300))
    rec = batch.record(job)
    assert (rec["state"], rec["exit_code"], rec["attempts"]) == ("DONE", 0, 1)
    assert not (Path(batch.env["XDG_STATE_HOME"]) / "qrun" / "serving" / job).exists()


def test_a_cancel_while_no_shepherd_serves_the_job_reaches_it(batch: Batch) -> None:
    """The shepherd killed, and a cancel sent while the daemon is stopped: whichever the
    daemon handles first (the cancel or the shepherd's end), the successor passes the
    cancel on, and nothing of the job is left."""
    seconds = str(300_000 + os.getpid() % 50_000)
    job = batch.submit(*LOCAL, "--", "sleep", seconds)
    wait_until("the job to run", lambda: _left({seconds}) != [] and batch.record(job)["state"] == "RUNNING")
    daemon = batch.daemon_pid()
    assert daemon is not None
    with sqlite3.connect(Path(batch.env["XDG_STATE_HOME"]) / "qrun" / "jobs.db") as conn:
        shepherd = int(conn.execute("SELECT pid FROM jobs WHERE id = ?", (int(job),)).fetchone()[0])
    os.kill(daemon, signal.SIGSTOP)
    try:
        os.kill(shepherd, signal.SIGKILL)
        assert _gone(shepherd)
        cancel = subprocess.Popen(batch.qrun_cmd + ["cancel", job], env=batch.env, cwd=batch.work,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)   # (its request waits in the daemon's socket)
    finally:
        os.kill(daemon, signal.SIGCONT)
    out, err = cancel.communicate(timeout=30)
    assert cancel.returncode == 0, err
    assert batch.qrun("wait", job).returncode == 143, batch.diagnosis()
    assert batch.record(job)["state"] == "CANCELLED"
    wait_until("no process left", lambda: not _left({seconds}), within=30)


def test_interactive_jobs_are_recorded_too(batch: Batch) -> None:
    r = batch.qrun(*LOCAL, "--", "sh", "-c", "exit 5")
    assert r.returncode == 5
    rec = batch.records()[-1]
    assert (rec["batch"], rec["state"], rec["exit_code"], rec["argv"]) == (False, "FAILED", 5,
                                                                          ["sh", "-c", "exit 5"])
    assert batch.daemon_pid() is None   # (interactive qrun needs no daemon)


@pytest.mark.parametrize("args, message", [
    (["wait", "99"], "no job 99"),
    (["cancel"], "name the jobs to cancel"),
    (["output", "x1"], "a job id is N or N_I"),
    (["submit", "--host", "local"], "missing command"),
    (["submit", "--array", "5-1", "--host", "local", "true"], "empty range"),
    (["submit", "-o", "out-%q", "--host", "local", "true"], "unknown pattern %q"),
    (["submit", "--afterok", "77", "--host", "local", "true"], "no job 77"),
    (["status", "--state", "sleeping"], "unknown state SLEEPING"),
    (["acct", "--since", "yesterday"], "--since"),
])
def test_bad_input_gets_one_line(batch: Batch, args: list[str], message: str) -> None:
    r = batch.qrun(*args)
    assert r.returncode == 2, r
    assert r.stderr.startswith("qrun") and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_status_json_fields_are_the_documented_ones(batch: Batch) -> None:
    job = batch.submit(*LOCAL, "--", "true")
    assert batch.qrun("wait", job).returncode == 0
    rec = json.loads(batch.qrun("status", "--all", "--json", check=True).stdout)[0]
    guide = (Path(__file__).resolve().parent.parent / "docs" / "guide.md").read_text()
    documented = guide.split("<!-- job fields -->", 2)[1]
    for key in rec:
        assert f"`{key}`" in documented, key


def test_the_daemon_checks_what_it_is_sent(tmp_path: Path) -> None:
    d = daemon_mod.Daemon(Store(tmp_path / "jobs.db"))
    for line in (b"", b"[]", b'{"op": 3}', b"\xff\xfe", b'{"op": "cancel", "ids": "1"}',
                 b'{"op": "cancel", "ids": [true]}', b'{"op": "rm -rf"}'):
        reply = d.answer(line)
        assert reply["ok"] is False and reply["error"], line
    assert d.answer(b'{"op": "cancel", "ids": [12345]}') == {"ok": True, "results": {"12345": "unknown job"}}


def test_the_daemons_directory_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "state" / "qrun").mkdir(parents=True)
    os.chmod(tmp_path / "state" / "qrun", 0o755)
    assert daemon_mod.private_dir() == tmp_path / "state" / "qrun"
    assert os.stat(tmp_path / "state" / "qrun").st_mode & 0o777 == 0o700   # (qrun's own: made private)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "linked"))
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "qrun").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(daemon_mod.DaemonError, match="not a private directory"):
        daemon_mod.private_dir()
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / ("x" * 120)))
    with pytest.raises(daemon_mod.DaemonError, match="too long"):
        daemon_mod.socket_path()


def test_the_systemd_unit(batch: Batch) -> None:
    unit = batch.qrun("daemon", "--print-unit", check=True).stdout
    assert "ExecStart=" in unit and "-m qrun.homenode.daemon" in unit and "@PYTHON@" not in unit


def test_twenty_jobs_over_three_hosts_keep_the_cap(qrun_cmd: list[str], ssh_cluster: object,
                                                   cluster_hosts: Any, tmp_path: Path) -> None:
    """20 plain batch jobs over the ssh test cluster with max_jobs_per_user = 4: never more
    than 4 at once (from the records), all DONE on the cluster's hosts, output right, and
    the accounting of a failed and a killed job right."""
    from test_cluster import write_config
    b = Batch(qrun_cmd, tmp_path)
    try:
        conf = write_config(tmp_path / "c.toml", cluster_hosts, ssh_cluster.ssh_config,  # type: ignore[attr-defined]
                            max_jobs_per_user=4)
        common = ["--config", str(conf), "-D", "/", "-o", f"{b.work}/out-%j"]
        jobs = [b.submit(*common, "--", "sh", "-c", "hostname; sleep 1") for _ in range(20)]
        three = b.submit(*common, "--", "sh", "-c", "exit 3")
        killed = b.submit(*common, "--", "sh", "-c", "kill -9 $$")
        assert b.qrun("wait", *jobs, timeout=300).returncode == 0
        assert b.qrun("wait", three).returncode == 3 and b.qrun("wait", killed).returncode == 137
        recs = [b.record(j) for j in jobs]
        hosts = {h.name for h in cluster_hosts}
        for r in recs:
            assert r["state"] == "DONE" and r["host"] in hosts and r["launcher"] == "ssh", r
            assert (b.work / f"out-{r['id']}").read_text() == f"{r['host']}\n"
        assert len({r["host"] for r in recs}) >= 2   # (spread over the hosts)
        most = most_at_once(recs)
        assert most <= 4
        assert (b.record(three)["exit_code"], b.record(killed)["exit_code"]) == (3, 137)
        assert b.record(killed)["signal"] == 9
    finally:
        b.stop()


def test_on_slurm_sbatch_owns_the_queue(qrun_cmd: list[str], slurm_cluster: object, cluster_hosts: Any,
                                        tmp_path: Path) -> None:
    """With --launcher slurm, qrun submit hands the job to sbatch: an array of 4 (at most 2
    at once) as one Slurm array, a job depending on it with --dependency=afterok on its
    tasks. They wait in Slurm's queue (qrun status shows Slurm's state) while no qrun
    process serves them; each stub phones the daemon when Slurm starts it, and the batch
    script exits with the job's status. A cancel of a queued job leaves nothing in Slurm."""
    b = Batch(qrun_cmd, tmp_path)
    b.env.update(slurm_cluster.env)  # type: ignore[attr-defined]
    conf = tmp_path / "c.toml"
    conf.write_text(f'home_addr = "{cluster_hosts[0].home_ip}"\n')

    def slurm(*args: str) -> str:
        r = subprocess.run(list(args), env=b.env, capture_output=True, text=True, timeout=30, cwd="/")
        return r.stdout

    holder = subprocess.run(["sbatch", "--parsable", "-N3", "--exclusive", "-J", "holder", "-o", "/dev/null",
                             "--wrap", "sleep 300"], env=b.env, capture_output=True, text=True,
                            timeout=30, cwd="/")
    assert holder.returncode == 0, holder.stderr
    hid = holder.stdout.strip().split(";")[0]
    try:
        common = ["--config", str(conf), "--launcher", "slurm", "-D", "/"]
        array = b.submit(*common, "--array", "1-4%2", "-o", f"{b.work}/out-%A_%a",
                         "--", "sh", "-c", "date +%s.%N; echo task $QRUN_ARRAY_TASK_ID; hostname; sleep 2; date +%s.%N")
        after = b.submit(*common, "--afterok", array, "-o", f"{b.work}/after-%j", "--", "sh", "-c", "exit 3")
        doomed = b.submit(*common, "--", "true")
        tasks = [f"{array}_{i}" for i in range(1, 5)]
        wait_until("Slurm to queue them", lambda: all(
            b.record(t)["slurm_id"] for t in [*tasks, after, doomed]), within=60, why=b.diagnosis)
        ids = {t: b.record(t)["slurm_id"] for t in [*tasks, after, doomed]}
        base = ids[tasks[0]].split("_")[0]
        assert [ids[t] for t in tasks] == [f"{base}_{i}" for i in range(1, 5)], ids
        assert slurm("squeue", "-h", "-j", base, "-o", "%K").split() == ["1-4%2"]
        dependency = slurm("squeue", "-h", "-j", ids[after], "-o", "%E").strip()
        assert dependency.startswith("afterok:") and all(f"{ids[t]}" in dependency for t in tasks), dependency
        status = b.qrun("status", "--json", check=True).stdout
        assert "Slurm: PENDING" in status, status
        assert all(b.record(t)["state"] == "PENDING" for t in tasks)
        assert b.qrun("cancel", doomed).returncode == 0
        wait_until("the cancel", lambda: b.record(doomed)["state"] == "CANCELLED")
        wait_until("Slurm to drop the cancelled job", lambda: slurm(
            "squeue", "-h", "-j", ids[doomed], "-o", "%T").strip() in ("", "CANCELLED"), within=30)
        subprocess.run(["scancel", hid], env=b.env, capture_output=True, timeout=30)
        assert b.qrun("wait", *tasks, timeout=180).returncode == 0
        wait_until("the dependent job", lambda: b.record(after)["state"] not in ("PENDING", "RUNNING"), within=120,
                   why=lambda: b.diagnosis() + slurm("squeue", "-h", "-t", "all", "-o", "%i %T %r %E"))
        assert b.qrun("wait", after).returncode == 3
        recs = [b.record(t) for t in tasks]
        hosts = {h.name for h in cluster_hosts}
        ran = []   # (when each task's command started and ended, as it says)
        for i, r in enumerate(recs, 1):
            assert r["state"] == "DONE" and r["launcher"] == "slurm", r
            start, task, host, end = (b.work / f"out-{array}_{i}").read_text().splitlines()[-4:]
            assert task == f"task {i}" and host in hosts, (task, host)
            ran.append({"started": float(start), "ended": float(end)})
        assert most_at_once(ran) <= 2
        last = b.record(after)
        assert (last["state"], last["exit_code"]) == ("FAILED", 3), last
        assert last["started"] > max(r["ended"] for r in ran)   # (Slurm held it until the array was done)
        wait_until("Slurm's queue to empty", lambda: not [ln for ln in slurm("squeue", "-h", "-o", "%j %T").splitlines()
                                                          if ln.startswith("qrun-")], within=30,
                   why=lambda: slurm("squeue", "-h", "-t", "all", "-o", "%i %j %T %r %E"))
        states = slurm("squeue", "-h", "-t", "all", "-j", ids[after], "-o", "%T").split()
        assert states in ([], ["FAILED"]), states   # (the batch script's status is the job's)
    finally:
        subprocess.run(["scancel", hid], env=b.env, capture_output=True, timeout=30)
        b.stop()


def test_a_job_cancelled_while_sbatch_queues_it_leaves_nothing_in_slurm(qrun_cmd: list[str], slurm_cluster: object,
                                                                        cluster_hosts: Any, tmp_path: Path) -> None:
    """A cancel that comes while the daemon's helper waits for sbatch (slow here: a wrapper
    sleeps first): the helper finds the job cancelled when sbatch answers, and scancels what
    sbatch queued, which Slurm was holding (the cluster is full)."""
    import shutil
    b = Batch(qrun_cmd, tmp_path)
    b.env.update(slurm_cluster.env)  # type: ignore[attr-defined]
    tools = tmp_path / "slurm-bin"
    tools.mkdir()
    for tool in ("srun", "squeue", "scancel"):
        (tools / tool).symlink_to(shutil.which(tool, path=b.env["PATH"]) or tool)
    (tools / "sbatch").write_text(f'#!/bin/sh\nsleep 4\nexec {shutil.which("sbatch", path=b.env["PATH"])} "$@"\n')
    (tools / "sbatch").chmod(0o755)
    conf = tmp_path / "c.toml"
    conf.write_text(f'home_addr = "{cluster_hosts[0].home_ip}"\nsrun_command = "{tools}/srun"\n')

    def queue() -> list[str]:
        r = subprocess.run(["squeue", "-h", "-o", "%j"], env=b.env, capture_output=True, text=True, timeout=30)
        return [ln for ln in r.stdout.split() if ln.startswith("qrun-")]

    holder = subprocess.run(["sbatch", "--parsable", "-N3", "--exclusive", "-J", "holder", "-o", "/dev/null",
                             "--wrap", "sleep 300"], env=b.env, capture_output=True, text=True, timeout=30, cwd="/")
    assert holder.returncode == 0, holder.stderr
    try:
        assert not queue()
        job = b.submit("--config", str(conf), "--launcher", "slurm", "-D", "/", "--", "true")
        wait_until("the helper to run sbatch", lambda: subprocess.run(
            ["pgrep", "-f", f"qrun.homenode.handoff {job}"], capture_output=True).returncode == 0, within=30)
        assert b.qrun("cancel", job).returncode == 0
        assert b.record(job)["state"] == "CANCELLED"
        wait_until("the helper to end", lambda: subprocess.run(
            ["pgrep", "-f", f"qrun.homenode.handoff {job}"], capture_output=True).returncode != 0, within=30)
        wait_until("Slurm's queue to hold no job of qrun's", lambda: not queue(), within=30, why=queue)
        assert b.record(job)["slurm_id"] == ""
    finally:
        subprocess.run(["scancel", holder.stdout.strip().split(";")[0]], env=b.env, capture_output=True, timeout=30)
        b.stop()


def test_a_requeued_job_whose_host_is_lost_starts_again(batch: Batch, tmp_path: Path) -> None:
    """--requeue: the first attempt's stub is killed mid-job (its host lost, status 124);
    the job is started again from the beginning and its record counts two attempts."""
    import shlex
    import sys
    wrap = tmp_path / "wrap.sh"
    wrap.write_text('mark=$1; shift\nif [ -e "$mark" ]; then exec "$@"; fi\n: > "$mark"\n'
                    'exec 3<&0\n"$@" <&3 3<&- & pid=$!\nsleep 2; kill -9 $pid; exit 1\n')   # (fd 3: a background job's stdin is /dev/null)
    stub = shlex.join(["sh", str(wrap), str(tmp_path / "first-attempt-done"), sys.executable, "-P", "-m",
                       "qrun.remote.stub"])
    job = batch.submit("--transparent", "--requeue", "--timeout", "20", "--via", "env", "--home-addr",
                       "127.0.0.1", "--stub-command", stub, "--", "sh", "-c", "echo attempt; sleep 4; echo done")
    assert batch.qrun("wait", job).returncode == 0
    rec = batch.record(job)
    assert (rec["state"], rec["attempts"]) == ("DONE", 2), rec
    out = (batch.work / f"qrun-{job}.out").read_text()
    assert out.endswith("attempt\ndone\n") and "died before the job ended" in out, out


def test_the_records_schema_is_versioned(tmp_path: Path) -> None:
    from qrun.homenode import jobstore
    db = tmp_path / "jobs.db"
    Store(db).close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(jobstore.MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(jobstore.StoreError, match="newer qrun"):
        Store(db)
    assert os.stat(db).st_mode & 0o777 == 0o600   # (it holds batch jobs' environments)
