"""The launcher of a job whose stub Slurm started (`python -m qrun.homenode.slurmwatch
SLURM_ID EVERY SQUEUE...`): nothing to start, only Slurm's queue to look at every EVERY
seconds. It ends, with one line on stderr, once Slurm says the job has ended; the home
server then knows its stub is gone (as when srun exits). While Slurm's controller does not
answer, it goes on looking: an unreachable controller does not end a running job.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

# Slurm's states of a job that has stopped running (squeue --states help).
ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                   "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "REVOKED", "SPECIAL_EXIT"})


def state(squeue: list[str], slurm_id: str) -> str | None:
    """Slurm's state of the job; "" if Slurm no longer knows it; None if it cannot say."""
    try:
        done = subprocess.run([*squeue, "-h", "-j", slurm_id, "-o", "%T"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return "" if "invalid job id" in done.stderr.lower() else None
    lines = done.stdout.split()
    return lines[0] if lines else ""


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write("usage: python -m qrun.homenode.slurmwatch SLURM_ID EVERY SQUEUE...\n")
        return 2
    slurm_id, every, squeue = argv[0], float(argv[1]), argv[2:]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        now = state(squeue, slurm_id)
        if now == "" or (now is not None and now in ENDED):
            sys.stderr.write(f"Slurm job {slurm_id}: {now or 'no longer in the queue'}\n")
            return 1
        time.sleep(every)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
