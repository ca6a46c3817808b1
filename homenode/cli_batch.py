"""Batch jobs on the command line: `qrun submit`, `status`, `cancel`, `wait`, `acct`,
`output` and `daemon`. The job records (jobstore) answer every question; the daemon is
asked only to start and cancel jobs. Columns and `--json` field names are documented in
docs/guide.md ("Batch jobs") and kept stable."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from qrun.homenode import config, exitcodes
from qrun.homenode.cli_options import Parser, command_of, job_settings, parser
from qrun.homenode.cli_report import fail
from qrun.homenode.daemon import DaemonError, ensure_running, request
from qrun.homenode.daemon import main as daemon_main
from qrun.homenode.jobstore import (
    CANCELLED,
    FINAL,
    LOST,
    MAX_ID,
    PENDING,
    RUNNING,
    STATES,
    NewJob,
    Store,
    StoreError,
    expand,
)
from qrun.homenode.placement import PlacementError
from qrun.homenode.queueing import KINDS, parse_array, parse_ids
from qrun.homenode.userdirs import user_name

POLL = 0.2   # seconds between looks at the records while waiting or following


def main(args: list[str]) -> int:
    command, rest = args[0], args[1:]
    try:
        return COMMANDS[command](rest)
    except (StoreError, DaemonError) as exc:
        return fail(str(exc), exitcodes.USAGE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:   # (`qrun status | head`: the reader has what it wanted)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        return 0


# ---- submit -----------------------------------------------------------------------------
def submit(args: list[str]) -> int:
    opts = parser(batch=True).parse_args(args)
    cmd = command_of(opts)
    if not cmd:
        return fail("missing command (usage: qrun submit [options] -- CMD [ARGS...])", exitcodes.USAGE)
    store = Store()
    try:
        settings = job_settings(opts)
        jobs = _new_jobs(opts, args, cmd, settings.cwd, settings.cfg.source)
        _known(store, jobs[0].depends)
    except (ValueError, PlacementError, config.ConfigError) as exc:
        return fail(str(exc), exitcodes.USAGE)
    ids = store.add_all(jobs)
    try:
        ensure_running()
    except DaemonError as exc:
        store.abandon(ids, str(exc))   # (those no daemon took meanwhile)
        return fail(f"job {ids[0]} cannot run: {exc}", exitcodes.LAUNCH)
    try:
        request("wake")
    except DaemonError:
        pass   # (it schedules every second anyway)
    sys.stdout.write(f"{ids[0]}\n")
    return 0


def _new_jobs(opts: argparse.Namespace, args: list[str], cmd: list[str], cwd: str,
              cfg_path: str) -> list[NewJob]:
    """The records to add: one job, or an array's tasks; ValueError for a bad option. The
    job's shepherd runs in the submission directory, so the options' relative paths (-D,
    --config, -o) mean what they meant here; output file patterns are expanded when the
    job starts, then taken relative to that directory."""
    name = opts.job_name or os.path.basename(cmd[0]) or cmd[0]
    out = opts.output or ("qrun-%A_%a.out" if opts.array else "qrun-%j.out")
    probe = {"id": 1, "name": name, "array_job": None, "array_index": None}
    for pattern in (out, opts.error):
        if pattern is not None:
            expand(pattern, probe)
    depends = {k: [i for text in getattr(opts, k) for i in parse_ids(k, text)] for k in KINDS}
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        submit_dir = os.getcwd()
    except OSError:
        submit_dir = cwd   # (a removed current directory, with -D elsewhere)

    def job(array: tuple[int, int, int] | None) -> NewJob:
        return NewJob(name, cmd, args, dict(os.environ), cwd, umask,
                      "transparent" if opts.transparent else "plain", batch=True,
                      out_path=out, err_path=opts.error or "", submit_dir=submit_dir,
                      array=array, depends={k: v for k, v in depends.items() if v}, requeue=opts.requeue,
                      config=os.path.abspath(cfg_path) if cfg_path else "", launcher=opts.launcher or "",
                      handoff=_slurm_queues(opts))
    if not opts.array:
        return [job(None)]
    indices, limit = parse_array(opts.array)
    return [job((0, i, limit)) for i in indices]


def _slurm_queues(opts: argparse.Namespace) -> bool:
    """Whether sbatch is to queue the job: --launcher slurm outside an allocation (inside
    one, its steps are srun's, as for interactive qrun)."""
    return opts.launcher == "slurm" and not opts.via and "SLURM_JOB_ID" not in os.environ


def _known(store: Store, depends: dict[str, list[int]]) -> None:
    for ids in depends.values():
        found = {j["id"] for j in store.members(ids)} | {j["array_job"] for j in store.members(ids)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise ValueError(f"no job {missing[0]} to depend on")


# ---- status and acct --------------------------------------------------------------------
STATUS_COLUMNS = ("JOBID", "NAME", "USER", "STATE", "HOST", "SUBMITTED", "TIME", "REASON")
ACCT_COLUMNS = ("JOBID", "NAME", "STATE", "EXIT", "HOST", "START", "ELAPSED", "CPU", "MAXRSS",
                "CALLS", "FETCHED", "WRITTEN", "ATTEMPTS")


def _states(text: str | None) -> list[str]:
    if not text:
        return []
    states = [s.strip().upper() for s in text.split(",") if s.strip()]
    unknown = [s for s in states if s not in STATES]
    if unknown:
        raise ValueError(f"--state: unknown state {unknown[0]} (known: {', '.join(STATES)})")
    return states


def _select(store: Store, words: list[str]) -> list[dict[str, Any]]:
    """The jobs the words name: N is job N (for an array's id, all its tasks), N_I task I
    of array N; ValueError for a malformed or unknown one."""
    out: dict[int, dict[str, Any]] = {}
    for w in words:
        m = re.fullmatch(r"(\d+)(?:_(\d+))?", w)
        if not m or not 0 < int(m.group(1)) <= MAX_ID or int(m.group(2) or 0) > MAX_ID:
            raise ValueError(f"a job id is N or N_I (array N's task I), not {w!r}")
        found = store.members([int(m.group(1))])   # (job N, and an array N's tasks)
        if m.group(2) is not None:
            found = [j for j in found if j["array_job"] == int(m.group(1))
                     and j["array_index"] == int(m.group(2))]
        if not found:
            raise ValueError(f"no job {w}")
        out.update((j["id"], j) for j in found)
    return [out[i] for i in sorted(out)]


def _listing(prog: str, description: str, state_flag: str, args: list[str],
             more: Callable[[Parser], None]) -> argparse.Namespace:
    """The options status and acct share (job ids, --state, --json) and their own."""
    ap = Parser(prog=prog, description=description)
    ap.add_argument("ids", nargs="*", help="only these jobs")
    ap.add_argument("--state", state_flag, metavar="STATES",
                    help="only jobs in these states (comma-separated)")
    ap.add_argument("--json", action="store_true", help="one JSON list of job objects")
    more(ap)
    return ap.parse_args(args)


def _listed(opts: argparse.Namespace, default_states: list[str], **filters: Any) -> list[dict[str, Any]]:
    """The jobs the listing options select (ValueError for a bad one), each settled first."""
    store = Store()
    store.settle()
    states = _states(opts.state) or default_states
    ids = [j["id"] for j in _select(store, opts.ids)]
    return store.jobs(states, ids=ids, **filters) if ids or not opts.ids else []


def status(args: list[str]) -> int:
    def more(ap: Parser) -> None:
        ap.add_argument("--all", "-a", action="store_true", help="finished jobs too")
        ap.add_argument("--name", "-n", metavar="NAME", help="only jobs of this name")
        ap.add_argument("--user", "-u", metavar="USER", help="only this user's jobs")
    opts = _listing("qrun status", "Jobs that are pending or running (--all: every job).", "-t", args, more)
    try:
        jobs = _listed(opts, [] if opts.all or opts.ids else [PENDING, RUNNING], name=opts.name,
                       user=opts.user)
    except ValueError as exc:
        return fail(str(exc), exitcodes.USAGE)
    _with_slurm_states(jobs)
    now = time.time()
    return _show(jobs, opts.json, STATUS_COLUMNS, lambda j: [
        j["label"], j["name"], j["user"], j["state"], j["host"] or "-", _clock(j["submitted"]),
        _duration(_elapsed(j, now)), _reason(j)])


def acct(args: list[str]) -> int:
    def more(ap: Parser) -> None:
        ap.add_argument("--since", "-S", metavar="WHEN", help="jobs submitted since WHEN: "
                        "YYYY-MM-DD[THH:MM[:SS]], or an age as 30m, 12h, 7d")
    opts = _listing("qrun acct", "Accounting of jobs: how each ended and what it used.", "-s", args, more)
    try:
        jobs = _listed(opts, [], since=_since(opts.since) if opts.since else None)
    except ValueError as exc:
        return fail(str(exc), exitcodes.USAGE)
    now = time.time()
    return _show(jobs, opts.json, ACCT_COLUMNS, lambda j: [
        j["label"], j["name"], j["state"], _exit(j), j["host"] or "-", _clock(j["started"]),
        _duration(_elapsed(j, now)), _num(j["utime"], j["stime"]), _kib(j["maxrss_kb"]), _int(j["calls"]),
        _bytes(j["fetched"]), _bytes(j["written_back"]), str(j["attempts"])])


def _show(jobs: list[dict[str, Any]], as_json: bool, columns: tuple[str, ...],
          row: Callable[[dict[str, Any]], list[str]]) -> int:
    """Jobs as a table of `columns`, one `row` each, or as one JSON list (--json)."""
    if as_json:
        json.dump([public(j) for j in jobs], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _table(columns, [row(j) for j in jobs])
    return 0


def _with_slurm_states(jobs: list[dict[str, Any]]) -> None:
    """A job waiting in Slurm's queue (a batch job with the slurm launcher) has Slurm's
    state and reason as its reason, from one squeue (nothing if squeue cannot tell): by
    its Slurm id once sbatch queued it, else by its job name (srun's)."""
    waiting = {j["slurm_id"] or j["launch_name"]: j for j in jobs
               if j["state"] == PENDING and j["launcher"] == "slurm" and (j["slurm_id"] or j["launch_name"])}
    if not waiting:
        return
    names = [k for k, j in waiting.items() if not j["slurm_id"]]
    ids = sorted({k.split("_")[0] for k, j in waiting.items() if j["slurm_id"]})
    selects = ([f"--name={','.join(names)}"] if names else []) + ([f"--jobs={','.join(ids)}"] if ids else [])
    for select in selects:
        try:
            r = subprocess.run(["squeue", "-h", "-r", "-o", "%j|%i|%T|%r", select],
                               capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in r.stdout.splitlines() if r.returncode == 0 else []:
            name, _, rest = line.partition("|")
            slurm_id, _, rest = rest.partition("|")
            state, _, why = rest.partition("|")
            j = waiting.get(slurm_id) or waiting.get(name)
            if j is not None:
                j["reason"] = f"Slurm: {state}" + (f" ({why})" if why and why != "None" else "")


def public(j: dict[str, Any]) -> dict[str, Any]:
    """A job as `--json` shows it: the record's fields, plus its elapsed seconds."""
    out = dict(j)
    out["elapsed"] = _elapsed(j, time.time())
    return out


def _elapsed(j: dict[str, Any], now: float) -> float | None:
    if j["started"] is None:
        return None
    return round((j["ended"] or now) - j["started"], 3)


def _since(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if m:
        return time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(text, fmt))
        except ValueError:
            continue
    raise ValueError(f"--since: {text!r} is neither a date (YYYY-MM-DD[THH:MM[:SS]]) nor an age "
                     "(30m, 12h, 7d)")


def _reason(j: dict[str, Any]) -> str:
    if j["cancelled"] is not None and j["state"] not in FINAL:
        return "cancelling"
    if j["state"] in FINAL and j["state"] != CANCELLED and j["exit_code"] and not j["reason"]:
        return f"exit {_exit(j)}"
    return j["reason"] or "-"


def _exit(j: dict[str, Any]) -> str:
    if j["signal"]:
        try:
            return f"{j['exit_code']} ({signal.Signals(j['signal']).name})"
        except ValueError:
            return str(j["exit_code"])
    return "-" if j["exit_code"] is None else str(j["exit_code"])


def _clock(t: float | None) -> str:
    return "-" if t is None else time.strftime("%m-%d %H:%M:%S", time.localtime(t))


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 86400}-{s % 86400 // 3600:02}:{s % 3600 // 60:02}:{s % 60:02}" if s >= 86400 else \
        f"{s // 3600}:{s % 3600 // 60:02}:{s % 60:02}"


def _num(*parts: float | None) -> str:
    return "-" if all(p is None for p in parts) else f"{sum(p or 0 for p in parts):.2f}s"


def _int(v: int | None) -> str:
    return "-" if v is None else str(v)


def _kib(v: int | None) -> str:
    return "-" if v is None else f"{v / 1024:.1f}M"


def _bytes(v: int | None) -> str:
    if v is None:
        return "-"
    for unit in ("", "K", "M", "G"):
        if v < 1024 or unit == "G":
            return f"{v:.0f}{unit}" if unit == "" else f"{v:.1f}{unit}"
        v = v / 1024  # type: ignore[assignment]
    return str(v)


def _table(columns: tuple[str, ...], rows: list[list[str]]) -> None:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    for line in [list(columns)] + rows:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n")


# ---- cancel, wait, output ---------------------------------------------------------------
def cancel(args: list[str]) -> int:
    ap = Parser(prog="qrun cancel", description="Cancel jobs: a pending one never starts; a running "
                "one gets SIGTERM, and SIGKILL to all its processes 10 s later.")
    ap.add_argument("ids", nargs="*", help="the jobs")
    ap.add_argument("--name", "-n", metavar="NAME", help="every unfinished job of this name")
    ap.add_argument("--all", action="store_true", help="every unfinished job of yours")
    opts = ap.parse_args(args)
    store = Store()
    try:
        jobs = _select(store, opts.ids)
    except ValueError as exc:
        return fail(str(exc), exitcodes.USAGE)
    if opts.name is not None or opts.all:
        jobs += store.jobs([PENDING, RUNNING], opts.name, user_name())
    elif not jobs:
        return fail("name the jobs to cancel (IDs, --name NAME or --all)", exitcodes.USAGE)
    ids = sorted({j["id"] for j in jobs if j["state"] not in FINAL})
    if not ids:
        return 0
    ensure_running()
    reply = request("cancel", ids=ids)
    if not reply.get("ok"):
        return fail(f"cancel: {reply.get('error', 'refused')}", exitcodes.USAGE)
    code = 0
    labels = {str(j["id"]): j["label"] for j in jobs}
    for job_id, result in reply["results"].items():
        if result not in ("cancelled", "cancelling") and not result.startswith("already"):
            code = fail(f"job {labels.get(job_id, job_id)}: {result}", 1)
    return code


def exit_status(j: dict[str, Any]) -> int:
    """What `qrun wait` returns for a finished job: its status as `qrun` would have (128+N
    for signal N), else 143 for a job cancelled before it ran, 124 for a lost one and 125
    for one that could not be started."""
    if j["exit_code"] is not None:
        return int(j["exit_code"])
    return {CANCELLED: 128 + signal.SIGTERM, LOST: exitcodes.LOST}.get(j["state"], exitcodes.LAUNCH)


def wait(args: list[str]) -> int:
    ap = Parser(prog="qrun wait", description="Wait for jobs to end; the exit status is the last "
                "one's, as the shell's wait returns.")
    ap.add_argument("ids", nargs="+", help="the jobs")
    ap.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (exit 124)")
    opts = ap.parse_args(args)
    store = Store()
    try:
        ids = [j["id"] for j in _select(store, opts.ids)]
    except ValueError as exc:
        return fail(str(exc), exitcodes.USAGE)
    deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
    last: dict[str, Any] | None = None
    for job_id in ids:
        while True:
            store.settle([job_id])
            last = store.get(job_id)
            if last is None or last["state"] in FINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                return fail(f"job {last['label']} is still {last['state']}", exitcodes.LOST)
            time.sleep(POLL)
    return exit_status(last) if last is not None else 0


def output(args: list[str]) -> int:
    ap = Parser(prog="qrun output", description="A job's output so far.")
    ap.add_argument("id", help="the job")
    ap.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    ap.add_argument("-e", "--error", action="store_true", help="its standard error file instead "
                    "(when it has one of its own)")
    opts = ap.parse_args(args)
    store = Store()
    try:
        j = _select(store, [opts.id])[0]
    except ValueError as exc:
        return fail(str(exc), exitcodes.USAGE)
    if not j["batch"]:
        return fail(f"job {j['label']} ran interactively: its output went to its terminal", exitcodes.USAGE)
    if opts.error and not j["err_path"]:
        return fail(f"job {j['label']} has no error file of its own (see its output)", exitcodes.USAGE)
    f = None
    out = sys.stdout.buffer
    while True:
        done = j["state"] in FINAL
        if f is None and j["attempts"]:   # (its file exists once a shepherd took it)
            try:
                f = open(j["err_path"] if opts.error else j["out_path"], "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                if done or not opts.follow:
                    return fail(f"job {j['label']}: its output file is gone", 1)
        if f is not None:
            shutil.copyfileobj(f, out)
            out.flush()
        if done or not opts.follow:
            break
        time.sleep(POLL)
        j = store.get(j["id"]) or j   # (one more read after the end)
    if f is not None:
        f.close()
    return 0


def daemon(args: list[str]) -> int:
    ap = Parser(prog="qrun daemon", description="Run this user's qrun daemon in the foreground (as a "
                "systemd user unit does); `qrun submit` starts one itself when none runs.")
    ap.add_argument("--print-unit", action="store_true",
                    help="print a systemd user unit for it (~/.config/systemd/user/qrun.service)")
    opts = ap.parse_args(args)
    if opts.print_unit:
        unit = resources.files("qrun.homenode").joinpath("qrun.service").read_text()
        sys.stdout.write(unit.replace("@PYTHON@", sys.executable))
        return 0
    return daemon_main([])


COMMANDS = {"submit": submit, "status": status, "cancel": cancel, "wait": wait, "acct": acct,
            "output": output, "daemon": daemon}

__all__ = ["main"]
