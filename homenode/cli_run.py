"""Running a job once its host is chosen: what the stub is told, the home server and the
launcher, and cleaning up after them."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qrun.homenode import config, exitcodes, launchers
from qrun.homenode.cli_options import JobSettings
from qrun.homenode.cli_report import fail, report
from qrun.homenode.forkedstub import ForkedStub, LauncherProcess, can_fork
from qrun.homenode.identity import snapshot
from qrun.homenode.processes import alive, process_start
from qrun.syscalls.paths import PathPolicy

if TYPE_CHECKING:
    from qrun.homenode.jobhooks import JobHooks
    from qrun.homenode.server import HomeServer
    from qrun.homenode.server_outcome import Outcome
    from qrun.homenode.servestate import Taken

LAUNCHER_GRACE = 0.5   # seconds a launcher gets to exit by itself once the job has ended


def welcome_for(opts: argparse.Namespace, cmd: list[str], settings: JobSettings,
                policy: PathPolicy | None) -> dict[str, Any]:
    """What the stub is told about the job; `policy` for a transparent one."""
    if policy is not None:
        welcome: dict[str, Any] = {
            "argv": cmd, "env": dict(os.environ), "cwd": settings.cwd, "umask": _umask(),
            "identity": snapshot(), "policy": policy.to_wire(),
            "options": {"timeout": settings.timeout, "lease": settings.lease, "mode": "transparent"},
        }
    else:
        welcome = {"argv": cmd, "env": dict(os.environ), "cwd": settings.cwd, "umask": _umask(),
                   "identity": {}, "policy": {"local": [], "home": []},
                   "options": {"timeout": settings.timeout, "lease": settings.lease, "mode": "plain",
                               "export": settings.export}}
    if opts.pty:   # (terminal imported late: only a job on a terminal needs it)
        from qrun.homenode import terminal
        welcome["options"]["pty"] = terminal.describe(0)
    if opts.trace is not None:
        welcome["options"]["trace"] = opts.trace
        welcome["options"]["trace_marked"] = bool(opts.trace_file)
    return welcome


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
        verbose: bool, argv0: str, output: str | None = None, roots: list[str] | None = None,
        trace_file: str | None = None, hooks: JobHooks | None = None, taken: Taken | None = None) -> int:
    """Run the job to its end; with `taken`, serve on a job whose home server was killed."""
    ended: list[Outcome] = []
    code = _run(job, launch, welcome, timeout, verbose, argv0, output, roots, trace_file, hooks, ended, taken)
    if hooks is not None:
        hooks.ended(ended[0] if ended else None, code)
    return code


def _run(job: str, launch: launchers.Launch, welcome: dict[str, Any], timeout: float,
         verbose: bool, argv0: str, output: str | None, roots: list[str] | None,
         trace_file: str | None, hooks: JobHooks | None, ended: list[Outcome], taken: Taken | None) -> int:
    # The launcher starts first: the stub's interpreter starts up while the home server is
    # imported and set up, and waits for its bootstrap line on stdin.
    proc: LauncherProcess
    try:
        if can_fork(launch.argv, interactive=hooks is None or not hooks.batch):
            proc = ForkedStub(launch.argv)
        else:
            proc = subprocess.Popen(launch.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        return fail(f"cannot start the launcher `{launch.argv[0]}`: {exc.strerror}", exitcodes.LAUNCH)
    from qrun.homenode.server_outcome import JobFailed  # (late, as the server: see above)
    server = _server(job, launch, welcome, timeout, roots, output, trace_file, hooks, taken)
    if isinstance(server, int):
        _stop(proc)
        return server
    try:
        assert proc.stdin is not None
        try:
            if launch.publish is None and taken is None:
                proc.stdin.write(server.bootstrap_line())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        if taken is not None:
            for line in server.take_over(taken):
                sys.stderr.write(f"qrun: {line}\n")
        else:
            server.succession.update(describe=launch.describe, kind=launch.kind, cleanup=launch.cleanup,
                                     launcher=[proc.pid, process_start(proc.pid)], verbose=verbose,
                                     argv0=argv0)
        if launch.publish is not None:   # (a stub Slurm started: it asks the daemon where we are)
            launch.publish(server.endpoint, server.keys.server_public, job)
        placed = (lambda: hooks.placed(launch)) if hooks is not None and taken is None else None
        outcome = server.serve(proc, launch.describe, launch.classify, launch.waiting_for, launch.cancel,
                               hooks, launch.kind, placed)
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
        _stop(proc, grace=0.0 if launch.publish else LAUNCHER_GRACE)
        for d in launch.cleanup:
            _rmtree(d)
    ended.append(outcome)
    return report(outcome, verbose, argv0)


def _server(job: str, launch: launchers.Launch, welcome: dict[str, Any], timeout: float,
            roots: list[str] | None, output: str | None, trace_file: str | None,
            hooks: JobHooks | None, taken: Taken | None) -> HomeServer | int:
    """The job's home server, with its -o and --trace-file open; an exit code if not."""
    from qrun.homenode.server import HomeServer, Keys  # late: see run()
    from qrun.homenode.servestate import ServeState
    keys = Keys.fresh()
    if taken is not None:   # (the keys the stub knows)
        k = taken.server["keys"]
        keys = Keys(k["server_public"].encode(), k["server_secret"].encode(),
                    k["client_public"].encode(), b"")
    elif launch.client_key:   # (the key of a stub already started, given in its batch script)
        keys.client_public, keys.client_secret = launch.client_key, b""
    state = ServeState(Path(hooks.serving)) if hooks is not None and hooks.serving else None
    try:
        server = HomeServer(job, welcome, launch.bind, timeout=timeout, roots=roots or [], keys=keys,
                            serve_state=state)
    except Exception as exc:  # zmq errors carry the reason (bad address, port in use)
        return fail(f"cannot listen on {launch.bind}: {exc}", exitcodes.LAUNCH)
    try:
        server.tee = open(output, "ab") if output else None  # noqa: SIM115 - closed by run()
    except OSError as exc:
        server.close()
        return fail(f"-o {output}: {exc.strerror}", exitcodes.USAGE)
    try:
        server.trace_fd = os.open(trace_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                                  0o666) if trace_file else None
    except OSError as exc:
        server.close()
        return fail(f"--trace-file {trace_file}: {exc.strerror}", exitcodes.USAGE)
    return server


def take_over(taken: Taken, hooks: JobHooks) -> int:
    """Serve on a batch job whose home server (shepherd) was killed, where the stub expects
    it, with the keys it knows. The launcher is not ours: a watch of it (tail --pid) stands
    in for it, so that its end means the stub's as it would have."""
    srv = taken.server
    if taken.ended is not None:   # (killed once the stub had reported the job's end)
        from qrun.homenode.server_outcome import Outcome, exit_status, exit_usage
        from qrun.homenode.servestate import discard
        e = taken.ended
        outcome = Outcome(exit_status(e["status"]), exit_usage(e["usage"]), str(e["host"])[:255], 0.0)
        code = report(outcome, srv["verbose"], srv["argv0"])
        hooks.ended(outcome, code)
        discard(Path(hooks.serving))
        for d in srv["cleanup"]:
            _rmtree(d)
        return code
    pid, start = srv["launcher"]
    watch = ["tail", f"--pid={pid}", "-f", "/dev/null"] if alive(pid, start) else ["true"]
    launch = launchers.Launch(watch, srv["endpoint"], srv["describe"], srv["cleanup"], kind=srv["kind"])
    return run(srv["job"], launch, srv["welcome"], srv["timeout"], srv["verbose"], srv["argv0"],
               roots=srv["roots"], hooks=hooks, taken=taken)


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def _stop(proc: LauncherProcess, grace: float = 0.0) -> None:
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
