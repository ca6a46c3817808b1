"""The command line's contract: `--version`, one `qrun: ...` line and a documented status for
bad input (never a traceback), one status for unknown hosts, options refused where they
do not apply, the current directory checked at home, the launchers' command lines, and
every recipe of docs/habits.md and docs/cluster.md run as written.

Runs as any user: jobs go to `-w local`, or to a cluster file whose `ssh` and `srun` are
stand-ins on PATH (they record how they were called and run the stub on this machine)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
import recipes
from qrun.homenode import cli, exitcodes, launchers

REPO = Path(__file__).resolve().parent.parent
NO_HOST = exitcodes.NO_HOST
USAGE = exitcodes.USAGE

# ---- the stand-ins -------------------------------------------------------------------------

FAKE_SSH = r'''#!{python}
"""ssh stand-in: logs its argv, keeps "master connections" as marker files, runs the
remote command with sh in $HOME (as sshd would) on this machine."""
import json, os, sys, time
argv = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps({{"tool": "ssh", "argv": argv}}) + "\n")
i, control, flags = 0, None, set()
while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
    if argv[i] in ("-o", "-F", "-i", "-p", "-J", "-l", "-O"):
        if argv[i] == "-O":
            control = argv[i + 1]
        i += 2
    else:
        flags.add(argv[i])
        i += 1
target = argv[i].rpartition("@")[2]
i += 1
if i < len(argv) and argv[i] == "--":
    i += 1
if target.startswith("refuse"):
    sys.stderr.write(f"root@{{target}}: Permission denied (publickey).\n")
    sys.exit(255)
marker = os.path.join({masters!r}, target)
if control == "check":
    sys.exit(0 if os.path.exists(marker) else 255)
if control == "exit":
    os.unlink(marker)
    sys.stderr.write("Exit request sent.\n")
    sys.exit(0)
if "-N" in flags:
    time.sleep(0.3)  # a key exchange: long enough for concurrent first jobs to collide
    open(marker, "w").close()
    sys.exit(0)
if "-G" in flags:  # (a ControlPath nothing listens on: qrun goes on checking)
    print("controlpath " + marker + ".sock")
    sys.exit(0)
os.chdir(os.environ.get("HOME", "/"))
os.execv("/bin/sh", ["sh", "-c", " ".join(argv[i:])])
'''

FAKE_SRUN = r'''#!{python}
"""srun stand-in: logs its argv and runs the command on this machine in --chdir."""
import json, os, sys
argv = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps({{"tool": "srun", "argv": argv}}) + "\n")
i, chdir = 0, os.getcwd()
while i < len(argv) and argv[i].startswith("-"):
    if argv[i].startswith("--chdir="):
        chdir = argv[i].split("=", 1)[1]
    i += 1
os.chdir(chdir)
os.execvp(argv[i], argv[i:])
'''

SCRIPTS = {
    "cmd": '#!/bin/sh\necho "ran${*:+ $*} in $(pwd)"\n',
    "cmd1": "#!/bin/sh\necho one\n",
    "cmd2": "#!/bin/sh\nexec tr o 0\n",
}

CLUSTER_FILE = """home_addr = "127.0.0.1"
[hosts.host]
[hosts.node1]
[hosts.node2]
[hosts.node3]
resources = { scratch_gb = 500, gpu = 1 }
[hosts.node4]
[hosts.node5]
"""


@dataclass
class Site:
    """A user's world for one test: HOME (with the cluster file), a work directory, PATH
    with the stand-ins and the recipe's commands, and the stand-ins' log."""
    root: Path
    qrun: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def log(self) -> Path:
        return self.root / "launchers.log"

    def calls(self, tool: str | None = None) -> list[list[str]]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r["argv"] for r in rows if tool is None or r["tool"] == tool]

    def jobs(self) -> list[str]:
        """The hosts the ssh stand-in ran a job (not a master, a check or a look at the
        config) on, in order."""
        out = []
        for argv in self.calls("ssh"):
            if "-O" in argv or "-N" in argv or "-G" in argv:
                continue
            words = [w for w in argv if w != "--"]
            out.append(next(w for i, w in enumerate(words) if not w.startswith("-")
                            and (i == 0 or words[i - 1] not in ("-o", "-F"))))
        return out

    def run(self, args: list[str] | str, *, cwd: Path | None = None, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """qrun with `args`, or a shell command line (a recipe) when given a string."""
        argv = ["/bin/sh", "-c", args] if isinstance(args, str) else self.qrun + args
        return subprocess.run(argv, cwd=cwd or self.work, env=env or self.env, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)


def make_site(root: Path, qrun_cmd: list[str], cluster: str | None = CLUSTER_FILE) -> Site:
    site = Site(root, qrun_cmd)
    bin_dir = root / "bin"
    for d in (bin_dir, site.home, site.work, root / "masters", root / "state"):
        d.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    scripts = dict(SCRIPTS, ssh=FAKE_SSH.format(python=py, log=str(site.log), masters=str(root / "masters")),
                   srun=FAKE_SRUN.format(python=py, log=str(site.log)))
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (site.work / "train").write_text("#!/bin/sh\necho trained\n")
    (site.work / "train").chmod(0o755)
    (site.work / "FILE").write_text("from a file\n")
    if cluster is not None:
        conf = site.home / ".config" / "qrun"
        conf.mkdir(parents=True)
        (conf / "config.toml").write_text(cluster)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QRUN_", "SLURM"))}
    env.update(HOME=str(site.home), XDG_STATE_HOME=str(root / "state"),
               PATH=os.pathsep.join([str(bin_dir), os.path.dirname(qrun_cmd[0]), env.get("PATH", "")]))
    site.env = env
    return site


@pytest.fixture
def site(tmp_path: Path, qrun_cmd: list[str]) -> Site:
    return make_site(tmp_path, qrun_cmd)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """qrun's complaint: exactly one `qrun...: ` line on stderr, no traceback, no stdout."""
    lines = r.stderr.splitlines()
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("qrun"), r.stderr
    assert r.stdout == ""
    return lines[0]


# ---- 1. --version --------------------------------------------------------------------------

def test_version(site: Site) -> None:
    r = site.run(["--version"])
    assert (r.returncode, r.stdout, r.stderr) == (0, f"qrun {metadata.version('qrun-runtime')}\n", "")
    assert "--version" in site.run(["--help"]).stdout


def test_version_falls_back_to_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with open(REPO / "pyproject.toml", "rb") as f:
        assert cli.version() == tomllib.load(f)["project"]["version"]


# ---- 2. bad values: one line, status 2 -------------------------------------------------------

@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_bad_qrun_timeout(site: Site, value: str) -> None:
    r = site.run(["-w", "local", "--", "true"], env=dict(site.env, QRUN_TIMEOUT=value))
    assert r.returncode == USAGE
    assert one_line(r) == f"qrun: $QRUN_TIMEOUT={value!r}: expected a number of seconds > 0"


def test_good_qrun_timeout_and_empty_means_default(site: Site) -> None:
    for value in ("", "7.5"):
        r = site.run(["-w", "local", "--", "echo", "ok"], env=dict(site.env, QRUN_TIMEOUT=value))
        assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


@pytest.mark.parametrize("value", ["0", "-1", "abc", "inf"])
def test_bad_timeout_option(site: Site, value: str) -> None:
    r = site.run([f"--timeout={value}", "-w", "local", "--", "true"])
    assert r.returncode == USAGE
    assert one_line(r) == (f"qrun: argument --timeout: expected a number of seconds > 0, not {value!r} "
                           "(see `qrun --help`)")


def test_other_argparse_errors_are_one_line(site: Site) -> None:
    for args in (["--no-such-option", "--", "true"], ["hosts", "--bogus"], ["agent", "--bogus"]):
        r = site.run(args)
        assert r.returncode == USAGE
        assert "unrecognized arguments" in one_line(r)


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_bad_virtual_ttl(site: Site, value: str) -> None:
    env = dict(site.env, QRUN_VIRTUAL_TTL=value)
    for args in (["-w", "node1", "--", "true"], ["hosts"]):
        r = site.run(args, env=env)
        assert r.returncode == USAGE
        assert one_line(r) == f"qrun: $QRUN_VIRTUAL_TTL={value!r}: expected a number of seconds >= 0"
    assert site.jobs() == []  # refused before any host was contacted


def guide_cluster_file() -> str:
    """The cluster file the guide shows (an indented block), placeholders and all."""
    text = (REPO / "docs" / "guide.md").read_text()
    m = re.search(r"\n((?:    .*\n|\n)*?    home_addr = .*\n(?:    .*\n|\n)*)", text)
    assert m, "docs/guide.md no longer shows a cluster file"
    return "\n".join(line[4:] for line in m.group(1).splitlines())


def test_the_guides_placeholder_key_is_a_bad_cluster_file(site: Site) -> None:
    example = guide_cluster_file()
    assert 'agent_public_key = "..."' in example
    conf = site.root / "guide.toml"
    conf.write_text(example)
    expected = (f"bad cluster file {conf}: agent_public_key is not a CURVE key (40 characters, as printed "
                "by `qrun agent --keygen`)")
    for args, prog in ((["--config", str(conf), "--", "true"], "qrun"),
                       (["hosts", "--config", str(conf)], "qrun"),
                       (["agent", "--config", str(conf)], "qrun agent")):
        r = site.run(args)
        assert r.returncode == USAGE
        assert one_line(r) == f"{prog}: {expected}"
    # with a real key pair the same file is fine
    keys = site.run(["agent", "--keygen"]).stdout
    pub, sec = re.findall(r'"(.+)"', keys)
    conf.write_text(example.replace('agent_public_key = "..."', f'agent_public_key = "{pub}"')
                    .replace('agent_secret_key = "..."', f'agent_secret_key = "{sec}"'))
    r = site.run(["hosts", "--config", str(conf)], env=dict(site.env, PATH="/usr/bin:/bin"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:2] == ["HOST", "STATE"]


@pytest.mark.parametrize("snippet, says", [
    ("agent_port = 0", "agent_port must be a TCP port (1-65535)"),
    ("agent_port = 70000", "agent_port must be a TCP port (1-65535)"),
    ("max_jobs_per_user = -1", "max_jobs_per_user must be 0 (no limit) or more"),
    ("agent_secret_key = \"short\"", "agent_secret_key is not a CURVE key"),
    ("ssh_command = \"ssh -o 'unbalanced\"", "ssh_command cannot be split like a command line"),
    ("srun_command = \"\"", "srun_command is empty"),
    ("[hosts.a]\nmax_jobs = -2", "[hosts.a] max_jobs must be 0 (no limit) or more"),
    ("[hosts.a]\nspeed = nan", "[hosts.a] speed and memory must be positive"),
    ("[hosts.a]\nmemory = inf", "[hosts.a] speed and memory must be positive"),
    ("[hosts.a]\nstub = \"   \"", "[hosts.a] stub is blank"),
])
def test_values_that_cannot_work(site: Site, snippet: str, says: str) -> None:
    conf = site.root / "bad.toml"
    conf.write_text(snippet + "\n")
    r = site.run(["--config", str(conf), "-w", "a", "--", "true"])
    assert r.returncode == USAGE
    assert one_line(r).startswith(f"qrun: bad cluster file {conf}: {says}")


def test_cluster_file_that_is_a_directory(site: Site) -> None:
    conf = site.home / ".config" / "qrun" / "config.toml"
    conf.unlink()
    conf.mkdir()
    expected = f"cannot read the cluster file {conf}: it is a directory"
    for args, prog in ((["--", "true"], "qrun"), (["hosts"], "qrun"), (["agent"], "qrun agent"),
                       (["--config", str(conf), "--", "true"], "qrun")):
        r = site.run(args)
        assert r.returncode == USAGE, r.stderr
        assert one_line(r) == f"{prog}: {expected}"


def test_cluster_file_that_is_not_text(site: Site) -> None:
    conf = site.home / ".config" / "qrun" / "config.toml"
    conf.write_bytes(b"home_addr = \"\xff\xfe\"\n")
    r = site.run(["--", "true"])
    assert r.returncode == USAGE
    assert one_line(r) == f"qrun: bad cluster file {conf}: not UTF-8 text"



@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A directory another user can reach (pytest's own tmp dirs are private to us)."""
    d = Path(tempfile.mkdtemp(prefix="qrun-cli-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for p in [d, *d.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(d, ignore_errors=True)


def as_other_user(argv: list[str]) -> list[str]:
    """argv run as a user that permissions apply to: as root, `nobody` through setpriv."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv (util-linux) is needed to test permissions as root")
    out = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--", *argv]
    probe = subprocess.run(out[:-len(argv)] + [argv[0], "--version"], capture_output=True, text=True,
                           timeout=60, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"qrun cannot run as nobody here: {probe.stderr.strip()}")
    return out


def test_unreadable_config_directory(shared_root: Path, qrun_cmd: list[str]) -> None:
    site = make_site(shared_root, qrun_cmd)
    conf_dir = site.home / ".config" / "qrun"
    for p in (shared_root, site.home, site.home / ".config", site.work):
        p.chmod(0o755)
    conf_dir.chmod(0)
    r = subprocess.run(as_other_user(qrun_cmd + ["--", "true"]), cwd=site.work, capture_output=True,
                       text=True, timeout=60, env=dict(site.env, XDG_STATE_HOME="/nonexistent"))
    assert r.returncode == USAGE
    assert one_line(r) == f"qrun: cannot read the cluster file {conf_dir}/config.toml: Permission denied"
    conf_dir.chmod(0o755)
    (conf_dir / "config.toml").chmod(0)
    r = subprocess.run(as_other_user(qrun_cmd + ["hosts"]), cwd=site.work, capture_output=True,
                       text=True, timeout=60, env=site.env)
    assert r.returncode == USAGE
    assert one_line(r) == f"qrun: cannot read the cluster file {conf_dir}/config.toml: Permission denied"


def test_bad_environment_for_the_stub_and_the_state_file(site: Site) -> None:
    r = site.run(["-w", "local", "--", "true"], env=dict(site.env, QRUN_STUB="   "))
    assert r.returncode == USAGE
    assert one_line(r) == "qrun: --stub-command (or $QRUN_STUB) is blank"
    not_a_dir = site.root / "a-file"
    not_a_dir.write_text("")
    r = site.run(["-w", "node1", "--", "true"], env=dict(site.env, XDG_STATE_HOME=str(not_a_dir)))
    assert r.returncode == USAGE
    assert one_line(r).startswith(f"qrun: cannot use the state file {not_a_dir}/qrun/placement.json")
    (site.root / "state" / "qrun").mkdir()
    (site.root / "state" / "qrun" / "placement.json").write_text('{"running": [1], "dispatches": {"a": 2}}')
    r = site.run(["-w", "node1", "--", "echo", "ok"])   # a damaged state file is not fatal
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    r = site.run(["--via", "ssh 'unbalanced", "--home-addr", "127.0.0.1", "--", "true"])
    assert r.returncode == USAGE
    assert one_line(r).startswith("qrun: --via \"ssh 'unbalanced\": cannot split it like a command line")


# ---- 3. unknown hosts, --timeout, --require, --export -------------------------------------------

def test_unknown_host_is_121_everywhere(site: Site, tmp_path: Path) -> None:
    expected_builtin = "qrun: unknown host 'nosuch' (known: local, sandbox; or use --via PREFIX)"
    no_file = dict(site.env, HOME=str(tmp_path / "nohome"))
    r = site.run(["-w", "nosuch", "--", "true"], env=no_file)          # no cluster file at all
    assert (r.returncode, one_line(r)) == (NO_HOST, expected_builtin)
    empty = tmp_path / "empty.toml"
    empty.write_text('home_addr = "127.0.0.1"\n')
    r = site.run(["--config", str(empty), "-w", "nosuch", "--", "true"])  # a file without hosts
    assert (r.returncode, one_line(r)) == (NO_HOST, expected_builtin)
    for args, line in ((["-w", "nosuch", "--", "true"], "qrun: unknown host: nosuch"),
                       (["-w", "node1,nosuch[1-2]", "--", "true"], "qrun: unknown hosts: nosuch1, nosuch2"),
                       (["-x", "nosuch", "--", "true"], "qrun: unknown host: nosuch"),
                       (["hosts", "-w", "nosuch"], "qrun: unknown host: nosuch")):
        r = site.run(args)
        assert (r.returncode, one_line(r)) == (NO_HOST, line), args
    assert site.jobs() == []
    assert exitcodes.DOC[NO_HOST].startswith("no host fits (unknown host name")
    assert "unknown host" not in exitcodes.DOC[exitcodes.LAUNCH]


@pytest.mark.parametrize("args, where", [
    (["-w", "local"], "the local host"),
    (["-w", "sandbox"], "the sandbox host"),
    (["--via", "env", "--home-addr", "127.0.0.1"], "--via"),
    (["--launcher", "slurm"], "a node Slurm chooses"),
    (["--launcher", "slurm", "-w", "n7"], "n7, which is not in the cluster file"),
])
def test_require_where_it_cannot_apply(site: Site, args: list[str], where: str) -> None:
    r = site.run(["--require", "gpu>=1", *args, "--", "true"])
    assert r.returncode == USAGE
    assert one_line(r) == f"qrun: --require applies only to the hosts of the cluster file, not to {where}"
    assert site.calls() == []


def test_require_without_any_cluster_host(site: Site, tmp_path: Path) -> None:
    r = site.run(["--require", "gpu>=1", "--", "true"], env=dict(site.env, HOME=str(tmp_path / "nohome")))
    assert r.returncode == USAGE
    assert one_line(r) == ("qrun: --require applies only to the hosts of the cluster file, not to the "
                           "sandbox host (no cluster file defines hosts)")


def test_export_with_transparent(site: Site) -> None:
    r = site.run(["--transparent", "--export=NONE", "-w", "local", "--", "true"])
    assert r.returncode == USAGE
    assert one_line(r) == ("qrun: --export=NONE: a --transparent job always gets this environment "
                           "(--export is for plain execution)")
    r = site.run(["--transparent", "--export=MYVAR", "-w", "local", "--", "true"])
    assert r.returncode == USAGE
    for spelling in ("ALL", "all"):
        r = site.run(["--transparent", f"--export={spelling}", "-w", "local", "--", "sh", "-c", "echo $MYVAR"],
                     env=dict(site.env, MYVAR="home's"))
        assert (r.returncode, r.stdout) == (0, "home's\n"), r.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["--trace=%nosuch"], "qrun: --trace=%nosuch: unknown class %nosuch"),
    (["--trace=nosuchcall"], "qrun: --trace=nosuchcall: unknown system call 'nosuchcall'"),
    (["--trace=mmap"], "qrun: --trace=mmap: mmap is never trapped (it runs untouched on the execution host)"),
    (["--trace-file", "x"], "qrun: --trace-file needs --trace"),
])
def test_bad_trace_selections(site: Site, args: list[str], says: str) -> None:
    r = site.run(["--transparent", *args, "-w", "local", "--", "true"])
    assert r.returncode == USAGE
    assert one_line(r).startswith(says), r.stderr


def test_trace_shows_routes_and_results_and_can_go_to_a_file(site: Site, tmp_path: Path) -> None:
    (tmp_path / "here").write_text("x\n")
    r = site.run(["--transparent", "--trace=%file,!close", "-w", "local", "--", "sh", "-c",
                  "cat here; cat missing; true"], cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "x\n", r.stderr
    lines = r.stderr.splitlines()
    assert any('openat(AT_FDCWD, "here"' in ln and "= 3 <home>" in ln for ln in lines), r.stderr
    assert any('"missing"' in ln and "-1 ENOENT" in ln and "<home>" in ln for ln in lines), r.stderr
    assert not any(ln.split("] ", 1)[-1].startswith("close(") for ln in lines), r.stderr
    # (the job's own stderr shares the stream, and cat writes its message in pieces, so
    # trace lines may follow a partial line of it, as with strace)
    assert all("[pid " in ln for ln in lines if "<home>" in ln or "<local>" in ln)
    assert not any("write(" in ln for ln in lines), "write is %desc, not %file"
    out = tmp_path / "trace.txt"
    r = site.run(["--transparent", "--trace=openat", "--trace-file", str(out), "-w", "local", "--",
                  "cat", "here"], cwd=tmp_path)
    assert r.returncode == 0 and "openat(" not in r.stderr, r.stderr
    traced = out.read_text().splitlines()
    assert traced and all(ln.startswith("[pid ") and "openat(" in ln for ln in traced), traced


# ---- 4. the current directory ------------------------------------------------------------------

@pytest.mark.parametrize("mode", [[], ["--transparent"]])
def test_deleted_current_directory(site: Site, mode: list[str]) -> None:
    gone = site.work / "gone"
    script = 'mkdir "$0" && cd "$0" && rmdir "$0" && exec "$@"'
    r = subprocess.run(["/bin/sh", "-c", script, str(gone), *site.qrun, *mode, "-w", "local", "--", "pwd"],
                       env=site.env, capture_output=True, text=True, timeout=60, cwd=site.work)
    assert r.returncode == USAGE
    assert one_line(r) == f"qrun: the current directory {gone} (deleted) is not accessible: No such file or directory"
    # an explicit -D still works from there (plain execution: it must exist on the host)
    r = subprocess.run(["/bin/sh", "-c", script, str(gone), *site.qrun, "-w", "local", "-D", "/", "--", "pwd"],
                       env=site.env, capture_output=True, text=True, timeout=60, cwd=site.work)
    assert (r.returncode, r.stdout) == (0, "/\n"), r.stderr


@pytest.mark.parametrize("mode", [[], ["--transparent"]])
def test_unreadable_current_directory(shared_root: Path, qrun_cmd: list[str], mode: list[str]) -> None:
    locked = shared_root / "locked"
    locked.mkdir()
    argv = qrun_cmd + [*mode, "-w", "local", "--", "pwd"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRUN_")}
    env.update(HOME=str(shared_root), XDG_STATE_HOME=str(shared_root))
    if os.geteuid() == 0:  # root enters any directory: qrun runs as nobody, started inside it
        argv = as_other_user(argv)
        locked.chmod(0)
        r = subprocess.run(argv, cwd=locked, env=env, capture_output=True, text=True, timeout=60)
    else:  # its owner steps in first, then locks it behind itself
        argv = ["sh", "-c", 'cd "$0" && chmod 0 . && exec "$@"', str(locked), *argv]
        r = subprocess.run(argv, cwd="/", env=env, capture_output=True, text=True, timeout=60)
        locked.chmod(0o700)
    assert r.returncode == USAGE
    assert one_line(r) == f"qrun: the current directory {locked} is not accessible: Permission denied"


@pytest.mark.parametrize("mode", [[], ["--transparent"]])
def test_closed_standard_fds_are_dev_null(site: Site, mode: list[str]) -> None:
    """Started with stdin, stdout or stderr closed, qrun runs the job as ssh would: that
    stream is /dev/null (the job reads EOF there), never a pipe qrun made meanwhile."""
    job = 'cat; echo "read $?"; echo out; echo err >&2; exit 3'
    for close, seen_out, seen_err in (("<&-", "read 0\nout\n", "err\n"), (">&-", "", "err\n"),
                                      ("2>&-", "read 0\nout\n", "")):
        r = subprocess.run(["/bin/sh", "-c", f'exec "$@" {close}', "sh", *site.qrun, *mode, "-w", "local",
                            "--", "sh", "-c", job], env=site.env, capture_output=True, text=True,
                           timeout=60, cwd=site.work, stdin=subprocess.DEVNULL)
        assert (r.returncode, r.stdout, r.stderr) == (3, seen_out, seen_err), (close, r)


@pytest.mark.parametrize("mode", [[], ["--transparent"]])
def test_started_with_sigchld_ignored(site: Site, mode: list[str]) -> None:
    """A caller that ignores SIGCHLD (some daemons do) passes that on to qrun: qrun and its
    stub reap their children all the same (the plain job's stub used to die of ECHILD)."""
    wrapper = ("import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
               "os.execv(sys.argv[1], sys.argv[1:])")
    r = subprocess.run([sys.executable, "-c", wrapper, *site.qrun, *mode, "-w", "local", "--", "sh", "-c",
                        "sleep 0.2 & wait; echo done; exit 3"], env=site.env, capture_output=True, text=True,
                       timeout=60, cwd=site.work, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout, r.stderr) == (3, "done\n", ""), r


# ---- 5. every recipe of the docs -------------------------------------------------------------------

def test_every_recipe_is_accounted_for() -> None:
    shown = recipes.all_recipes()
    assert shown, "no command lines found in docs/habits.md and docs/cluster.md"
    unknown = [r for r in shown if r not in recipes.RECIPES]
    assert not unknown, ("command lines in the docs that tests/recipes.py does not know (run them, or "
                         f"say why not): {unknown}")
    stale = [r for r in recipes.RECIPES if r not in shown]
    assert not stale, f"tests/recipes.py lists command lines the docs no longer show: {stale}"


@dataclass
class Expect:
    out: str | None = None                 # stdout ({work}, {home} filled in)
    contains: tuple[str, ...] = ()         # in stdout
    lacks: tuple[str, ...] = ()            # not in stdout
    jobs: tuple[str, ...] | None = None    # the hosts the ssh stand-in ran the job on
    one_of: frozenset[str] = frozenset()   # the one host it ran on is one of these
    srun: tuple[str, ...] = ()             # in srun's argv
    no_srun: tuple[str, ...] = ()          # prefixes not in srun's argv
    log: str | None = None                 # job.log ends up with this


EXPECT: dict[str, Expect] = {
    "qrun --help": Expect(contains=("--version", "--transparent", "121 no host fits")),
    "qrun -- cmd": Expect(out="ran in {work}\n", one_of=frozenset({"host", "node1", "node2", "node3", "node4",
                                                                     "node5"})),
    "qrun -w host -- cmd": Expect(out="ran in {work}\n", jobs=("host",)),
    'for h in node1 node2 node3; do qrun -w "$h" -D / -- uptime; done':
        Expect(contains=("load average",), jobs=("node1", "node2", "node3")),
    "qrun --launcher slurm -- cmd": Expect(out="ran in {work}\n", jobs=(), srun=("-N1", "-n1", "--quiet",
                                                                                  "--chdir=/"),
                                           no_srun=("--nodelist", "--exclude")),
    "qrun -w node1 -- cmd": Expect(out="ran in {work}\n", jobs=("node1",)),
    "qrun -w 'node[1-3]' -- cmd": Expect(out="ran in {work}\n", one_of=frozenset({"node1", "node2", "node3"})),
    "qrun -x 'node[4-5]' -- cmd": Expect(out="ran in {work}\n", one_of=frozenset({"host", "node1", "node2",
                                                                                    "node3"})),
    "qrun --launcher slurm -x 'node[4-5]' -- cmd": Expect(out="ran in {work}\n", jobs=(),
                                                          srun=("--exclude=node4,node5",)),
    "qrun … < FILE": Expect(out="from a file\n"),
    'qrun -D "$HOME" -- cmd': Expect(out="ran in {home}\n"),
    "qrun -w host -- cmd args": Expect(out="ran args in {work}\n", jobs=("host",)),
    "qrun --via 'ssh host' --home-addr ADDR -- cmd args": Expect(out="ran args in {work}\n", jobs=("host",)),
    "qrun -w host -- sh -c 'cmd1 \\| cmd2'": Expect(out="0ne\n", jobs=("host",)),
    "qrun … < /dev/null": Expect(out=""),
    "qrun hosts": Expect(contains=("HOST", "node5", "jobs are spread round-robin")),
    "qrun hosts -w LIST": Expect(contains=("node1", "node2"), lacks=("node3",), jobs=()),
    "qrun --require 'scratch_gb>=100' --require 'gpu>=1' -- ./train": Expect(out="trained\n", jobs=("node3",)),
}
SEPARATE = {"qrun agent", "qrun agent --keygen"}   # test_agent_recipes


def test_every_fake_recipe_has_an_expectation() -> None:
    assert set(recipes.runs(recipes.FAKE)) == set(EXPECT) | SEPARATE


@pytest.mark.parametrize("recipe", [r for r in recipes.runs(recipes.FAKE) if r not in SEPARATE])
def test_recipe(site: Site, recipe: str) -> None:
    want = EXPECT[recipe]
    line = recipes.shell_line(recipe)
    r = site.run(line)
    fill = {"work": str(site.work), "home": str(site.home)}
    assert r.returncode == 0, f"{line}: status {r.returncode}\n{r.stderr}"
    assert "Traceback" not in r.stderr and "ControlSocket" not in r.stderr, r.stderr
    if want.out is not None:
        assert r.stdout == want.out.format(**fill), r.stderr
    for text in want.contains:
        assert text in r.stdout
    for text in want.lacks:
        assert text not in r.stdout
    if want.jobs is not None:
        assert site.jobs() == list(want.jobs)
    if want.one_of:
        jobs = site.jobs()
        assert len(jobs) == 1 and jobs[0] in want.one_of, jobs
    srun = site.calls("srun")
    if want.srun or want.no_srun:
        assert len(srun) == 1
        assert set(want.srun) <= set(srun[0]), srun[0]
        assert not [w for w in srun[0] for p in want.no_srun if w.startswith(p)], srun[0]
    if want.log is not None:
        log = site.work / "job.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not log.exists() or not log.read_text()):
            time.sleep(0.1)
        assert log.read_text() == want.log.format(**fill)


def test_agent_recipes(site: Site) -> None:
    """`qrun agent --keygen` gives keys a cluster file accepts; `qrun agent`, run with that
    file as ~/.config/qrun/config.toml, answers `qrun hosts`."""
    r = site.run("qrun agent --keygen")
    assert r.returncode == 0, r.stderr
    keys = tomllib.loads(r.stdout)
    assert set(keys) == {"agent_public_key", "agent_secret_key"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = site.home / ".config" / "qrun" / "config.toml"
    conf.write_text(r.stdout + f"agent_port = {port}\n[hosts.here]\naddress = \"127.0.0.1\"\n")
    agent = subprocess.Popen(["/bin/sh", "-c", "exec " + recipes.shell_line("qrun agent")], cwd=site.work,
                             env=site.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        state = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and state != "up":
            out = site.run(["hosts", "--json"])
            assert out.returncode == 0, out.stderr
            state = json.loads(out.stdout)[0]["state"]
        assert state == "up"
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=20)
    assert agent.returncode == 0, err


# ---- 5b. the launchers' command lines are the ones the docs show ----------------------------------

def _doc_words(recipe: str, home: Path) -> list[str]:
    text = recipe.replace("~/", f"{home}/").replace("'<stub command>'", "STUB").replace("<stub command>", "STUB")
    return shlex.split(text)[1:]   # without <ssh_command> / <srun_command>


def test_ssh_command_lines_are_as_documented(site: Site) -> None:
    r = site.run(["-w", "node2", "--", "true"])
    assert r.returncode == 0, r.stderr
    r = site.run(["-w", "node2", "--", "true"])     # the master is up now: checked, not opened
    assert r.returncode == 0, r.stderr
    check, job, master, show = (next(r for r in recipes.runs(recipes.LAUNCHER) if key in r)
                                for key in ("-O check", "-- '<stub command>'", "-f -N", " -G "))
    want = {name: [("node2" if w == "alice@10.0.0.11" else w) for w in _doc_words(rec, site.home)]
            for name, rec in (("check", check), ("job", job), ("master", master), ("show", show))}
    calls = site.calls("ssh")
    # first job: check, check again holding the lock, open the master, note its socket, the
    # job; then (the stand-in's socket does not answer) check, job
    assert [c[:-1] if c[-1].endswith("-m qrun.remote.stub") else c for c in calls] == [
        want["check"], want["check"], want["master"], want["show"], want["job"][:-1], want["check"],
        want["job"][:-1]]
    assert shlex.split(calls[4][-1])[1:] == ["-P", "-m", "qrun.remote.stub"]
    assert want["job"][-1] == "STUB"


def test_a_noted_master_socket_that_answers_spares_the_check(tmp_path: Path) -> None:
    noted = tmp_path / "master-k"
    assert not launchers._answers(str(noted))   # (nothing noted)
    sock_path = tmp_path / "s"
    noted.write_text(str(sock_path))
    assert not launchers._answers(str(noted))   # (noted, nothing there)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(sock_path))
        listener.listen(1)
        assert launchers._answers(str(noted))
    assert not launchers._answers(str(noted))   # (the master is gone, its socket file left)


def test_srun_command_line_is_as_documented(site: Site) -> None:
    r = site.run(["--launcher", "slurm", "-w", "n7", "--", "true"])
    assert r.returncode == 0, r.stderr
    (argv,) = site.calls("srun")
    (doc,) = [r for r in recipes.runs(recipes.LAUNCHER) if r.startswith("<srun_command>")]
    # the optional parts that apply to `-w n7` (a node not in the cluster file): --nodelist only
    words = [w.strip("[]").replace("NODE", "n7") for w in _doc_words(doc, site.home)
             if not w.startswith("[") or w == "[--nodelist=NODE]"]
    assert words[-1] == "STUB"
    assert len(argv) == len(words) - 1 + 4 and argv[-3:] == ["-P", "-m", "qrun.remote.stub"], argv
    for got, want in zip(argv, words[:-1], strict=False):
        assert re.fullmatch(re.escape(want).replace("JOBID", "[0-9a-f]{12}"), got), (got, want)


# ---- 6. ssh: one master for concurrent first jobs; lingering launchers -------------------------------

def test_concurrent_first_jobs_share_one_master(site: Site) -> None:
    procs = [subprocess.Popen(site.qrun + ["-w", "node4", "--", "echo", "ok"], cwd=site.work, env=site.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, results
    assert [out for out, _ in results] == ["ok\n"] * 4
    masters = [c for c in site.calls("ssh") if "-N" in c]
    assert len(masters) == 1, masters
    assert site.jobs() == ["node4"] * 4


def test_refused_login_while_opening_the_master(site: Site) -> None:
    conf = site.root / "refuse.toml"
    conf.write_text('home_addr = "127.0.0.1"\n[hosts.refuser]\n')
    r = site.run(["--config", str(conf), "-w", "refuser", "--", "true"])
    assert r.returncode == exitcodes.REFUSED
    assert r.stderr.splitlines() == ["root@refuser: Permission denied (publickey).",
                                     "qrun: refuser refused the ssh connection (root@refuser: Permission "
                                     "denied (publickey).)"]


def test_a_launcher_that_lingers_after_the_job_is_not_waited_for(site: Site) -> None:
    quick = "sh -c '\"$@\"' sh"
    lingering = "sh -c '\"$@\"; sleep 60' sh"
    times = []
    for prefix in (quick, lingering):
        started = time.monotonic()
        r = site.run(["--via", prefix, "--home-addr", "127.0.0.1", "--", "echo", "done"])
        times.append(time.monotonic() - started)
        assert (r.returncode, r.stdout) == (0, "done\n"), r.stderr
    # The home server relays the launcher's last words for a moment (at most 3 s); qrun then
    # gives it LAUNCHER_GRACE more before ending it. It used to wait 5 s on top.
    assert times[1] < times[0] + 3.0 + cli.LAUNCHER_GRACE + 1.5, times
    out = subprocess.run(["pgrep", "-f", "sleep 60"], capture_output=True, text=True)
    assert not [pid for pid in out.stdout.split() if _parent_is(pid, "sh")], "the lingering launcher survived"


def _parent_is(pid: str, comm: str) -> bool:
    try:
        ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        return Path(f"/proc/{ppid}/comm").read_text().strip() == comm
    except (OSError, IndexError):
        return False


# ---- 7. Slurm: srun's directory, inside an allocation, the Launch fields --------------------------

def test_inside_an_allocation_home_is_this_node(site: Site) -> None:
    conf = site.root / "alloc.toml"
    conf.write_text('home_addr = "192.0.2.1"\n')       # the submit host: not an address of ours
    env = dict(site.env, SLURM_JOB_ID="4242", SLURM_WORKING_CLUSTER="test:127.0.0.1:6817:9728:109")
    r = site.run(["--config", str(conf), "--launcher", "slurm", "--", "echo", "in the allocation"], env=env)
    assert (r.returncode, r.stdout) == (0, "in the allocation\n"), r.stderr
    r = site.run(["--config", str(conf), "--launcher", "slurm", "--", "true"])   # outside: as before
    assert r.returncode == exitcodes.LAUNCH
    assert one_line(r).startswith("qrun: cannot listen on tcp://192.0.2.1:0")


def test_launch_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    job = "0123456789ab"
    launch = launchers.slurm(job, ["stub"], "node7", "127.0.0.1")
    assert "--chdir=/" in launch.argv and f"--job-name=qrun-{job}" in launch.argv
    assert launch.waiting_for == f"Slurm to start the job (squeue -n qrun-{job})"
    assert launch.cancel is not None and launch.cancel[:2] == ["scancel", f"--name=qrun-{job}"]
    assert launch.cancel[2].startswith("--user=")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    launch = launchers.slurm(job, ["stub"], None, "127.0.0.1")
    assert launch.cancel is None and launch.bind == "tcp://127.0.0.1:0"
    assert launch.waiting_for == "Slurm to start a step of allocation 77 (squeue -s -j 77)"
    for made in (launchers.local(job, ["stub"]), launchers.via(job, ["stub"], "env", "127.0.0.1")):
        assert made.waiting_for and made.cancel is None
        for d in made.cleanup:
            shutil.rmtree(d, ignore_errors=True)
