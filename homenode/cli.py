"""The `qrun` command.

Its parts: the command line and what it says (cli_options), where the job runs
(cli_where), running it (cli_run), what qrun reports (cli_report) and `qrun hosts`
(cli_hosts). The names other modules used from here still are here."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING

from qrun.homenode import config, exitcodes, hostlist, launchers
from qrun.homenode.cli_hosts import hosts_command
from qrun.homenode.cli_options import (
    BUILTIN_HOSTS,
    DISTRIBUTION,
    CwdError,
    JobSettings,
    Parser,
    command_of,
    job_settings,
    new_job_id,
    parse_export,
    parser,
    seconds,
    stub_command,
    version,
    working_directory,
)
from qrun.homenode.cli_report import fail, report
from qrun.homenode.cli_run import LAUNCHER_GRACE, home_roots, run, welcome_for
from qrun.homenode.cli_where import where_to_run
from qrun.homenode.jobhooks import JobHooks
from qrun.homenode.placement import Ledger, PlacementError
from qrun.syscalls.paths import PathPolicy

if TYPE_CHECKING:
    from qrun.homenode.jobrecord import JobRecord

__all__ = ["BUILTIN_HOSTS", "DISTRIBUTION", "LAUNCHER_GRACE", "CwdError", "Parser", "entry", "fail",
           "home_roots", "hosts_command", "main", "parse_export", "parser", "report", "run", "seconds",
           "stub_command", "version", "where_to_run", "working_directory"]


class Refused(Exception):
    """The job cannot start as asked: one `qrun: ...` line and this exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["hosts"]:
        return hosts_command(args[1:])
    if args[:1] == ["agent"]:
        from qrun.homenode import agent
        return agent.main(args[1:])
    if args[:1] and args[0] in BATCH_COMMANDS:
        from qrun.homenode import cli_batch
        return cli_batch.main(args)
    opts = parser().parse_args(args)
    try:
        return _submit(opts)
    except Refused as exc:
        return fail(str(exc), exc.code)


BATCH_COMMANDS = ("submit", "status", "cancel", "wait", "acct", "output", "daemon")


def _submit(opts: argparse.Namespace, batch: JobHooks | None = None) -> int:
    """Run the job the options describe: interactively, recorded here, or for a batch job's
    shepherd, which passes the hooks that keep its record."""
    cmd = command_of(opts)
    if not cmd:
        raise Refused("missing command (usage: qrun --transparent [--host NAME] -- CMD [ARGS...])",
                       exitcodes.USAGE)
    try:
        settings = job_settings(opts)
    except (ValueError, PlacementError, config.ConfigError) as exc:
        raise Refused(str(exc), exitcodes.USAGE) from exc
    job = new_job_id()
    launch, ledger = _place(opts, settings, job, patient=batch is not None)
    if batch is not None and batch.relaunch is not None:
        launch = batch.relaunch(launch)
    welcome = welcome_for(opts, cmd, settings, _policy(opts, ledger))
    limit = launch.cache_limit if opts.cache_limit is None else opts.cache_limit
    welcome["options"]["cache"] = {"dir": opts.cache_dir or launch.cache_dir, "limit": limit}
    try:
        roots = home_roots(opts, settings.cfg, launch) if opts.transparent else []
        if roots is None:
            return exitcodes.USAGE
        hooks = batch or _recorded(opts, cmd, settings.cwd, welcome["umask"])
        return run(job, launch, welcome, settings.timeout, opts.verbose, cmd[0],
                   None if batch is not None else opts.output, roots, opts.trace_file, hooks)
    finally:
        if ledger is not None:
            try:
                ledger.release()
            except config.ConfigError as exc:
                fail(str(exc), exitcodes.USAGE)


def _recorded(opts: argparse.Namespace, cmd: list[str], cwd: str, umask: int) -> JobHooks:
    """An interactive job's record, added once it has a host. The records' modules (and
    SQLite) are loaded only then, once the stub has its bootstrap line, not on the way to
    starting it."""
    records: list[JobRecord] = []

    def placed(launch: launchers.Launch) -> None:
        from qrun.homenode.jobrecord import JobRecord
        from qrun.homenode.jobstore import NewJob
        records.append(JobRecord(None, new=NewJob(os.path.basename(cmd[0]) or cmd[0], cmd, [], {}, cwd,
                                                  umask, "transparent" if opts.transparent else "plain",
                                                  batch=False)))
        records[0].placed(launch)
    return JobHooks(placed, lambda: records[0].contact() if records else None,
                    lambda outcome, code: records[0].ended(outcome, code) if records else None)


def run_batch(opts: argparse.Namespace, hooks: JobHooks) -> int:
    """A batch job's run, for its shepherd (Refused if it cannot start)."""
    return _submit(opts, hooks)


def _place(opts: argparse.Namespace, s: JobSettings, job: str,
           patient: bool = False) -> tuple[launchers.Launch, Ledger | None]:
    try:
        return where_to_run(opts, s.cfg, job, s.stub, s.cwd, s.requirements, patient)
    except launchers.LaunchError as exc:
        raise Refused(str(exc), exc.code) from exc
    except PlacementError as exc:
        raise Refused(str(exc), exitcodes.NO_HOST) from exc
    except (hostlist.HostListError, config.ConfigError) as exc:
        raise Refused(str(exc), exitcodes.USAGE) from exc


def _policy(opts: argparse.Namespace, ledger: Ledger | None) -> PathPolicy | None:
    """The path policy of a transparent job (None for a plain one)."""
    if not opts.transparent:
        return None
    try:
        return PathPolicy().with_overrides(opts.local, opts.home)
    except OSError as exc:  # relative --local/--home paths from a removed directory
        if ledger is not None:
            ledger.release()
        raise Refused(f"--local/--home: {exc.strerror}", exitcodes.USAGE) from exc


def _open_standard_fds() -> None:
    """qrun started with stdin, stdout or stderr closed gets /dev/null there (as ssh does):
    else the first pipe or socket qrun makes would take that number, and the job would
    read, or qrun write, something else entirely."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            if os.open(os.devnull, os.O_RDWR) != fd:   # (the lowest free number: this one)
                continue
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115 - the process's own


def entry() -> None:
    _open_standard_fds()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)   # (if our caller ignored it: we reap our own)
    try:
        code = main()
    except KeyboardInterrupt:   # (Ctrl-C while qrun starts, before its server takes signals over)
        code = fail("interrupted", 128 + signal.SIGINT)
    # Everything qrun had to do is done (the job's end reported, its server closed): skip
    # the interpreter's teardown of every module, a tenth of a short job's wall time.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
