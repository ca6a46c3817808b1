"""When a waiting batch job may start: its dependencies (`--after`, `--afterok`,
`--afternotok`, as Slurm's) and its array's limit (`--array 1-100%8`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from qrun.homenode.jobstore import CANCELLED, DONE, FINAL, MAX_ID, PENDING

KINDS = ("after", "afterok", "afternotok")
MAX_TASKS = 10_000
WAIT, READY, NEVER = "wait", "ready", "never"
NEVER_PREFIX = "dependency never satisfied"   # how the reason of a job that cannot start begins


def parse_array(spec: str) -> tuple[list[int], int]:
    """`1-100%8`, `0,3,5-9:2`: the indices (sorted, each once) and the limit on tasks
    running at once (0: none); ValueError if malformed."""
    body, _, limit_text = spec.partition("%")
    if limit_text and not limit_text.isdigit():
        raise ValueError(f"--array {spec}: the limit after % must be a number")
    indices: set[int] = set()
    for part in body.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if not m:
            raise ValueError(f"--array {spec}: expected indices as 1-100, 1,3,5 or 0-20:4, "
                             "with %N for a limit")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        step = int(m.group(3)) if m.group(3) else 1
        if last < first or step < 1:
            raise ValueError(f"--array {spec}: {part} is an empty range")
        if len(indices) + (last - first) // step + 1 > MAX_TASKS:
            raise ValueError(f"--array {spec}: more than {MAX_TASKS} tasks")
        indices.update(range(first, last + 1, step))
        if len(indices) > MAX_TASKS:
            raise ValueError(f"--array {spec}: more than {MAX_TASKS} tasks")
    return sorted(indices), int(limit_text or 0)


def parse_ids(kind: str, text: str) -> list[int]:
    ids = text.split(":")
    if not ids or not all(i.isdigit() and 0 < int(i) <= MAX_ID for i in ids):
        raise ValueError(f"--{kind} {text}: expected job ids separated by ':'")
    return [int(i) for i in ids]


Members = Callable[[list[int]], list[dict[str, Any]]]


def dependency(depends: dict[str, list[int]], members: Members,
               slurm_decides: bool = False) -> tuple[str, str]:
    """(WAIT, READY or NEVER, and the reason while it is not READY). A dependency on an
    array is on all its tasks. `slurm_decides` (a job sbatch will queue): dependencies on
    jobs Slurm already queues are left to Slurm (slurm_dependency)."""
    for kind in KINDS:
        ids = depends.get(kind) or []
        if not ids:
            continue
        jobs = [j for j in members(ids) if not (slurm_decides and _at_slurm(j))]
        state, why = _one(kind, jobs)
        if state != READY:
            return state, why
    return READY, ""


def _one(kind: str, jobs: list[dict[str, Any]]) -> tuple[str, str]:
    for j in jobs:
        name = j["label"]
        if kind == "after":
            if j["state"] == CANCELLED and j["started"] is None:
                return NEVER, f"{NEVER_PREFIX}: job {name} was cancelled before it started"
            if j["state"] == PENDING:
                return WAIT, f"waiting for job {name} to start (after)"
        elif kind == "afterok":
            if j["state"] in FINAL and j["state"] != DONE:
                return NEVER, f"{NEVER_PREFIX}: job {name} ended {j['state']} (afterok)"
            if j["state"] not in FINAL:
                return WAIT, f"waiting for job {name} to succeed (afterok)"
        else:
            if j["state"] == DONE:
                return NEVER, f"{NEVER_PREFIX}: job {name} succeeded (afternotok)"
            if j["state"] not in FINAL:
                return WAIT, f"waiting for job {name} to fail (afternotok)"
    return READY, ""


def _at_slurm(j: dict[str, Any]) -> bool:
    return bool(j.get("slurm_id")) and j["state"] not in FINAL


def slurm_dependency(depends: dict[str, list[int]], members: Members) -> str:
    """sbatch's --dependency for the dependencies Slurm decides (e.g. `afterok:41_1:41_2`),
    "" if none: those on jobs that Slurm queues and that have not ended."""
    parts = []
    for kind in KINDS:
        ids = [j["slurm_id"] for j in members(depends.get(kind) or []) if _at_slurm(j)]
        if ids:
            parts.append(":".join([kind, *ids]))
    return ",".join(parts)


def index_ranges(indices: list[int]) -> str:
    """`1-4,7,9-10` for [1, 2, 3, 4, 7, 9, 10]: an array's indices as sbatch --array takes them."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
