"""The `qrun` command."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

from homenode import exitcodes, launchers
from homenode.identity import snapshot
from homenode.server import HomeServer, JobFailed, Outcome
from syscalls.paths import PathPolicy

BUILTIN_HOSTS = ("local", "sandbox")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="qrun",
        description="Run a command on another host while it sees this machine's files, "
                    "working directory, pids and host name.",
        epilog="exit status: the job's own, or 128+N if it died of signal N; qrun's own "
               "failures: " + "; ".join(f"{k} {v}" for k, v in sorted(exitcodes.DOC.items())))
    ap.add_argument("--transparent", action="store_true",
                    help="forward file and identity syscalls to this machine (the home node)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--host", "-w", default=None,
                       help=f"execution host; built-in: {', '.join(BUILTIN_HOSTS)} (default: sandbox)")
    where.add_argument("--via", metavar="PREFIX",
                       help="start the stub as `PREFIX <stub command>`, e.g. 'ssh node1' or 'srun -N1'")
    ap.add_argument("--home-addr", metavar="ADDR",
                    help="address the stub connects back to (with --via), e.g. 10.0.0.1")
    ap.add_argument("-D", "--chdir", metavar="DIR", help="the job's working directory (default: cwd)")
    ap.add_argument("--local", action="append", default=[], metavar="PATH",
                    help="PATH (and below) is the execution host's, not forwarded home")
    ap.add_argument("--home", action="append", default=[], metavar="PATH",
                    help="PATH (and below) is forwarded home even inside a local tree")
    ap.add_argument("--timeout", type=float, default=float(os.environ.get("QRUN_TIMEOUT", 30)),
                    help="seconds of silence after which the other side counts as lost (default 30)")
    ap.add_argument("--stub-command", default=os.environ.get("QRUN_STUB"),
                    help="how to run the stub on the execution host (default: this Python's)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="print a summary line (host, status, wall and CPU time, max RSS) at the end")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    return ap


def fail(msg: str, code: int) -> int:
    sys.stderr.write(f"qrun: {msg}\n")
    sys.stderr.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    cmd = list(opts.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        return fail("missing command (usage: qrun --transparent [--host NAME] -- CMD [ARGS...])",
                    exitcodes.USAGE)
    if not opts.transparent:
        return fail("only --transparent execution is available in this version", exitcodes.USAGE)
    try:
        cwd = os.path.realpath(opts.chdir) if opts.chdir else os.getcwd()
    except OSError as exc:
        return fail(f"the current directory is not accessible: {exc.strerror}", exitcodes.USAGE)
    if not os.path.isdir(cwd) or not os.access(cwd, os.X_OK):
        what = f"-D {opts.chdir}" if opts.chdir else f"the current directory {cwd}"
        return fail(f"{what}: not an accessible directory", exitcodes.USAGE)
    stub = opts.stub_command.split() if opts.stub_command else list(launchers.STUB_COMMAND)
    job = uuid.uuid4().hex[:12]
    try:
        if opts.via:
            if not opts.home_addr:
                return fail("--via needs --home-addr ADDR (where the stub can reach this machine)",
                            exitcodes.USAGE)
            launch = launchers.via(job, stub, opts.via, opts.home_addr)
        else:
            host = opts.host or "sandbox"
            if host == "local":
                launch = launchers.local(job, stub)
            elif host == "sandbox":
                launch = launchers.sandbox(job, stub, launchers.hidden_paths(cwd))
            else:
                return fail(f"unknown host '{host}' (known: {', '.join(BUILTIN_HOSTS)}; "
                            "or use --via PREFIX)", exitcodes.LAUNCH)
    except launchers.LaunchError as exc:
        return fail(str(exc), exitcodes.LAUNCH)
    policy = PathPolicy().with_overrides(opts.local, opts.home)
    welcome: dict[str, Any] = {
        "argv": cmd, "env": dict(os.environ), "cwd": cwd, "umask": _umask(),
        "identity": snapshot(), "policy": policy.to_wire(), "options": {"timeout": opts.timeout},
    }
    return run(job, launch, welcome, opts.timeout, opts.verbose, cmd[0])


def run(job: str, launch: launchers.Launch, welcome: dict[str, Any], timeout: float,
        verbose: bool, argv0: str) -> int:
    try:
        server = HomeServer(job, welcome, launch.bind, timeout=timeout)
    except Exception as exc:  # zmq errors carry the reason (bad address, port in use)
        return fail(f"cannot listen on {launch.bind}: {exc}", exitcodes.LAUNCH)
    try:
        proc = subprocess.Popen(launch.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                start_new_session=True)
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
        outcome = server.serve(proc, launch.describe)
    except JobFailed as exc:
        _stop(proc)
        return fail(str(exc), exc.code)
    finally:
        server.close()
        _stop(proc, grace=5.0)
        for d in launch.cleanup:
            _rmtree(d)
    return report(outcome, verbose, argv0)


def report(o: Outcome, verbose: bool, argv0: str) -> int:
    st = o.status
    if "signal" in st:
        sig = int(st["signal"])
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
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


def _stop(proc: subprocess.Popen[bytes], grace: float = 0.0) -> None:
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _rmtree(path: str) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
