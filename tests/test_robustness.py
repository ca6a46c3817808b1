"""What real programs met under qrun and must never meet again: lost data, deadlocks, stub
crashes, pipelines that never end, lost warnings. Each runs in both modes of the
`transparent` fixture (local, and a namespace host) unless it needs a particular host."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(not GCC, reason="gcc is not installed")


def run(cmd: list[str], cwd: Path | str, timeout: float = 120,
        **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def build(workdir: Path, name: str, source: str, *flags: str) -> Path:
    src = workdir / f"{name}.c"
    src.write_text(source)
    exe = workdir / name
    r = run([GCC or "gcc", "-O1", "-o", str(exe), str(src), *flags], cwd=workdir)
    assert r.returncode == 0, r.stderr
    return exe


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


# ---- data: large writes on the default host, from an install below a hidden directory ----

def test_readme_job_from_the_clone_on_the_sandbox_writes_large_files(qrun_cmd: list[str]) -> None:
    """The README's first command, run in the clone (which the sandbox hides, with qrun's
    install in it), then large writes to home's /tmp: nothing may fail with EIO."""
    from qrun.homenode.launchers import sandbox_support
    ok, why = sandbox_support()
    if not ok:
        pytest.skip(why)
    r = run(qrun_cmd + ["--transparent", "--host", "sandbox", "-v", "--", "sh", "-c",
                        "hostname; pwd; ls | head -3"], cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == [os.uname().nodename, str(REPO)]
    native = run(["sh", "-c", "ls | head -3"], cwd=REPO)
    assert r.stdout.splitlines()[2:] == native.stdout.splitlines()
    out = Path("/tmp") / f"qrun-large-{os.getpid()}"
    try:
        out.mkdir()
        src = out / "src.bin"
        src.write_bytes(os.urandom(3 << 20))
        script = (f"cp {src} {out}/copy.bin && tar czf {out}/t.tgz -C {out} src.bin && "
                  f"/usr/bin/python3 -c \"open('{out}/py.bin','wb').write(b'q' * 1000000)\"")
        r = run(qrun_cmd + ["--transparent", "--host", "sandbox", "--", "sh", "-c", script], cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert "EIO" not in r.stderr and "internal error" not in r.stderr, r.stderr
        assert (out / "copy.bin").read_bytes() == src.read_bytes()
        assert (out / "py.bin").read_bytes() == b"q" * 1000000
        listing = run(["tar", "tzvf", str(out / "t.tgz")], cwd=out)
        assert listing.returncode == 0 and "src.bin" in listing.stdout, listing.stderr
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---- threads that fork and exec while others open and close home files ----------------

STRESS = r"""
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#define THREADS 6
#define ROUNDS 10
static void *work(void *arg) {
    long id = (long)arg;
    char name[32], wname[32], buf[64];
    snprintf(wname, sizeof wname, "w%ld", id);
    for (int i = 0; i < ROUNDS; i++) {
        snprintf(name, sizeof name, "f%ld", id % 3);
        int fd = open(name, O_RDONLY);
        if (fd < 0 || read(fd, buf, sizeof buf) <= 0) { perror(name); exit(2); }
        int w = open(wname, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (w < 0) { perror(wname); exit(3); }
        if (id % 2 == 0) {
            pid_t p = fork();
            if (p == 0) {
                /* the child uses fds it inherited while other threads close theirs */
                if (write(w, "c", 1) != 1 || read(fd, buf, 1) < 0) _exit(4);
                if (i % 3 == 0) execl("/bin/true", "true", (char *)0);
                _exit(0);
            }
            int st;
            if (waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st)) {
                fprintf(stderr, "child failed: %#x\n", st); exit(5);
            }
        }
        if (write(w, "p", 1) != 1) { perror("write"); exit(6); }
        close(w);
        close(fd);
    }
    return NULL;
}
int main(void) {
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, work, (void *)i);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < THREADS; i++) {
        char wname[32]; struct stat st;
        snprintf(wname, sizeof wname, "w%d", i);
        if (stat(wname, &st) < 0) { perror(wname); return 7; }
        printf("%s %lld\n", wname, (long long)st.st_size);
        unlink(wname);
    }
    return 0;
}
"""


@needs_gcc
def test_threads_forking_while_closing_home_files_50_runs(transparent: list[str], workdir: Path) -> None:
    exe = build(workdir, "stress", STRESS, "-pthread")
    for i in range(3):
        (workdir / f"f{i}").write_text(f"data {i}\n" * 10)
    expect = "".join(f"w{i} {20 if i % 2 == 0 else 10}\n" for i in range(6))
    native = run([str(exe)], cwd=workdir)
    assert (native.returncode, native.stdout) == (0, expect), native.stderr
    loop = f"for i in $(seq 50); do {exe} > out.$i || {{ echo run $i: $?; exit 1; }}; done; cat out.* | sort | uniq -c"
    r = run(transparent + ["/bin/sh", "-c", loop], cwd=workdir, timeout=280)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.split() == " ".join(f"50 {line}" for line in expect.splitlines()).split()
    assert "internal error" not in r.stderr, r.stderr


# ---- calls that wait at home: locks -------------------------------------------------------

def test_flock_contention_does_not_stall_the_job(transparent: list[str], workdir: Path) -> None:
    """The lock holder keeps running (and its calls are served) while another process waits;
    --timeout 3 is shorter than the wait, so stalled heartbeats would kill the job."""
    prefix = [a for a in transparent]
    cut = prefix.index("--timeout")
    prefix[cut + 1] = "3"
    script = "flock lk sh -c 'sleep 4; echo held > held' & sleep .5; flock lk cat held; wait"
    t0 = time.monotonic()
    r = run(prefix + ["/bin/sh", "-c", script], cwd=workdir, timeout=60)
    took = time.monotonic() - t0
    assert (r.returncode, r.stdout) == (0, "held\n"), r.stderr
    assert took >= 4.0, f"the second flock did not wait for the first ({took:.1f} s)"


LOCKS = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>
static void on_alarm(int sig) { (void)sig; }
static void handler(int restart) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigaction(SIGALRM, &sa, NULL);
}
int main(void) {
    int ready[2];
    if (pipe(ready) < 0) return 1;
    pid_t holder = fork();
    if (holder == 0) {                 /* holds both locks for 4 s */
        int fd = open("lockfile", O_RDWR | O_CREAT, 0644);
        struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
        if (flock(fd, LOCK_EX) < 0 || fcntl(fd, F_SETLK, &fl) < 0) _exit(9);
        if (write(ready[1], "x", 1) != 1) _exit(9);
        sleep(4);
        _exit(0);
    }
    char c;
    if (read(ready[0], &c, 1) != 1) return 2;
    int fd = open("lockfile", O_RDWR);
    handler(0);
    alarm(1);                          /* no SA_RESTART: the wait fails with EINTR */
    int r = flock(fd, LOCK_EX);
    printf("flock without SA_RESTART: %d %s\n", r, r < 0 ? strerror(errno) : "ok");
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
    alarm(1);
    r = fcntl(fd, F_OFD_SETLKW, &fl);
    printf("F_OFD_SETLKW without SA_RESTART: %d %s\n", r, r < 0 ? strerror(errno) : "ok");
    handler(1);
    alarm(1);                          /* SA_RESTART: it goes on waiting, gets the lock at 4 s */
    r = flock(fd, LOCK_EX);
    printf("flock with SA_RESTART: %d %s\n", r, r < 0 ? strerror(errno) : "ok");
    r = fcntl(fd, F_OFD_SETLKW, &fl);
    printf("F_OFD_SETLKW after the holder: %d %s\n", r, r < 0 ? strerror(errno) : "ok");
    int st;
    waitpid(holder, &st, 0);
    printf("holder: %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return 0;
}
"""


@needs_gcc
def test_waiting_locks_are_interrupted_by_signals_as_natively(transparent: list[str], workdir: Path) -> None:
    exe = build(workdir, "locks", LOCKS)
    native = run([str(exe)], cwd=workdir, timeout=30)
    assert native.returncode == 0, native.stderr
    assert native.stdout.splitlines() == [
        "flock without SA_RESTART: -1 Interrupted system call",
        "F_OFD_SETLKW without SA_RESTART: -1 Interrupted system call",
        "flock with SA_RESTART: 0 ok",
        "F_OFD_SETLKW after the holder: 0 ok",
        "holder: 0"]
    (workdir / "lockfile").unlink()
    r = run(transparent + [str(exe)], cwd=workdir, timeout=60)
    assert (r.returncode, r.stdout) == (0, native.stdout), r.stderr


# ---- /proc/self/fd, /dev/stdout and /proc/<pid> as the job sees them ------------------

def test_fd_paths_of_home_files_act_on_the_home_file(transparent: list[str], workdir: Path) -> None:
    script = """
exec 4>&1 >log; echo first; echo truncated >/dev/stdout; exec >&4 4>&-
cat log
mkdir d; exec 3<d; chmod 0701 /proc/self/fd/3; stat -c %a d; exec 3<&-
echo data > f; exec 5<f; cat /dev/fd/5; cat /proc/$$/fd/5; exec 5<&-
touch -d @1000000000 /proc/self/fd/0 </dev/null 2>/dev/null; exec 6>>f; touch -d @1000000000 /dev/fd/6; stat -c %Y f
"""
    native = run(["/bin/sh", "-c", script], cwd=workdir)
    assert native.returncode == 0, native.stderr
    assert native.stdout.split() == ["truncated", "701", "data", "data", "1000000000"]
    shutil.rmtree(workdir)
    workdir.mkdir()
    r = run(transparent + ["/bin/sh", "-c", script], cwd=workdir)
    assert (r.returncode, r.stdout) == (0, native.stdout), r.stderr


def test_proc_shows_the_job_its_home_pids_and_paths(transparent: list[str], workdir: Path) -> None:
    shutil.copy("/bin/readlink", workdir / "myreadlink")
    script = """
test -d /proc/$$ && echo own-pid-dir; test "$(cat /proc/$$/comm)" = sh && echo own-comm
./myreadlink /proc/self/exe; readlink /proc/self/cwd; exec 3<myreadlink; readlink /proc/self/fd/3
ps -ef >/dev/null && echo ps-ok; ps >/dev/null && echo ps-plain-ok
"""
    r = run(transparent + ["/bin/sh", "-c", script], cwd=workdir)
    assert r.returncode == 0, r.stderr
    home = str(workdir.resolve())
    assert r.stdout.splitlines() == ["own-pid-dir", "own-comm", f"{home}/myreadlink", home,
                                     f"{home}/myreadlink", "ps-ok", "ps-plain-ok"], r.stderr


# ---- stdout closed at home -----------------------------------------------------------------

def check_pipe_to_head(prefix: list[str], workdir: Path) -> None:
    cmd = shlex.join(prefix) + " yes | head -2; echo status ${PIPESTATUS[0]}"
    r = run(["/bin/bash", "-c", cmd], cwd=workdir, timeout=30)
    assert r.stdout.splitlines() == ["y", "y", "status 141"], r.stderr
    assert "SIGPIPE" not in r.stderr, "a job killed by SIGPIPE is not reported, as shells do"


def test_a_closed_reader_ends_the_job_with_sigpipe(transparent: list[str], workdir: Path) -> None:
    check_pipe_to_head(transparent, workdir)


def test_a_closed_reader_ends_a_plain_job_with_sigpipe(qrun_cmd: list[str], workdir: Path) -> None:
    check_pipe_to_head(qrun_cmd + ["--host", "local", "--"], workdir)


# ---- every line the stub writes reaches the user ---------------------------------------

def test_warning_lines_are_never_lost(transparent: list[str], workdir: Path) -> None:
    job = ["/usr/bin/python3", "-c",
           "import os\ntry:\n    os.chroot('/')\nexcept OSError as e:\n    print(e.errno)"]
    for i in range(20):
        r = run(transparent + job, cwd=workdir, timeout=60)
        assert (r.returncode, r.stdout) == (0, "1\n"), r.stderr
        assert "chroot() is not supported under qrun" in r.stderr, f"run {i}: {r.stderr!r}"


def test_large_home_file_checksum_matches(transparent: list[str], workdir: Path) -> None:
    data = os.urandom(5 << 20)
    (workdir / "in.bin").write_bytes(data)
    r = run(transparent + ["/bin/sh", "-c", "cp in.bin out.bin && sha256sum out.bin"], cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert (workdir / "out.bin").read_bytes() == data


NO_PTRACE = r"""
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
/* Runs argv[1..] where ptrace fails with EPERM, as under a container's seccomp profile. */
int main(int argc, char **argv) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_ptrace, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    if (argc < 2 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) return 99;
    execvp(argv[1], argv + 1);
    return 98;
}
"""


@needs_gcc
def test_a_host_that_forbids_ptrace_is_named_with_its_own_exit_code(qrun_cmd: list[str], workdir: Path) -> None:
    from qrun.homenode import exitcodes
    wrapper = build(workdir, "noptrace", NO_PTRACE)
    r = run([str(wrapper), *qrun_cmd, "--transparent", "--host", "local", "--", "true"], cwd=workdir)
    assert r.returncode == exitcodes.NO_PTRACE, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "forbids ptrace" in lines[0], r.stderr


# ---- no process outlives its job ------------------------------------------------------------

def leftovers(marker: str) -> list[str]:
    r = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True, timeout=10)
    return [line for line in r.stdout.splitlines() if "pgrep" not in line]


@pytest.mark.parametrize("mode", [["--transparent"], []])
def test_ctrl_c_while_qrun_starts(qrun_cmd: list[str], workdir: Path, mode: list[str]) -> None:
    """A Ctrl-C at any moment of qrun's start (its imports, the stub starting, the job not
    yet running, then running): status 130 and one line, never a traceback, and nothing
    left behind. The stub used to signal its own process group when the job did not exist
    yet, and die of it; and the job, signalled between its fork and its exec, ran the
    stub's Python handler there and lost the signal."""
    marker = f"77{os.getpid()}{len(mode)}.5"
    seen = set()
    for i in range(12):
        proc = subprocess.Popen(qrun_cmd + [*mode, "--host", "local", "--", "sleep", marker], cwd=workdir,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        time.sleep(0.02 + 0.01 * i)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:   # (the SIGINT was lost: end the job, then fail)
            proc.terminate()
            proc.communicate(timeout=30)
            raise
        assert proc.returncode == 130 and len(err.splitlines()) == 1 and "Traceback" not in err, (i, err)
        seen.add(err.strip())
    assert seen <= {"qrun: interrupted", "qrun: interrupted while waiting for the stub to start on this machine",
                    "qrun: job killed by signal 2 (SIGINT)"}, seen
    deadline = time.monotonic() + 10
    while leftovers(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not leftovers(marker)


@pytest.mark.parametrize("sig", [2, 15])
def test_killing_qrun_during_a_fork_storm_leaves_nothing(transparent: list[str], workdir: Path,
                                                          sig: int) -> None:
    """qrun is interrupted while the job forks ~150 processes, 10 times per signal: qrun
    exits 128+signal and no process of the job is left anywhere (the test hosts share
    this machine's process table, so pgrep here sees theirs too)."""
    marker = f"99{os.getpid()}{sig}.5"
    job = (f"for i in $(seq 50); do sleep {marker} & "
           f"sh -c 'sleep {marker} & sleep {marker} & exec sleep {marker}' & done; wait")
    for i in range(10):
        proc = subprocess.Popen(transparent + ["/bin/sh", "-c", job], cwd=workdir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while len(leftovers(marker)) < 5 + 10 * i and time.monotonic() < deadline:
            time.sleep(0.02)  # interrupt at a different point of the storm each time
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, f"run {i}: {err}"
        deadline = time.monotonic() + 5
        while leftovers(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not leftovers(marker), f"run {i}: left behind: {leftovers(marker)[:5]}"


# ---- job control without a terminal ------------------------------------------------------

def proc_states(marker: str) -> list[str]:
    out = []
    for pid in [int(p) for p in subprocess.run(["pgrep", "-f", f"^sleep {marker}"], capture_output=True,
                                               text=True).stdout.split()]:
        try:
            with open(f"/proc/{pid}/stat") as f:
                out.append(f.read().rsplit(")", 1)[1].split()[0])
        except OSError:
            pass
    return out


def test_sigtstp_stops_the_whole_job_and_qrun_until_sigcont(transparent: list[str], workdir: Path) -> None:
    """A stopped job stays stopped (longer than --timeout, with qrun stopped too, as a shell
    wants), and SIGCONT lets it finish."""
    import signal
    marker = f"2.{os.getpid()}7"
    prefix = list(transparent)
    prefix[prefix.index("--timeout") + 1] = "2"
    proc = subprocess.Popen(prefix + ["/bin/sh", "-c", f"sleep {marker} & sleep {marker}; wait; echo done"],
                            cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while len(proc_states(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTSTP)
    time.sleep(1)
    # Under ptrace a stopped process shows as t (tracing stop) rather than T.
    assert proc_states(marker) and set(proc_states(marker)) <= {"T", "t"}, proc_states(marker)
    with open(f"/proc/{proc.pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] == "T", "qrun did not stop with its job"
    time.sleep(3.5)  # longer than --timeout and than the sleeps
    assert proc.poll() is None and set(proc_states(marker)) <= {"T", "t"} and proc_states(marker)
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, "done\n"), err


def test_sigstop_and_sigcont_to_a_home_pid_reach_the_remote_process(transparent: list[str],
                                                                    workdir: Path) -> None:
    import signal
    job = "echo $$ > pid; i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo $i >> count; sleep 0.05; done; echo done"
    proc = subprocess.Popen(transparent + ["/bin/sh", "-c", job], cwd=workdir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (workdir / "count").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    home_pid = int((workdir / "pid").read_text())
    os.kill(home_pid, signal.SIGSTOP)
    time.sleep(0.5)
    stopped_at = len((workdir / "count").read_text().split())
    time.sleep(1.0)
    assert len((workdir / "count").read_text().split()) == stopped_at, "the remote process went on"
    assert stopped_at < 40
    os.kill(home_pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, "done\n"), err
    assert len((workdir / "count").read_text().split()) == 40
