"""A batch job's home side (`python -m qrun.homenode.shepherd ID`, started by the daemon):
it runs the job exactly as interactive `qrun` would, from the options recorded at
submission, in the submission's directory, environment and umask, with the job's output
files as its stdout and stderr, and records in the job store where the job runs and how
it ended. A SIGTERM (a cancel) goes on to the job, and SIGKILL to all its processes
TERM_GRACE seconds later.
"""

from __future__ import annotations

import os
import sys

from qrun.homenode import exitcodes, launchers
from qrun.homenode.cli_options import parser
from qrun.homenode.cli_run import BatchHooks
from qrun.homenode.daemon import TERM_GRACE
from qrun.homenode.jobstore import CANCELLED, DONE, FAILED, LOST, Store, StoreError
from qrun.homenode.server_outcome import Outcome


def final_state(code: int, cancelled: bool) -> str:
    if cancelled:
        return CANCELLED
    if code == 0:
        return DONE
    return LOST if code == exitcodes.LOST else FAILED


def shepherd(store: Store, job_id: int) -> int:
    from qrun.homenode import cli  # (late: it imports most of qrun)
    spec = store.spec(job_id)
    if spec is None:
        sys.stderr.write(f"qrun: no job {job_id} in {store.path}\n")
        return exitcodes.USAGE
    os.umask(spec["umask"])
    opts = parser(batch=True).parse_args(spec["options"])

    def placed(launch: launchers.Launch) -> None:
        store.running(job_id, launch.describe, opts.launcher or launch.argv[0].rsplit("/", 1)[-1])

    def ended(outcome: Outcome | None, code: int) -> None:
        rec = store.get(job_id)
        cancelled = rec is not None and rec["cancelled"] is not None
        sig = outcome.status.get("signal") if outcome is not None else None
        reason = "" if outcome is not None else f"qrun: {exitcodes.DOC.get(code, f'exit status {code}')}"
        store.ended(job_id, final_state(code, cancelled), code, sig,
                    outcome.usage if outcome is not None else None, reason)

    hooks = BatchHooks(placed, ended, TERM_GRACE)
    try:
        return cli.run_batch(opts, hooks)
    except cli.Refused as exc:
        cli.fail(str(exc), exc.code)
        rec = store.get(job_id)
        store.ended(job_id, final_state(exc.code, rec is not None and rec["cancelled"] is not None),
                    exc.code, reason=str(exc))
        return exc.code


def main() -> int:
    try:
        job_id = int(sys.argv[1])
    except (IndexError, ValueError):
        sys.stderr.write("usage: python -m qrun.homenode.shepherd JOB_ID\n")
        return exitcodes.USAGE
    try:
        store = Store()
        return shepherd(store, job_id)
    except StoreError as exc:
        sys.stderr.write(f"qrun: {exc}\n")
        return exitcodes.USAGE


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
