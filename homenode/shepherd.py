"""A batch job's home side (`python -m qrun.homenode.shepherd ID`, started by the daemon):
it runs the job exactly as interactive `qrun` would, from the options recorded at
submission, in the submission's directory, environment and umask, with the job's output
files as its stdout and stderr, and records in the job store where the job runs and how
it ended. For a job Slurm queued (sbatch), it is started once the job's stub has phoned
the daemon, and serves that stub. With --take-over, it serves on a running job whose
shepherd was killed (servestate.py). A SIGTERM (a cancel) goes on to the job, and SIGKILL to
all its processes TERM_GRACE seconds later.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qrun.homenode import exitcodes, launchers, servestate
from qrun.homenode.cli_options import parser
from qrun.homenode.daemon import TERM_GRACE
from qrun.homenode.jobhooks import JobHooks
from qrun.homenode.jobrecord import JobRecord
from qrun.homenode.jobstore import Store, helper_main


def shepherd(store: Store, job_id: int, take_over: bool = False) -> int:
    from qrun.homenode import cli  # (late: it imports most of qrun)
    spec = store.spec(job_id)
    if spec is None:
        sys.stderr.write(f"qrun: no job {job_id} in {store.path}\n")
        return exitcodes.USAGE
    serving = store.serving(job_id)
    if take_over:
        return _take_over(store, job_id, spec, serving)
    os.umask(spec["umask"])
    os.environ["QRUN_JOB_ID"] = str(job_id)
    if spec["array_job"] is not None:
        os.environ["QRUN_ARRAY_JOB_ID"] = str(spec["array_job"])
        os.environ["QRUN_ARRAY_TASK_ID"] = str(spec["array_index"])
    opts = parser(batch=True).parse_args(spec["options"])
    record = JobRecord(store, job_id, requeue=spec["requeue"], attempt=spec["attempts"])
    hooks = JobHooks(record.placed, record.contact, record.ended, True, TERM_GRACE, serving=str(serving))
    if spec["slurm_id"]:
        hooks.relaunch = _claimed(store, job_id, spec["slurm_id"], spec["client_key"])
    try:
        return cli.run_batch(opts, hooks)
    except cli.Refused as exc:
        cli.fail(str(exc), exc.code)
        record.ended(None, exc.code, str(exc))
        return exc.code


def _take_over(store: Store, job_id: int, spec: dict[str, Any], serving: Path) -> int:
    """Serve on a running job whose shepherd was killed, from what it left in `serving`."""
    from qrun.homenode import cli_run  # (late, as cli)
    taken = servestate.take(serving)
    record = JobRecord(store, job_id, requeue=spec["requeue"], attempt=spec["attempts"])
    if taken is None:
        reason = "its home server (shepherd) died, and left nothing a successor could serve the job from"
        sys.stderr.write(f"qrun: {reason}\n")
        record.ended(None, exitcodes.LOST, reason)
        return exitcodes.LOST
    hooks = JobHooks(record.placed, record.contact, record.ended, True, TERM_GRACE, serving=str(serving),
                     cancelled=spec["cancelled"] is not None)
    try:
        return cli_run.take_over(taken, hooks)
    except Exception as exc:   # (what the predecessor left does not work: the job is lost, said once)
        reason = f"its home server (shepherd) died, and its successor failed: {type(exc).__name__}: {exc}"
        sys.stderr.write(f"qrun: {reason}\n")
        record.ended(None, exitcodes.LOST, reason[:500])
        servestate.discard(serving)
        return exitcodes.LOST


def _claimed(store: Store, job_id: int, slurm_id: str,
             client_key: str) -> Callable[[launchers.Launch], launchers.Launch]:
    """A job Slurm queued and started: its stub, waiting at the daemon's rendezvous, is
    told (through the job's record) where this shepherd's home server listens."""
    def publish(endpoint: str, server_key: bytes, job: str) -> None:
        store.set_contact(job_id, {"endpoint": endpoint, "server_key": server_key.decode(), "job": job})

    def relaunch(launch: launchers.Launch) -> launchers.Launch:
        return launchers.claimed(launch, slurm_id, client_key.encode(), publish)
    return relaunch


def _run(store: Store, args: list[str]) -> int | None:
    if not args or not args[0].isdigit() or args[1:] not in ([], ["--take-over"]):
        return None
    return shepherd(store, int(args[0]), take_over=args[1:] == ["--take-over"])


if __name__ == "__main__":
    helper_main("python -m qrun.homenode.shepherd JOB_ID [--take-over]", _run)
