"""Benchmark qrun against native execution and the tools a user would pick instead.

    python -m bench.run [--quick] [--json] [--only W1,W3] [--modes native,qrun,...]

Each workload (W1..W5, defined in bench/README.md) runs in each mode: natively, under qrun
(`--host local` and `--host sandbox`), under strace (plain and with a seccomp filter), under
proot and over sshfs when those are installed. A cell is the median of N runs after a
warm-up, with its ratio to native; a mode that cannot run says why instead.

Benchmarks measure; they never assert. Nothing here is used by the test suite.

The pieces: config (options, paths), commands (running one), modes and sshfs (how a command
is run), workloads and data (what runs, on what), measure (the cells), report and machine
(the table, JSON); this module is the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .config import Config, Ctx
from .data import build_workloads, prepare_data
from .machine import machine_info
from .measure import bench
from .modes import EXTRA_MODES, MODE_NAMES, Mode, all_modes
from .report import Report
from .workloads import Workload, workloads


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 runs, shorter loops, 64 MiB for W2, a 4-file project for W3 (about a minute)")
    ap.add_argument("--json", action="store_true",
                    help="print the results as JSON on stdout (the table goes to stderr)")
    ap.add_argument("--only", metavar="W1,W3", help="workloads to run (keys as in the table)")
    ap.add_argument("--modes", metavar="native,qrun,...",
                    help=f"modes to run, of {', '.join(MODE_NAMES + EXTRA_MODES)} "
                         "(default: all but the last; native is always included)")
    ap.add_argument("--runs", type=int, help="runs per cell (default 5, --quick 3)")
    ap.add_argument("--timeout", type=float, help="seconds one run may take (default 240, --quick 90)")
    ap.add_argument("--taskset", metavar="CPUS",
                    help="run every command under `taskset -c CPUS` (e.g. 0 to put everything on one CPU)")
    return ap.parse_args(argv)


def progress(msg: str) -> None:
    sys.stderr.write(f"bench: {msg}\n")
    sys.stderr.flush()


def select_workloads(only: str | None, wls: list[Workload]) -> list[Workload] | None:
    """The workloads --only names (all without it); None, said why, for an unknown key."""
    if not only:
        return wls
    want = [k.strip().lower() for k in only.split(",") if k.strip()]
    unknown = [k for k in want if k not in {w.key.lower() for w in wls}]
    if unknown:
        sys.stderr.write(f"bench: unknown workload(s) {', '.join(unknown)}; "
                         f"known: {', '.join(w.key for w in wls)}\n")
        return None
    return [w for w in wls if w.key.lower() in want]


def select_modes(modes: str | None, known: dict[str, Mode]) -> list[str] | None:
    """The mode names --modes asks for, native first; None, said why, for an unknown one."""
    if not modes:
        return list(MODE_NAMES)
    names = [n.strip() for n in modes.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        sys.stderr.write(f"bench: unknown mode(s) {', '.join(bad)}; "
                         f"known: {', '.join(MODE_NAMES + EXTRA_MODES)}\n")
        return None
    return ["native"] + [n for n in names if n != "native"]


def setup_modes(ctx: Ctx, names: list[str], known: dict[str, Mode], modes: list[Mode],
                unavailable: dict[str, str]) -> None:
    """Set up each mode: into `modes` when it can run, else into `unavailable` with why."""
    for name in names:
        mode = known[name]
        try:
            why = mode.setup(ctx)
        except Exception as exc:  # a broken mode is reported, never a traceback
            why = f"setup failed: {type(exc).__name__}: {exc}"
        if why:
            unavailable[name] = why
            progress(f"mode {name}: unavailable: {why}")
        else:
            modes.append(mode)


def execute(cfg: Config, wls: list[Workload], names: list[str], known: dict[str, Mode]) -> Report | None:
    """Build, prepare, set the modes up and measure; None (said why) when native cannot run."""
    started = time.perf_counter()
    exe = build_workloads(Path(tempfile.gettempdir()) / f"qrun-bench-build-{os.getuid()}")
    work = Path(tempfile.mkdtemp(prefix="qrun-bench-"))
    modes: list[Mode] = []
    unavailable: dict[str, str] = {}
    calibration: list[float] = []
    try:
        ctx = prepare_data(cfg, work, exe)
        setup_modes(ctx, names, known, modes, unavailable)
        if not modes or modes[0].name != "native":
            sys.stderr.write(f"bench: native runs are impossible here: {unavailable.get('native')}\n")
            return None
        results = bench(ctx, wls, modes, progress, calibration)
    finally:
        for m in modes:
            m.teardown()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    return Report(cfg, wls, modes, results, unavailable, calibration, machine_info(), elapsed)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    cfg = Config.make(opts)
    wls = select_workloads(opts.only, workloads(cfg))
    if wls is None:
        return 2
    known = all_modes()
    names = select_modes(opts.modes, known)
    if names is None:
        return 2
    if cfg.taskset and not shutil.which("taskset"):
        sys.stderr.write("bench: --taskset needs util-linux's taskset\n")
        return 2
    report = execute(cfg, wls, names, known)
    if report is None:
        return 1
    report.write_text(sys.stderr if opts.json else sys.stdout)
    if opts.json:
        json.dump(report.json_doc(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
