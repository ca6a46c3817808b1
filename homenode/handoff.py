"""Handing a batch job to Slurm (`python -m qrun.homenode.handoff ID...`, started by the
daemon in the job's submission directory and environment): one sbatch for the job, or
for all the waiting tasks of an array (`--array` with its limit), with the dependencies
on jobs Slurm already queues passed as `--dependency`. Slurm then owns the job's queueing;
the batch script runs the stub, which phones the daemon's rendezvous whenever Slurm
starts it (launchers.sbatch_script).

Each job gets a fresh CURVE key pair: the public key goes in the record (the daemon admits
it), the secret one only into the batch script, which Slurm keeps readable by the user
and Slurm's administrators (`scontrol write batch_script`).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import zmq
from qrun.homenode import config, exitcodes, hostlist, launchers
from qrun.homenode.cli_options import job_settings, new_job_id, parser
from qrun.homenode.cli_where import where_to_run
from qrun.homenode.daemon import DaemonError, request
from qrun.homenode.jobstore import FAILED, Store, helper_main
from qrun.homenode.placement import PlacementError
from qrun.homenode.queueing import index_ranges, slurm_dependency

SBATCH_TIMEOUT = 120.0


class HandoffError(Exception):
    pass


def sbatch_command(store: Store, specs: list[dict[str, Any]]) -> tuple[list[str], str, launchers.Launch]:
    """(sbatch's argv, the batch script, the launch it was made from) for these jobs (one,
    or tasks of one array)."""
    first = specs[0]
    opts = parser(batch=True).parse_args(first["options"])
    try:
        settings = job_settings(opts)
        launch, _ = where_to_run(opts, settings.cfg, new_job_id(), settings.stub, settings.cwd,
                                 settings.requirements)
    except (launchers.LaunchError, PlacementError, ValueError, config.ConfigError,
            hostlist.HostListError) as exc:
        raise HandoffError(str(exc)) from None
    if not launch.sbatch:
        raise HandoffError("the job is not for a host Slurm chooses (--launcher slurm)")
    addr = launch.bind[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    try:
        meeting = request("rendezvous", addr=addr)
    except DaemonError as exc:
        raise HandoffError(str(exc)) from None
    if not meeting.get("ok"):
        raise HandoffError(str(meeting.get("error", "the daemon refused")))
    public, secret = zmq.curve_keypair()
    store.set_client_key([s["id"] for s in specs], public.decode())
    argv = list(launch.sbatch)
    if first["array_job"] is not None:
        limit = first["array_limit"]
        indices = index_ranges([s["array_index"] for s in specs])
        argv.append(f"--array={indices}" + (f"%{limit}" if limit else ""))
    depends = slurm_dependency(first["depends"], store.members)
    if depends:
        argv.append(f"--dependency={depends}")
    bootstrap = {"endpoint": meeting["endpoint"], "server_key": meeting["server_key"], "encrypted": True,
                 "public": public.decode(), "secret": secret.decode(), "lease": settings.lease,
                 "job": first["array_job"] if first["array_job"] is not None else first["id"],
                 "rendezvous": "array" if first["array_job"] is not None else "job"}
    return argv, launchers.sbatch_script(launch.stub, bootstrap), launch


def hand_off(store: Store, ids: list[int]) -> int:
    specs = [s for s in (store.spec(i) for i in ids) if s is not None]
    if not specs:
        return exitcodes.USAGE
    try:
        argv, script, launch = sbatch_command(store, specs)
        try:
            done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=SBATCH_TIMEOUT,
                                  cwd="/")
        except OSError as exc:
            raise HandoffError(f"cannot run {argv[0]}: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise HandoffError(f"sbatch did not answer within {SBATCH_TIMEOUT:.0f} s") from None
        slurm = done.stdout.strip().split(";")[0]
        if done.returncode != 0 or not slurm.isdigit():
            tail = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
            raise HandoffError(f"sbatch failed: {tail[-1] if tail else f'exit status {done.returncode}'}")
    except HandoffError as exc:
        for s in specs:
            store.ended(s["id"], FAILED, None, reason=str(exc))
        sys.stderr.write(f"qrun: job {specs[0]['id']}: {exc}\n")
        return exitcodes.SCHEDULER
    tools: list[str] = launch.slurm_tools.to_wire() if launch.slurm_tools else []
    late: list[str] = []
    for s in specs:
        sid = f"{slurm}_{s['array_index']}" if s["array_job"] is not None else slurm
        store.set_contact(s["id"], {"slurm_tools": tools})   # (for the daemon's squeue and scancel)
        why = f"waiting for Slurm to start it (squeue -j {sid})"
        if not store.queued_at_slurm(s["id"], sid, launch.name, why):
            late.append(sid)
    if late:   # (cancelled while sbatch ran: Slurm must not start them)
        _scancel(launch, late)
    return 0


def _scancel(launch: launchers.Launch, slurm_ids: list[str]) -> None:
    try:
        done = (launch.slurm_tools or launchers.SlurmTools()).run("scancel", slurm_ids)
    except (OSError, subprocess.TimeoutExpired) as exc:
        sys.stderr.write(f"qrun: cannot cancel Slurm jobs {' '.join(slurm_ids)}, cancelled here: {exc}\n")
        return
    if done.returncode != 0:
        sys.stderr.write(f"qrun: scancel {' '.join(slurm_ids)} failed: {done.stderr.strip()[-300:]}\n")


def _run(store: Store, args: list[str]) -> int | None:
    if not args or not all(a.isdigit() for a in args):
        return None
    return hand_off(store, [int(a) for a in args])


if __name__ == "__main__":
    helper_main("python -m qrun.homenode.handoff JOB_ID...", _run)
