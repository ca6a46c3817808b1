"""The `qrun` command."""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from qrun.homenode import config, exitcodes, hostlist, launchers, terminal
from qrun.homenode.identity import snapshot
from qrun.homenode.placement import HostView, Ledger, PlacementError, Requirement, choose, views_for
from qrun.homenode.server import HomeServer, JobFailed, Outcome
from qrun.syscalls.paths import PathPolicy

BUILTIN_HOSTS = ("local", "sandbox")
DISTRIBUTION = "qrun-runtime"


def version() -> str:
    """The installed distribution's version, else the one in the checkout's pyproject.toml."""
    from importlib import metadata
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
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


def seconds(text: str) -> float:
    """A --timeout value: a finite number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
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
    where = ap.add_argument_group("where to run")
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
    job = ap.add_argument_group("the job")
    job.add_argument("-D", "--chdir", metavar="DIR", help="the job's working directory (default: cwd)")
    job.add_argument("--export", default="ALL", metavar="ALL|NONE|VAR[=val],...",
                     help="plain execution: the job's environment (default ALL: this one; "
                          "a transparent job always gets this one)")
    job.add_argument("--pty", action="store_true",
                     help="run the job on a pseudo-terminal of the execution host (editors, REPLs, "
                          "shells); qrun's terminal is in raw mode meanwhile")
    job.add_argument("-o", "--output", metavar="FILE", help="also copy all job output into FILE")
    job.add_argument("--local", action="append", default=[], metavar="PATH",
                     help="transparent: PATH (and below) is the execution host's, not forwarded home")
    job.add_argument("--home", action="append", default=[], metavar="PATH",
                     help="transparent: PATH (and below) is forwarded home even inside a local tree")
    job.add_argument("--home-root", action="append", default=[], metavar="DIR",
                     help="transparent: the home node serves only paths beneath DIR (repeatable; "
                          "also home_roots in the cluster file); anything else is refused with EACCES")
    job.add_argument("--timeout", type=seconds, default=None, metavar="SECONDS",
                     help="seconds of silence after which the other side counts as lost "
                          "(default: $QRUN_TIMEOUT, else 30)")
    job.add_argument("--stub-command", default=os.environ.get("QRUN_STUB"),
                     help="how to run the stub on the execution host (default: this Python's)")
    job.add_argument("-v", "--verbose", action="store_true",
                     help="print a summary line (host, status, wall and CPU time, max RSS) at the end")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    return ap


def fail(msg: str, code: int) -> int:
    sys.stderr.write(f"qrun: {msg}\n")
    sys.stderr.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["hosts"]:
        return hosts_command(args[1:])
    if args[:1] == ["agent"]:
        from qrun.homenode import agent
        return agent.main(args[1:])
    opts = parser().parse_args(args)
    cmd = list(opts.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        return fail("missing command (usage: qrun --transparent [--host NAME] -- CMD [ARGS...])",
                    exitcodes.USAGE)
    try:
        cwd = working_directory(opts.chdir, opts.transparent)
        timeout = opts.timeout if opts.timeout is not None else config.env_seconds("QRUN_TIMEOUT", 30.0)
        stub = stub_command(opts.stub_command)
        export = parse_export(opts.export)
        if opts.transparent and export["mode"] != "ALL":
            raise ValueError(f"--export={opts.export}: a --transparent job always gets this environment "
                             "(--export is for plain execution)")
        if opts.pty and not os.isatty(0):
            raise ValueError("--pty needs a terminal on qrun's standard input")
        requirements = [Requirement.parse(r) for r in opts.require]
        cfg = config.load(opts.config)
    except (ValueError, PlacementError, config.ConfigError) as exc:
        return fail(str(exc), exitcodes.USAGE)
    job = uuid.uuid4().hex[:12]
    ledger: Ledger | None = None
    try:
        launch, ledger = where_to_run(opts, cfg, job, stub, cwd, requirements)
    except launchers.LaunchError as exc:
        return fail(str(exc), exc.code)
    except PlacementError as exc:
        return fail(str(exc), exitcodes.NO_HOST)
    except (hostlist.HostListError, config.ConfigError) as exc:
        return fail(str(exc), exitcodes.USAGE)
    if opts.transparent:
        try:
            policy = PathPolicy().with_overrides(opts.local, opts.home)
        except OSError as exc:  # relative --local/--home paths from a removed directory
            if ledger is not None:
                ledger.release()
            return fail(f"--local/--home: {exc.strerror}", exitcodes.USAGE)
        welcome: dict[str, Any] = {
            "argv": cmd, "env": dict(os.environ), "cwd": cwd, "umask": _umask(),
            "identity": snapshot(), "policy": policy.to_wire(),
            "options": {"timeout": timeout, "mode": "transparent"},
        }
    else:
        welcome = {"argv": cmd, "env": dict(os.environ), "cwd": cwd, "umask": _umask(), "identity": {},
                   "policy": {"local": [], "home": []},
                   "options": {"timeout": timeout, "mode": "plain", "export": export}}
    if opts.pty:
        welcome["options"]["pty"] = terminal.describe(0)
    try:
        roots = home_roots(opts, cfg, launch) if opts.transparent else []
        if roots is None:
            return exitcodes.USAGE
        return run(job, launch, welcome, timeout, opts.verbose, cmd[0], opts.output, roots)
    finally:
        if ledger is not None:
            try:
                ledger.release()
            except config.ConfigError as exc:
                fail(str(exc), exitcodes.USAGE)


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


def where_to_run(opts: argparse.Namespace, cfg: config.ClusterConfig, job: str, stub: list[str],
                 cwd: str, requirements: list[Requirement]) -> tuple[launchers.Launch, Ledger | None]:
    """Pick the host and its launcher: "where" is decided here, the stub is always the same."""
    if opts.via:
        _no_requirements(requirements, "--via")
        addr = opts.home_addr or cfg.home_addr
        if not addr:
            raise launchers.LaunchError("--via needs --home-addr ADDR (or home_addr in the cluster "
                                        "file): where the stub can reach this machine", exitcodes.USAGE)
        return launchers.via(job, stub, opts.via, addr), None
    wanted = hostlist.expand(opts.host) if opts.host else []
    excluded = hostlist.expand(opts.exclude) if opts.exclude else []
    home_addr = opts.home_addr or cfg.home_addr
    if wanted == ["local"]:
        _no_requirements(requirements, "the local host")
        return launchers.local(job, stub), None
    if wanted == ["sandbox"] or (not wanted and not cfg.hosts and opts.launcher != "slurm"):
        _no_requirements(requirements, "the sandbox host" if wanted else
                         "the sandbox host (no cluster file defines hosts)")
        return launchers.sandbox(job, stub, launchers.hidden_paths(cwd)), None
    if opts.launcher == "slurm" and not any(n in cfg.hosts for n in wanted):
        _no_requirements(requirements, "a node Slurm chooses" if not wanted else
                         f"{wanted[0]}, which is not in the cluster file")
        if len(wanted) > 1:
            raise launchers.LaunchError("with --launcher slurm, name one node with -w "
                                        "(or none, and Slurm chooses)", exitcodes.USAGE)
        return launchers.slurm(job, stub, wanted[0] if wanted else None, home_addr,
                               srun_command=cfg.srun_command, exclude=sorted(excluded)), None
    if not cfg.hosts:
        raise launchers.LaunchError(f"unknown host '{opts.host}' (known: {', '.join(BUILTIN_HOSTS)}; "
                                    "or use --via PREFIX)", exitcodes.NO_HOST)
    views_for(cfg, wanted + [n for n in excluded if n not in wanted])  # every name must be known
    names = [n for n in (wanted or list(cfg.hosts)) if n not in excluded]
    if not names:
        raise PlacementError(f"the host list {opts.host or '(all)'} minus {opts.exclude} matches "
                             "no host")
    views = views_for(cfg, names)
    ledger = Ledger()
    if (len(views) > 1 or requirements) and cfg.agent_public_key:
        from qrun.homenode import agent  # psutil and friends: only when loads are asked for
        agent.query(cfg, views)
    else:
        _assume_idle(views)  # one host named explicitly: just go there
    chosen = _claim(cfg, ledger, views, requirements)
    h = chosen.config
    launcher = opts.launcher or h.launcher
    host_stub = h.stub.split() if h.stub else stub
    try:
        if launcher == "slurm":
            launch = launchers.slurm(job, host_stub, h.address or h.name, home_addr, h.partition,
                                     srun_command=cfg.srun_command)
        else:
            launch = launchers.ssh(job, host_stub, h.name, h.target, home_addr, cfg.ssh_command)
        launch.home_roots = list(h.home_roots)
    except launchers.LaunchError:
        ledger.release()
        raise
    return launch, ledger


def _no_requirements(requirements: list[Requirement], where: str) -> None:
    if requirements:
        raise launchers.LaunchError(f"--require applies only to the hosts of the cluster file, not to "
                                    f"{where}", exitcodes.USAGE)


def _assume_idle(views: list[HostView]) -> None:
    """Without agents every host counts as idle, so only the virtual load of recent
    dispatches separates them: jobs are spread round-robin."""
    for v in views:
        v.load, v.cpus = 0.0, 1


def _claim(cfg: config.ClusterConfig, ledger: Ledger, views: list[HostView],
           requirements: list[Requirement]) -> HostView:
    """Choose a host and count this job as running there, waiting (with a message) while
    the user's cluster-wide cap on running jobs is reached."""
    announced = False
    while True:
        ledger.annotate(views)
        chosen = choose(views, requirements)
        if ledger.claim(chosen.name, cfg.max_jobs_per_user):
            return chosen
        if not announced:
            sys.stderr.write(f"qrun: waiting: {cfg.max_jobs_per_user} of your jobs are running "
                             "(max_jobs_per_user)\n")
            announced = True
        time.sleep(0.5)
        for v in views:
            v.why_not = ""


def hosts_command(args: list[str]) -> int:
    ap = Parser(prog="qrun hosts", description="Show the cluster's hosts and their load.")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("-w", "--host", metavar="HOSTS", help="only these hosts (host list syntax)")
    ap.add_argument("--config", metavar="FILE", help="cluster file")
    ap.add_argument("--require", action="append", default=[], metavar="EXPR",
                    help="mark hosts failing this requirement as not eligible")
    opts = ap.parse_args(args)
    try:
        cfg = config.load(opts.config)
        names = hostlist.expand(opts.host) if opts.host else list(cfg.hosts)
        requirements = [Requirement.parse(r) for r in opts.require]
        ledger = Ledger()
    except (ValueError, PlacementError, config.ConfigError) as exc:
        return fail(str(exc), exitcodes.USAGE)
    try:
        views = views_for(cfg, names)
    except PlacementError as exc:  # an unknown name: the same status as for a job
        return fail(str(exc), exitcodes.NO_HOST)
    if cfg.agent_public_key:
        from qrun.homenode import agent
        agent.query(cfg, views)
    else:
        _assume_idle(views)  # as a job would: spread round-robin by recent dispatches
    try:
        ledger.annotate(views)
    except config.ConfigError as exc:
        return fail(str(exc), exitcodes.USAGE)
    try:
        choose(views, requirements)
    except PlacementError:
        pass
    if opts.json:
        print(json.dumps([v.to_json() for v in views], indent=2))
        return 0
    rows = [("HOST", "STATE", "LOAD", "CPUS", "SPEED", "MEM", "RUNNING", "MAX", "SCORE", "LAUNCHER",
             "RESOURCES", "NOTE")]
    for v in views:
        c = v.config
        rows.append((c.name, v.state, "-" if v.load is None else f"{v.load:.2f}", str(v.cpus or "-"),
                     f"{c.speed:g}", f"{c.memory:g}", str(v.running), str(c.max_jobs or "-"),
                     "-" if v.load is None else f"{v.score:.3f}", c.launcher,
                     ",".join(f"{k}={val:g}" for k, val in sorted(c.resources.items())) or "-",
                     v.why_not))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if not views:
        print("(no hosts: add [hosts.NAME] tables to the cluster file)")
    elif not cfg.agent_public_key:
        print("(no agents configured: load is not measured, jobs are spread round-robin)")
    return 0


def home_roots(opts: argparse.Namespace, cfg: config.ClusterConfig,
               launch: launchers.Launch) -> list[str] | None:
    """--home-root, the cluster file's home_roots and the host's: each an existing directory."""
    roots = [os.path.abspath(r) for r in opts.home_root] + cfg.home_roots + launch.home_roots
    for r in roots:
        if not os.path.isdir(r):
            fail(f"home root {r}: not a directory", exitcodes.USAGE)
            return None
    return roots


def run(job: str, launch: launchers.Launch, welcome: dict[str, Any], timeout: float,
        verbose: bool, argv0: str, output: str | None = None, roots: list[str] | None = None) -> int:
    try:
        server = HomeServer(job, welcome, launch.bind, timeout=timeout, roots=roots or [])
    except Exception as exc:  # zmq errors carry the reason (bad address, port in use)
        return fail(f"cannot listen on {launch.bind}: {exc}", exitcodes.LAUNCH)
    try:
        server.tee = open(output, "ab") if output else None  # noqa: SIM115 - closed below
    except OSError as exc:
        server.close()
        return fail(f"-o {output}: {exc.strerror}", exitcodes.USAGE)
    try:
        proc = subprocess.Popen(launch.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        server.close()
        return fail(f"cannot start the launcher `{launch.argv[0]}`: {exc.strerror}", exitcodes.LAUNCH)
    try:
        assert proc.stdin is not None
        try:
            proc.stdin.write(server.bootstrap_line())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        outcome = server.serve(proc, launch.describe, launch.classify, launch.waiting_for, launch.cancel)
    except JobFailed as exc:
        _stop(proc)
        return fail(str(exc), exc.code)
    finally:
        if server.tee is not None:
            server.tee.close()
        server.close()
        # The job has reported how it ended: the launcher only has to wind down (ssh and
        # srun exit as soon as the stub has). One that lingers (an ssh that became a
        # ControlPersist master, a --via wrapper with more to do) is not waited for.
        _stop(proc, grace=LAUNCHER_GRACE)
        for d in launch.cleanup:
            _rmtree(d)
    return report(outcome, verbose, argv0)


def report(o: Outcome, verbose: bool, argv0: str) -> int:
    st = o.status
    if st.get("error"):  # the job never ran (e.g. the host forbids ptrace): that, not its status
        sys.stderr.write(f"qrun: {st['error']}\n")
        code = exitcodes.BY_KIND.get(str(st.get("error_kind")), exitcodes.LAUNCH)
    elif "signal" in st:
        sig = int(st["signal"])
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig != signal.SIGPIPE:  # its reader went away: shells say nothing either
            sys.stderr.write(f"qrun: job killed by signal {sig} ({name})"
                             f"{' (core dumped)' if st.get('core') else ''}\n")
        code = 128 + sig
    else:
        code = int(st.get("code", 1))
        if st.get("spawn_errno"):
            what = "command not found" if code == 127 else os.strerror(int(st["spawn_errno"]))
            sys.stderr.write(f"qrun: {argv0}: {what}\n")
    if verbose:
        u = o.usage
        sys.stderr.write(f"qrun: host={o.host} status={code} wall={o.wall:.3f}s "
                         f"cpu={float(u.get('utime', 0)) + float(u.get('stime', 0)):.3f}s "
                         f"maxrss={int(u.get('maxrss_kb', 0))}KiB\n")
    return code


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


LAUNCHER_GRACE = 0.5   # seconds a launcher gets to exit by itself once the job has ended


def _stop(proc: subprocess.Popen[bytes], grace: float = 0.0) -> None:
    """Reap the launcher, giving it `grace` seconds to exit by itself, then ending its
    process group: SIGTERM first (srun then cancels a job that is still pending), SIGKILL
    half a second later."""
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(0.5 if sig == signal.SIGTERM else None)
        except subprocess.TimeoutExpired:
            continue
    proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


def _rmtree(path: str) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
