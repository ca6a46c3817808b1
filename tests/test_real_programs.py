"""Real programs (Go, musl C, sqlite3, git, GNU tar, Python threads, make, flock, large writes, a
pipeline) run natively at home and under `qrun --transparent`, compared on stdout, exit status
and the files they leave behind.

Every test runs in the two modes of conftest's `transparent` fixture: `h1` (a namespace test
host whose host name, /tmp and home directory differ from home's; needs root) and `local`
(`--host local`, the stub on this machine; no root needed). Both runs of one test start from a
fresh copy of the same workdir at the same absolute path, so output that names paths compares
equal. The workdir is under pytest's tmp_path in /tmp, which the test host cannot see:
everything the job reads or writes there is forwarded home.

A tool that is missing skips its test with the Debian package to install (./install.sh does it
as root); under CI=true a missing tool fails instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import random
import shlex
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REAL = Path(__file__).resolve().parent / "real"
IN_CI = os.environ.get("CI") == "true"
LUA_TAR = "lua-5.4.6.tar"

# Fixed identity and times for git, so commit ids are the same in every run.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Real Programs", "GIT_AUTHOR_EMAIL": "real@example.invalid",
    "GIT_COMMITTER_NAME": "Real Programs", "GIT_COMMITTER_EMAIL": "real@example.invalid",
    "GIT_AUTHOR_DATE": "2021-03-04T05:06:07Z", "GIT_COMMITTER_DATE": "2021-03-04T05:06:07Z",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_TERMINAL_PROMPT": "0",
}


def need(tool: str, package: str) -> str:
    """The tool's path; a skip (a failure under CI=true) naming the package if it is missing."""
    path = shutil.which(tool)
    if path:
        return path
    msg = f"{tool} is not installed (Debian package {package}: ./install.sh installs it as root)"
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


# ---- running a program, bounded --------------------------------------------------------------

@dataclass
class Result:
    argv: list[str]
    returncode: int | None   # None: still running at the timeout, and killed
    stdout: str
    stderr: str
    elapsed: float
    stuck: list[str]         # at a timeout: what each process of the run was doing

    def report(self) -> str:
        head = (f"timed out after {self.elapsed:.1f} s and was killed" if self.returncode is None
                else f"exit status {self.returncode} after {self.elapsed:.1f} s")
        cmd = shlex.join(self.argv)
        out = [f"$ {cmd if len(cmd) < 400 else cmd[:400] + ' ...'}", head,
               "--- stderr:", self.stderr.rstrip()[-3000:]]
        if self.stuck:
            out += ["--- processes at the timeout:", *self.stuck]
        return "\n".join(out)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _syscall_name(nr: str) -> str:
    try:
        from qrun.syscalls.table import by_number
        sc = by_number(os.uname().machine.replace("arm64", "aarch64")).get(int(nr))
        return f"{sc.name}({nr})" if sc else nr
    except (ImportError, KeyError, ValueError):
        return nr


def _describe(pid: int) -> str:
    def read(name: str) -> str:
        try:
            with open(f"/proc/{pid}/{name}") as f:
                return f.read().strip()
        except OSError:
            return "?"
    st = read("stat")
    state = st.rpartition(")")[2].split()[0] if ")" in st else "?"
    nr = read("syscall").split()[0] if read("syscall") not in ("?", "") else "?"
    args = read("cmdline").replace("\0", " ").strip()[:100]
    return (f"  pid {pid} state {state} wchan {read('wchan')} syscall "
            f"{_syscall_name(nr) if nr.isdigit() else nr}: {args}")


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Result:
    """Run argv in its own session with no stdin; at the timeout, note what every process of
    the run (the stub and the job included) was doing, then kill them all by pid."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    stuck: list[str] = []
    try:
        out, err = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        tree = _descendants(proc.pid)
        stuck = [_describe(p) for p in tree]
        for p in reversed(tree):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:  # a process outside the tree still holds a pipe
            out, err = b"", b"(output lost: a pipe stayed open after the kill)"
            proc.kill()
        rc = None
    return Result(argv, rc, out.decode(errors="replace"), err.decode(errors="replace"),
                  time.monotonic() - started, stuck)


# ---- trees -------------------------------------------------------------------------------------

def snapshot(root: Path, with_mtime: Callable[[str], bool] = lambda rel: False,
             ignore: Callable[[str], bool] = lambda rel: False) -> dict[str, str]:
    """Every entry below root: type, mode, owner, size and sha256 (files) or target (links),
    and the mtime where with_mtime(relative path) says so."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if ignore(rel):
                continue
            st = p.lstat()
            mode = f"{stat.S_IMODE(st.st_mode):04o} {st.st_uid}:{st.st_gid}"
            if stat.S_ISLNK(st.st_mode):
                desc = f"link -> {os.readlink(p)}"
            elif stat.S_ISDIR(st.st_mode):
                desc = f"dir {mode}"
            elif stat.S_ISREG(st.st_mode):
                desc = f"file {mode} {st.st_size} {hashlib.sha256(p.read_bytes()).hexdigest()[:20]}"
            else:
                desc = f"other {stat.filemode(st.st_mode)}"
            if with_mtime(rel):
                desc += f" mtime {st.st_mtime_ns}"
            out[rel] = desc
    return out


def tree_diff(expected: dict[str, str], got: dict[str, str]) -> list[str]:
    """What differs, one line per path: empty when the trees are the same."""
    lines = []
    for rel in sorted(expected.keys() | got.keys()):
        a, b = expected.get(rel), got.get(rel)
        if a != b:
            lines.append(f"{rel}: expected {a or '(missing)'}, got {b or '(missing)'}")
    return lines


def under(*prefixes: str) -> Callable[[str], bool]:
    return lambda rel: any(rel == p or rel.startswith(p + "/") for p in prefixes)


# ---- native and qrun runs from the same start ----------------------------------------------------

@dataclass
class Pair:
    native: Result
    remote: Result
    native_tree: dict[str, str]
    remote_tree: dict[str, str]

    def mismatches(self) -> list[str]:
        """Every difference between the two runs (stdout, exit status, files left behind)."""
        n, q = self.native, self.remote
        assert n.returncode is not None, f"the native run itself timed out:\n{n.report()}"
        if q.returncode is None:
            return [f"under qrun: timed out after {q.elapsed:.0f} s (stdout so far: {q.stdout[-200:]!r})"]
        out = []
        if q.stdout != n.stdout:
            diff = difflib.unified_diff(n.stdout.splitlines(), q.stdout.splitlines(), "native", "qrun",
                                        lineterm="", n=1)
            out.append("stdout differs:\n" + "\n".join(list(diff)[:60]))
        if q.returncode != n.returncode:
            out.append(f"exit status: native {n.returncode}, qrun {q.returncode}")
        out += [f"file {line}" for line in tree_diff(self.native_tree, self.remote_tree)[:60]]
        return out

    def check(self) -> None:
        problems = self.mismatches()
        assert problems == [], "\n".join(problems) + "\n" + self.remote.report()


def job_env(tmp_path: Path, work: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "LC_ALL": "C", "TZ": "UTC", "HOME": str(home), "PWD": str(work), **extra}


def fresh(work: Path, prepare: Callable[[Path], None]) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    prepare(work)


def compare_runs(work: Path, prepare: Callable[[Path], None], native_argv: list[str],
                 remote_argv: list[str], env: dict[str, str], timeout: float = 120,
                 snap: Callable[[Path], dict[str, str]] = snapshot,
                 after: Callable[[Path], object] | None = None) -> tuple[Pair, object, object]:
    """Run native_argv, then remote_argv, each from a fresh workdir made by prepare. `after`
    inspects the workdir each run left behind (natively, at home); its two results are returned.
    The second run's workdir is left in place."""
    fresh(work, prepare)
    native = run(native_argv, work, env, timeout)
    native_tree = snap(work)
    native_after = after(work) if after else None
    fresh(work, prepare)
    remote = run(remote_argv, work, env, timeout)
    remote_tree = snap(work)
    remote_after = after(work) if after else None
    return Pair(native, remote, native_tree, remote_tree), native_after, remote_after


def native_and_qrun(prefix: list[str], work: Path, prepare: Callable[[Path], None], argv: list[str],
                    env: dict[str, str], timeout: float = 120,
                    snap: Callable[[Path], dict[str, str]] = snapshot,
                    after: Callable[[Path], object] | None = None) -> tuple[Pair, object, object]:
    """argv natively, then under qrun (prefix + argv): see compare_runs."""
    return compare_runs(work, prepare, argv, prefix + argv, env, timeout, snap, after)


def nothing(work: Path) -> None:
    pass


# ---- 1. a static Go program with goroutines and children -------------------------------------

def build_go(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """tests/real/NAME built as a static Go binary, offline."""
    go = need("go", "golang-go")
    out = tmp_path_factory.mktemp("go") / name
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", "GOPROXY": "off",
           "GOTOOLCHAIN": "local", "GO111MODULE": "on"}
    r = subprocess.run([go, "build", "-trimpath", "-o", str(out), "."], cwd=REAL / name, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"go build failed:\n{r.stderr}"
    return out


@pytest.fixture(scope="session")
def go_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_go(tmp_path_factory, "goprog")


def test_go_static_goroutines_and_children(transparent: list[str], go_program: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    pair, _, _ = native_and_qrun(transparent, work, nothing, [str(go_program)], job_env(tmp_path, work))
    assert pair.native.returncode == 3 and f"cwd {work}\n" in pair.native.stdout, pair.native.report()
    pair.check()


# ---- 2. a musl-static C program --------------------------------------------------------------

@pytest.fixture(scope="session")
def musl_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = need("musl-gcc", "musl-tools")
    out = tmp_path_factory.mktemp("musl") / "muslprog"
    r = subprocess.run([cc, "-static", "-O1", "-Wall", "-o", str(out), str(REAL / "muslprog.c")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"musl-gcc failed:\n{r.stderr}"
    return out


def test_musl_static_file_io_and_fork_exec(transparent: list[str], musl_program: Path,
                                           tmp_path: Path) -> None:
    work = tmp_path / "work"
    pair, _, _ = native_and_qrun(transparent, work, nothing, [str(musl_program)], job_env(tmp_path, work))
    assert pair.native.returncode == 6 and "self exited 4\n" in pair.native.stdout, pair.native.report()
    pair.check()


# ---- 3. sqlite3 with the rollback journal -----------------------------------------------------

SQL_SETUP = """\
PRAGMA journal_mode;
CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER, price REAL);
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
INSERT INTO item(name, qty, price) SELECT printf('item-%05d', i), i % 17, (i % 101) * 0.25 FROM n;
COMMIT;
BEGIN;
UPDATE item SET qty = qty + 1000;
DELETE FROM item WHERE id % 3 = 0;
ROLLBACK;
BEGIN;
DELETE FROM item WHERE id % 5 = 0;
UPDATE item SET name = upper(name) WHERE id % 7 = 0;
COMMIT;
CREATE INDEX item_qty ON item(qty);
SELECT count(*), sum(qty), printf('%.2f', sum(price)) FROM item;
"""

SQL_QUERY = """\
PRAGMA integrity_check;
SELECT qty, count(*) FROM item GROUP BY qty ORDER BY qty;
SELECT id, name FROM item WHERE id IN (1, 7, 14, 2999) ORDER BY id;
"""


def test_sqlite3_rollback_journal(transparent: list[str], tmp_path: Path) -> None:
    sqlite3 = need("sqlite3", "sqlite3")
    work = tmp_path / "work"

    def prepare(w: Path) -> None:
        (w / "setup.sql").write_text(SQL_SETUP)
        (w / "query.sql").write_text(SQL_QUERY)

    def dump(w: Path) -> str:
        r = subprocess.run([sqlite3, "-batch", str(w / "app.db"), "PRAGMA integrity_check;", ".dump"],
                           capture_output=True, text=True, timeout=60)
        return f"exit {r.returncode}\n{r.stdout}{r.stderr}"

    script = f"{sqlite3} -batch -bail app.db < setup.sql && {sqlite3} -batch -bail app.db < query.sql"
    pair, native_db, remote_db = native_and_qrun(transparent, work, prepare, ["/bin/sh", "-c", script],
                                                 job_env(tmp_path, work), after=dump)
    n = pair.native
    assert n.returncode == 0 and n.stdout.startswith("delete\n2400|"), n.report()
    assert isinstance(native_db, str) and native_db.startswith("exit 0\nok\n")
    problems = pair.mismatches()
    if remote_db != native_db:
        problems.append("the db qrun left at home, read natively, differs:\n" + "\n".join(
            list(difflib.unified_diff(native_db.splitlines(), str(remote_db).splitlines(), "native", "qrun",
                                      lineterm="", n=1))[:40]))
    assert problems == [], "\n".join(problems) + "\n" + pair.remote.report()


# ---- 4. git ----------------------------------------------------------------------------------

GIT_SCRIPT = """\
set -e
git init -q -b main repo
cd repo
printf 'alpha\\nbeta\\ngamma\\n' > a.txt
mkdir -p src/deep
for i in 1 2 3 4 5; do echo "file $i" > src/f$i.c; done
echo deep > src/deep/d.txt
chmod 755 src/f5.c
git add -A
git commit -q -m 'first commit'
git checkout -q -b feature
echo 'feature line' >> src/f1.c
git mv src/f2.c src/renamed.c
git commit -q -am 'feature work'
git checkout -q main
printf 'alpha\\nbeta\\ngamma\\ndelta\\n' > a.txt
git rm -q src/f3.c
git commit -q -am 'main work'
git merge -q --no-edit feature
git tag -a v1 -m 'version 1'
echo untracked > new.txt
echo changed >> a.txt
git log --oneline --graph --all
git status --porcelain
git ls-files -s
git cat-file -p HEAD
git fsck --strict --no-progress
git gc -q
git count-objects -v | grep -E '^(count|in-pack|packs|garbage)'
git fsck --strict --no-progress
git describe --tags
git diff --stat
"""


def test_git_commit_branch_merge_fsck(transparent: list[str], tmp_path: Path) -> None:
    git = need("git", "git")
    work = tmp_path / "work"

    def inspect(w: Path) -> str:  # what the repo left at home says, asked natively
        env = {**os.environ, **GIT_ENV}
        out = []
        for args in (["fsck", "--strict", "--no-progress"], ["log", "--format=%H %T %P %s", "--all"],
                     ["status", "--porcelain"], ["diff", "--stat"]):
            r = subprocess.run([git, "-C", str(w / "repo"), *args], capture_output=True, text=True,
                               env=env, timeout=60)
            out.append(f"git {args[0]}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        return "".join(out)

    # The index holds inode numbers and ctimes, which differ from run to run natively too.
    snap = lambda w: snapshot(w, ignore=under("repo/.git/index"))  # noqa: E731
    pair, native_repo, remote_repo = native_and_qrun(
        transparent, work, nothing, ["/bin/sh", "-c", GIT_SCRIPT], job_env(tmp_path, work, **GIT_ENV),
        snap=snap, after=inspect)
    assert pair.native.returncode == 0 and "\nv1\n" in pair.native.stdout, pair.native.report()
    assert "*   " in pair.native.stdout  # the merge commit in the graph
    problems = pair.mismatches()
    if remote_repo != native_repo:
        problems.append(f"the repo qrun left at home, asked natively:\n{remote_repo}\n"
                        f"expected:\n{native_repo}")
    assert problems == [], "\n".join(problems) + "\n" + pair.remote.report()


# ---- 5. GNU tar: modes, mtimes, symlinks -------------------------------------------------------

def make_mode_tree(w: Path) -> None:
    src = w / "src"
    (src / "private").mkdir(parents=True)
    (src / "sub").mkdir()
    (src / "secret.txt").write_text("0600 file\n")
    (src / "run.sh").write_text("#!/bin/sh\necho run\n")
    (src / "private" / "inner.txt").write_text("inside a 0700 dir\n" * 50)
    (src / "sub" / "data.bin").write_bytes(bytes(range(256)) * 40)
    (src / "link").symlink_to("run.sh")
    (src / "sub" / "dangling").symlink_to("../nowhere")
    modes = {"secret.txt": 0o600, "run.sh": 0o755, "private/inner.txt": 0o640, "sub/data.bin": 0o644,
             "private": 0o700, "sub": 0o750, ".": 0o755}
    for i, rel in enumerate(["secret.txt", "run.sh", "private/inner.txt", "sub/data.bin"]):
        os.chmod(src / rel, modes[rel])
        os.utime(src / rel, ns=(1_500_000_000_000_000_000, 1_400_000_000_000_000_000 + i * 86_400 * 10**9))
    for i, rel in enumerate(["link", "sub/dangling"]):
        os.utime(src / rel, ns=(1_500_000_000_000_000_000, 1_300_000_000_000_000_000 + i * 10**9),
                 follow_symlinks=False)
    for i, rel in enumerate(["private", "sub", "."]):  # directories last: their mtimes stay
        os.chmod(src / rel, modes[rel])
        os.utime(src / rel, ns=(1_500_000_000_000_000_000, 1_200_000_000_000_000_000 + i * 3600 * 10**9))


TAR_SCRIPT = """\
set -e
tar --sort=name -cf a.tar src
tar --sort=name -czf a.tgz src
mkdir x1 x2
tar -xf a.tar -C x1
tar -xzf a.tgz -C x2
tar -tvf a.tar
tar --sort=name -cf x1.tar -C x1 src
cmp a.tar x1.tar && echo re-archived-identically
"""


def test_gnu_tar_keeps_modes_mtimes_and_links(transparent: list[str], tmp_path: Path) -> None:
    need("tar", "tar")
    need("gzip", "gzip")
    work = tmp_path / "work"
    snap = lambda w: snapshot(w, with_mtime=under("src", "x1/src", "x2/src"))  # noqa: E731
    pair, _, _ = native_and_qrun(transparent, work, make_mode_tree, ["/bin/sh", "-c", TAR_SCRIPT],
                                 job_env(tmp_path, work), snap=snap)
    n = pair.native
    assert n.returncode == 0 and "re-archived-identically" in n.stdout, n.report()
    original = {k: v for k, v in pair.native_tree.items() if under("src")(k)}
    for x in ("x1", "x2"):  # natively, extraction restores the tree exactly
        assert {k[len(x) + 1:]: v for k, v in pair.native_tree.items() if under(f"{x}/src")(k)} == original
    problems = pair.mismatches()
    for x in ("x1", "x2"):  # and under qrun, too: say how the extracted tree differs from src
        got = {k[len(x) + 1:]: v for k, v in pair.remote_tree.items() if under(f"{x}/src")(k)}
        problems += [f"{x}/{line}" for line in tree_diff(original, got)]
    assert problems == [], "\n".join(problems) + "\n" + pair.remote.report()


# ---- 6. Python threads running children -------------------------------------------------------

def test_python_thread_pool_with_subprocesses(transparent: list[str], tmp_path: Path) -> None:
    python = need("/usr/bin/python3", "python3")
    work = tmp_path / "work"
    pair, _, _ = native_and_qrun(transparent, work, nothing, [python, str(REAL / "pool.py")],
                                 job_env(tmp_path, work))
    assert pair.native.returncode == 9 and pair.native.stdout.count(" py=") == 16, pair.native.report()
    pair.check()


# ---- 7. make -j2 with gcc ----------------------------------------------------------------------

def test_make_j2_builds_a_c_project(transparent: list[str], tmp_path: Path) -> None:
    need("gcc", "gcc")
    need("make", "make")
    work = tmp_path / "work"

    def prepare(w: Path) -> None:
        for f in (REAL / "mkproj").iterdir():
            shutil.copy(f, w / f.name)

    def run_prog(w: Path) -> str:
        if not (w / "prog").exists():
            return "no prog"
        return subprocess.run([str(w / "prog"), "9", "-3", "4"], capture_output=True, text=True,
                              timeout=30).stdout

    pair, native_out, remote_out = native_and_qrun(transparent, work, prepare, ["make", "-s", "-j2", "check"],
                                                   job_env(tmp_path, work), after=run_prog)
    assert pair.native.stdout == "proj 1.2: n=4 sorted=1,7,12,30 sum=50 mean=12.500\n", pair.native.report()
    problems = pair.mismatches()
    if remote_out != native_out:
        problems.append(f"the program qrun built, run natively, printed {remote_out!r}, not {native_out!r}")
    assert problems == [], "\n".join(problems) + "\n" + pair.remote.report()


def lua_tarball() -> Path:
    for d in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if (d / LUA_TAR).is_file():
            return d / LUA_TAR
    msg = f"{LUA_TAR} is not in shared/data beside the checkout"
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


LUA_SCRIPT = """\
set -e
make -s -j2 -C lua CFLAGS='-O1 -std=c99 -DLUA_USE_LINUX' MYLIBS=-ldl MYLDFLAGS=-Wl,-E
lua/lua -e 'local t = {} for i = 1, 12 do t[i] = i * i end
local f = assert(io.open("squares.txt", "w")) f:write(table.concat(t, ","), "\\n") f:close()
print(_VERSION, io.open("squares.txt"):read("l"), os.getenv("TZ"))'
"""


def test_make_j2_builds_lua(transparent: list[str], tmp_path: Path) -> None:
    need("gcc", "gcc")
    need("make", "make")
    tarball = lua_tarball()
    work = tmp_path / "work"

    def prepare(w: Path) -> None:
        with tarfile.open(tarball) as tf:
            tf.extractall(w)

    pair, _, _ = native_and_qrun(transparent, work, prepare, ["/bin/sh", "-c", LUA_SCRIPT],
                                 job_env(tmp_path, work), timeout=240)
    n = pair.native
    assert n.returncode == 0 and n.stdout.startswith("Lua 5.4\t1,4,9,"), n.report()
    pair.check()


# ---- 8. flock(1) contention -------------------------------------------------------------------

# The holder takes the lock and keeps it 2 s; the second flock must wait for it (~1.5 s or more).
FLOCK_SCRIPT = """\
flock lk sh -c ': > held; sleep 2' &
until [ -e held ]; do sleep 0.05; done
t0=$(date +%s%N)
flock lk echo got
t1=$(date +%s%N)
waited=$(( (t1 - t0) / 1000000 ))
if [ "$waited" -ge 1200 ]; then echo 'waited for the holder'; else echo "waited only ${waited} ms"; fi
wait
"""


def test_flock_contention(transparent: list[str], tmp_path: Path) -> None:
    need("flock", "util-linux")
    work = tmp_path / "work"
    pair, _, _ = native_and_qrun(transparent, work, nothing, ["/bin/sh", "-c", FLOCK_SCRIPT],
                                 job_env(tmp_path, work), timeout=40)
    assert pair.native.stdout == "got\nwaited for the holder\n", pair.native.report()
    assert pair.native.returncode == 0
    pair.check()
    assert pair.remote.elapsed < 20, pair.remote.report()


# ---- 9. large writes ---------------------------------------------------------------------------

def make_big_tree(w: Path) -> None:
    rnd = random.Random(20240601)
    big = w / "big"
    big.mkdir()
    (big / "random.bin").write_bytes(rnd.randbytes(3 << 20))
    (big / "text.txt").write_text("".join(f"line {i} {rnd.random():.12f}\n" for i in range(40000)))
    (big / "five.bin").write_bytes(rnd.randbytes(5 << 20))
    for i, name in enumerate(["random.bin", "text.txt", "five.bin", "."]):
        os.utime(big / name, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9 + i))


BIG_SCRIPT = """\
set -e
tar --sort=name -czf big.tgz big
cp big/five.bin copy.bin
/usr/bin/python3 -c 'f = open("py.bin", "wb"); print(f.write(bytes(range(256)) * 4096)); f.close()'
sha256sum big.tgz copy.bin py.bin
gzip -t big.tgz && echo gzip-ok
cmp big/five.bin copy.bin && echo cmp-ok
"""


def test_large_writes(transparent: list[str], tmp_path: Path) -> None:
    need("sha256sum", "coreutils")
    work = tmp_path / "work"
    pair, _, _ = native_and_qrun(transparent, work, make_big_tree, ["/bin/sh", "-c", BIG_SCRIPT],
                                 job_env(tmp_path, work))
    assert pair.native.returncode == 0 and pair.native.stdout.startswith("1048576\n"), pair.native.report()
    assert pair.native.stdout.endswith("gzip-ok\ncmp-ok\n")
    pair.check()


# ---- 10. a pipeline whose reader stops early ----------------------------------------------------

PIPE_SCRIPT = '"$@" | head -1; echo "left side exited ${PIPESTATUS[0]}"'


def test_qrun_yes_into_head_ends(transparent: list[str], tmp_path: Path) -> None:
    bash = need("bash", "bash")
    need("yes", "coreutils")
    work = tmp_path / "work"
    pipeline = [bash, "-c", PIPE_SCRIPT, "bash"]  # `CMD | head -1` with CMD as "$@"
    pair, _, _ = compare_runs(work, nothing, pipeline + ["yes"], pipeline + transparent + ["yes"],
                              job_env(tmp_path, work), timeout=25)
    assert pair.native.stdout == "y\nleft side exited 141\n", pair.native.report()
    pair.check()
    assert pair.remote.elapsed < 10, pair.remote.report()


def test_yes_into_head_inside_the_job_ends(transparent: list[str], tmp_path: Path) -> None:
    need("yes", "coreutils")
    work = tmp_path / "work"
    pair, _, _ = native_and_qrun(transparent, work, nothing, ["/bin/sh", "-c", "yes | head -1; echo done"],
                                 job_env(tmp_path, work), timeout=25)
    assert pair.native.stdout == "y\ndone\n", pair.native.report()
    pair.check()
