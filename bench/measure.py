"""Measuring: one run of a group of workloads in one mode, and the whole benchmark's cells."""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .commands import Proc, clip, run
from .config import FAN_JOBS, Ctx, ctx_wrap
from .modes import Mode
from .workloads import Workload

RESULT = re.compile(r"^RESULT\s+(\S+)\s+(\S+)\s+(\S+)", re.M)
FAN = re.compile(r"^RESULT fan \S+ s (\d+) (\S+) (\S+)$", re.M)   # calls, start, end

# values by workload key, the whole-process seconds, why the workloads without a value have none
Outcome = tuple[dict[str, float], float, str | None]


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


Results = dict[str, dict[str, Cell]]    # workload key -> mode name -> cell


def _argv(ctx: Ctx, ws: list[Workload], m: Mode) -> list[str]:
    first = ws[0]
    if first.timing == "program":
        argv = [str(ctx.exe)]
        for i, w in enumerate(ws):
            argv += (["+"] if i else []) + w.command(ctx, m)
    elif first.timing == "fan":
        argv = [str(ctx.exe), *first.command(ctx, m)]
    else:
        argv = first.command(ctx, m)
    return ctx_wrap(ctx, m.wrap(argv))


def _measure_spawn(ctx: Ctx, w: Workload, argv: list[str], cwd: Path) -> Outcome:
    """Whole-process start, repeated for at least the loop budget; mean per start."""
    cfg = ctx.cfg
    total, count, deadline = 0.0, 0, time.perf_counter() + cfg.budget_ms / 1e3
    while count == 0 or (time.perf_counter() < deadline and count < 200):
        p = run(argv, cfg.timeout, cwd)
        if p.rc != 0 or p.timed_out:
            return {}, p.wall, p.reason(cfg.timeout)
        total += p.wall
        count += 1
    return {w.key: total / count * 1e3}, total / count, None


def _measure_fan(ctx: Ctx, w: Workload, argv: list[str], cwd: Path) -> Outcome:
    """FAN_JOBS copies of argv at once (each given its index), let go together once all
    are ready: calls per second in total, from the first start of work to the last end."""
    ready, go = ctx.home / "fan-ready", ctx.home / "fan-go"
    with ThreadPoolExecutor(FAN_JOBS) as pool:
        runs = [pool.submit(run, [*argv, str(k)], ctx.cfg.timeout, cwd) for k in range(FAN_JOBS)]
        deadline = time.monotonic() + ctx.cfg.timeout
        while (len(list(ready.iterdir())) < FAN_JOBS and not any(r.done() for r in runs)
               and time.monotonic() < deadline):
            time.sleep(0.01)
        go.touch()   # (also when a job failed early: the others must not wait for it)
        procs = [r.result() for r in runs]
    wall = max(p.wall for p in procs)
    spans = []
    for p in procs:
        found = FAN.search(p.out)
        if p.rc != 0 or p.timed_out or not found:
            return {}, wall, p.reason(ctx.cfg.timeout) if p.rc != 0 or p.timed_out else "no RESULT line"
        spans.append((int(found.group(1)), float(found.group(2)), float(found.group(3))))
    calls = sum(n for n, _, _ in spans)
    window = max(end for _, _, end in spans) - min(start for _, start, _ in spans)
    return {w.key: calls / window}, wall, None


def _wall_result(ctx: Ctx, w: Workload, p: Proc, failed: str | None) -> Outcome:
    if failed:
        return {}, p.wall, failed
    if w.check and (why := w.check(ctx)):
        return {}, p.wall, why
    return {w.key: p.wall}, p.wall, None


def _program_results(ctx: Ctx, ws: list[Workload], m: Mode, p: Proc, failed: str | None) -> Outcome:
    """The RESULT lines of bench/workloads.c, by workload key."""
    found = {tag: float(v) for tag, v, _unit in RESULT.findall(p.out)}
    values = {w.key: found[w.command(ctx, m)[0]] for w in ws if w.command(ctx, m)[0] in found}
    if not failed and len(values) < len(ws):
        failed = clip("no RESULT line in the output: " + (p.out.strip() or p.err.strip()), 160)
    return values, p.wall, failed


def measure(ctx: Ctx, ws: list[Workload], m: Mode) -> Outcome:
    """One run of one or more workloads in one process: their values by key, the
    whole-process seconds, and why the workloads without a value have none."""
    first = ws[0]
    for w in ws:
        if w.prepare:
            w.prepare(ctx)
    argv = _argv(ctx, ws, m)
    cwd = first.cwd(ctx, m) if first.cwd else ctx.home
    if first.timing == "spawn":
        return _measure_spawn(ctx, first, argv, cwd)
    if first.timing == "fan":
        return _measure_fan(ctx, first, argv, cwd)
    helper = subprocess.Popen(first.helper(ctx), stdout=subprocess.DEVNULL) if first.helper else None
    try:
        p = run(argv, ctx.cfg.timeout, cwd)
    finally:
        if helper is not None:
            helper.kill()
            helper.wait()
    failed = p.reason(ctx.cfg.timeout) if p.rc != 0 or p.timed_out else None
    if first.timing == "wall":
        return _wall_result(ctx, first, p, failed)
    return _program_results(ctx, ws, m, p, failed)


def pipe_round_trip(ctx: Ctx) -> float | None:
    """The machine's current context-switch cost (native), to show how noisy the run was."""
    p = run(ctx_wrap(ctx, [str(ctx.exe), "pingpong", "100"]), 60)
    found = RESULT.search(p.out)
    return float(found.group(2)) if p.rc == 0 and found else None


def jobs_of(wls: list[Workload]) -> list[list[Workload]]:
    """What each process runs: the grouped workloads together (where the first of them
    stands), every other workload alone."""
    group = [w for w in wls if w.grouped]
    jobs: list[list[Workload]] = []
    for w in wls:
        if not w.grouped:
            jobs.append([w])
        elif w is group[0]:
            jobs.append(group)
    return jobs


def _record(ctx: Ctx, results: Results, ws: list[Workload], m: Mode, keep: bool) -> None:
    """One run of ws in m, kept in the cells (or a warm-up, of which only failures count)."""
    live = [w for w in ws if not results[w.key][m.name].error]
    if not live:
        return
    values, wall, err = measure(ctx, live, m)
    for w in live:
        cell = results[w.key][m.name]
        if w.key not in values:
            cell.error = err or "no result"
        elif keep:
            cell.values.append(values[w.key])
            cell.walls.append(wall)


def bench(ctx: Ctx, wls: list[Workload], modes: list[Mode], progress: Callable[[str], None],
          calibration: list[float]) -> Results:
    native = modes[0]
    results: Results = {w.key: {m.name: Cell() for m in modes} for w in wls}
    for ws in jobs_of(wls):
        t0 = time.perf_counter()
        if (rt := pipe_round_trip(ctx)) is not None:
            calibration.append(rt)
        # Warm-up: once per mode; heavy workloads (and all with --quick) once natively only,
        # which warms the page cache and the compiler. Every mode already ran once in setup.
        for m in [native] if ws[0].heavy or ctx.cfg.quick else modes:
            _record(ctx, results, ws, m, keep=False)
        # Runs interleave the modes, so slow drifts of a noisy machine hit every mode alike.
        for _ in range(ctx.cfg.runs):
            for m in modes:
                _record(ctx, results, ws, m, keep=True)
        progress(f"{'+'.join(w.key for w in ws)}: {time.perf_counter() - t0:.1f} s")
    if (rt := pipe_round_trip(ctx)) is not None:
        calibration.append(rt)
    return results


def ratio(w: Workload, value: float | None, base: float | None) -> float | None:
    if not value or not base:
        return None
    return base / value if w.higher_is_better else value / base
