"""The `qrun` command line: its options, and what they say about the job, checked."""

from __future__ import annotations

import argparse
import errno
import math
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from qrun.homenode import config, exitcodes, launchers
from qrun.homenode.placement import Requirement

BUILTIN_HOSTS = ("local", "sandbox")
DISTRIBUTION = "qrun-runtime"


def version() -> str:
    """The installed distribution's version, else the one in the checkout's pyproject.toml."""
    from importlib import metadata
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    import tomllib
    try:
        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line gets one `qrun: ...` line, not the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(exitcodes.USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


class _Version(argparse.Action):
    """--version, with the version looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        sys.stdout.write(f"qrun {version()}\n")
        parser.exit(0)


def absolute(text: str) -> str:
    """A path on the execution host: absolute (home's cwd means nothing there)."""
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} is not an absolute path (it names a "
                                         "directory on the execution host)")
    return text


def size(text: str) -> int:
    """A --cache-limit value: bytes, or a number with K, M, G or T."""
    try:
        return config.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds(text: str) -> float:
    """A --timeout value: a finite number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {text!r}")
    return value


def parser(batch: bool = False) -> argparse.ArgumentParser:
    """qrun's command line; `batch`: that of `qrun submit`, which takes the same options
    but output files instead of --pty and the copy of output."""
    if batch:
        ap = Parser(prog="qrun submit",
                    usage="qrun submit [--transparent] [-w HOSTS] [options] [-o FILE] [-e FILE] "
                          "[-J NAME] [--] CMD [ARGS...]",
                    description="Submit a batch job: print its id and return at once. The job runs "
                                "under this user's qrun daemon, whatever becomes of this terminal.")
        ap.add_argument("--transparent", action="store_true",
                        help="forward file and identity syscalls to this machine (the home node)")
        _where_options(ap.add_argument_group("where to run"))
        _job_options(ap.add_argument_group("the job"), batch=True)
        ap.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
        return ap
    ap = Parser(
        prog="qrun",
        usage="qrun [--transparent] [-w HOSTS] [options] [--] CMD [ARGS...]\n"
              "       qrun hosts [--json] [-w HOSTS]\n       qrun agent [--load-file F] [--keygen]",
        description="Run a command on another host. With --transparent it sees this machine's "
                    "files, working directory, pids and host name.",
        epilog="exit status: the job's own, or 128+N if it died of signal N; qrun's own "
               "failures: " + "; ".join(f"{k} {v}" for k, v in sorted(exitcodes.DOC.items())))
    ap.add_argument("--transparent", action="store_true",
                    help="forward file and identity syscalls to this machine (the home node)")
    ap.add_argument("--version", action=_Version, help="print `qrun VERSION` and exit")
    _where_options(ap.add_argument_group("where to run"))
    _job_options(ap.add_argument_group("the job"))
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    return ap


def _where_options(where: argparse._ArgumentGroup) -> None:
    where.add_argument("--host", "-w", default=None, metavar="HOSTS",
                       help=f"host or host list (node[1-3,7]); built-in: {', '.join(BUILTIN_HOSTS)}. "
                            "Default: the least-loaded host of the cluster file, else sandbox")
    where.add_argument("-x", "--exclude", default=None, metavar="HOSTS", help="hosts not to use")
    where.add_argument("--launcher", choices=("ssh", "slurm"),
                       help="how to start the stub (default: per host in the cluster file); "
                            "slurm without -w lets Slurm choose the node")
    where.add_argument("--via", metavar="PREFIX",
                       help="start the stub as `PREFIX <stub command>`, e.g. 'ssh node1' or 'srun -N1'")
    where.add_argument("--home-addr", metavar="ADDR",
                       help="address the stub connects back to (default: the cluster file's, "
                            "else this machine's address on the route to the host)")
    where.add_argument("--require", action="append", default=[], metavar="EXPR",
                       help="only hosts of the cluster file advertising this resource, e.g. "
                            "scratch_gb>=100")
    where.add_argument("--config", metavar="FILE", help="cluster file (default: $QRUN_CONF, "
                       "~/.config/qrun/config.toml, /etc/qrun/qrun.toml)")


def _job_options(job: argparse._ArgumentGroup, batch: bool = False) -> None:
    job.add_argument("-D", "--chdir", metavar="DIR", help="the job's working directory (default: cwd)")
    job.add_argument("--export", default="ALL", metavar="ALL|NONE|VAR[=val],...",
                     help="plain execution: the job's environment (default ALL: this one; "
                          "a transparent job always gets this one)")
    if batch:
        job.add_argument("-o", "--output", metavar="FILE",
                         help="where the job's output goes (default qrun-%%j.out); %%j is the job id, "
                              "%%A and %%a an array's id and the task's index, %%x the job's name, "
                              "%%u the user, %%%% a %%")
        job.add_argument("-e", "--error", metavar="FILE",
                         help="where its standard error goes (default: with its output)")
        job.add_argument("-J", "--job-name", metavar="NAME", help="the job's name (default: the command's)")
        job.add_argument("--array", metavar="INDICES[%N]",
                         help="a job array: one task per index (1-100, 1,3,5, 0-20:4), at most N at "
                              "once; each sees QRUN_ARRAY_TASK_ID (default output qrun-%%A_%%a.out)")
        for kind, when in (("after", "have started"), ("afterok", "have succeeded (exit 0)"),
                           ("afternotok", "have failed")):
            job.add_argument(f"--{kind}", metavar="ID[:ID...]", action="append", default=[],
                             help=f"start only once these jobs {when}")
        job.add_argument("--requeue", action="store_true",
                         help="start the job again from the beginning if its host is lost")
        job.set_defaults(pty=False)
    else:
        job.add_argument("--pty", action="store_true",
                         help="run the job on a pseudo-terminal of the execution host (editors, "
                              "REPLs, shells); qrun's terminal is in raw mode meanwhile")
        job.add_argument("-o", "--output", metavar="FILE", help="also copy all job output into FILE")
    job.add_argument("--trace", nargs="?", const="all", default=None, metavar="SET",
                     help="transparent: print each trapped call of the job (arguments, route, result, "
                          "time) to stderr; SET selects as strace's -e trace= does: %%file,%%process, "
                          "openat,stat, !name (default: all)")
    job.add_argument("--trace-file", metavar="FILE", help="with --trace: write the trace to FILE instead")
    job.add_argument("--local", action="append", default=[], metavar="PATH",
                     help="transparent: PATH (and below) is the execution host's, not forwarded home")
    job.add_argument("--home", action="append", default=[], metavar="PATH",
                     help="transparent: PATH (and below) is forwarded home even inside a local tree")
    job.add_argument("--home-root", action="append", default=[], metavar="DIR",
                     help="transparent: the home node serves only paths beneath DIR (repeatable; "
                          "also home_roots in the cluster file); anything else is refused with EACCES")
    job.add_argument("--cache-dir", type=absolute, metavar="DIR",
                     help="where the stub keeps local copies of home files on the execution host "
                          "(default: the host's cache_dir, else its $TMPDIR)")
    job.add_argument("--cache-limit", type=size, metavar="SIZE",
                     help="how much room those copies may take, e.g. 2G (default: the host's "
                          "cache_limit, else what the disk has)")
    job.add_argument("--lease", type=seconds, default=None, metavar="SECONDS",
                     help="how long the job goes on once contact with it is lost (after --timeout), "
                          "while both sides keep trying to reconnect (default: $QRUN_LEASE, else 1200)")
    job.add_argument("--timeout", type=seconds, default=None, metavar="SECONDS",
                     help="seconds of silence after which the other side counts as lost "
                          "(default: $QRUN_TIMEOUT, else 30)")
    job.add_argument("--stub-command", default=os.environ.get("QRUN_STUB"),
                     help="how to run the stub on the execution host (default: this Python's)")
    job.add_argument("-v", "--verbose", action="store_true",
                     help="print a summary line (host, status, wall and CPU time, max RSS) at the end")


def command_of(opts: argparse.Namespace) -> list[str]:
    """The job's command line, without the `--` before it."""
    cmd = list(opts.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    return cmd


@dataclass
class JobSettings:
    """What the options say about the job, checked."""

    cwd: str
    timeout: float
    lease: float
    stub: list[str]
    export: dict[str, Any]
    requirements: list[Requirement]
    cfg: config.ClusterConfig


def new_job_id() -> str:
    """A job's id: 12 random hex digits (os.urandom, not uuid: its import is a cost every
    job's start would pay)."""
    return os.urandom(6).hex()


def job_settings(opts: argparse.Namespace) -> JobSettings:
    """The job's settings; ValueError, PlacementError or ConfigError for options that do
    not go together or values that are not usable."""
    cwd = working_directory(opts.chdir, opts.transparent)
    timeout = opts.timeout if opts.timeout is not None else config.env_seconds("QRUN_TIMEOUT", 30.0)
    lease = opts.lease if opts.lease is not None else config.env_seconds("QRUN_LEASE", 1200.0)
    stub = stub_command(opts.stub_command)
    export = parse_export(opts.export)
    if opts.transparent and export["mode"] != "ALL":
        raise ValueError(f"--export={opts.export}: a --transparent job always gets this environment "
                         "(--export is for plain execution)")
    if opts.pty and not os.isatty(0):
        raise ValueError("--pty needs a terminal on qrun's standard input")
    if opts.trace is not None or opts.trace_file:
        _check_trace(opts)
    requirements = [Requirement.parse(r) for r in opts.require]
    cfg = config.load(opts.config)
    return JobSettings(cwd, timeout, lease, stub, export, requirements, cfg)


def _check_trace(opts: argparse.Namespace) -> None:
    from qrun.remote.trace import BadSelection, select
    if not opts.transparent:
        raise ValueError("--trace shows forwarded calls: it needs --transparent")
    if opts.trace is None:
        raise ValueError("--trace-file needs --trace")
    try:
        select(opts.trace)
    except BadSelection as exc:
        raise ValueError(f"--trace={opts.trace}: {exc}") from None


class CwdError(ValueError):
    pass


def working_directory(chdir: str | None, transparent: bool) -> str:
    """The job's working directory as an absolute, resolved path at home. The current
    directory must be accessible here in both modes (a deleted or forbidden one says so,
    instead of failing obscurely on the execution host); a -D directory must be in
    transparent mode, where it is used at home."""
    try:
        cwd = os.path.realpath(chdir) if chdir else os.getcwd()
    except OSError as exc:  # the current directory was removed (or is unreachable)
        _cwd_error(None, exc.strerror or str(exc))
    if chdir and not transparent:
        return cwd  # plain execution: it must exist on the execution host, not here
    why = _inaccessible(cwd)
    if why:
        if chdir:
            raise CwdError(f"-D {chdir}: not an accessible directory ({why})")
        _cwd_error(cwd, why)
    return cwd


def _cwd_error(cwd: str | None, why: str) -> NoReturn:
    if cwd is None:
        try:
            cwd = os.readlink("/proc/self/cwd")
        except OSError:
            cwd = os.environ.get("PWD", "")
    where = f" {cwd}" if cwd else ""
    raise CwdError(f"the current directory{where} is not accessible: {why}")


def _inaccessible(path: str) -> str:
    """Why `path` cannot be a working directory here ("" if it can)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISDIR(st.st_mode):
        return os.strerror(errno.ENOTDIR)
    if not os.access(path, os.X_OK):
        return os.strerror(errno.EACCES)
    return ""


def stub_command(spec: str | None) -> list[str]:
    """--stub-command / $QRUN_STUB, split on blanks; unset or empty: this Python's stub."""
    if not spec:
        return list(launchers.STUB_COMMAND)
    words = spec.split()
    if not words:
        raise ValueError("--stub-command (or $QRUN_STUB) is blank")
    return words


def parse_export(spec: str) -> dict[str, Any]:
    if spec.upper() in ("ALL", "NONE"):
        return {"mode": spec.upper()}
    out: dict[str, str] = {}
    for item in spec.split(","):
        name, eq, value = item.partition("=")
        if not name or not name.replace("_", "a").isalnum():
            raise ValueError(f"--export: bad variable name {name!r}")
        if eq:
            out[name] = value
        elif name in os.environ:
            out[name] = os.environ[name]
    return {"mode": "LIST", "vars": out}
