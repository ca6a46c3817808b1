"""What a benchmark run is asked for (Config) and where its files are (Ctx)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Config:
    quick: bool
    runs: int
    budget_ms: int          # minimum duration of one per-call loop (W1, W1b, W4, W5, W5b)
    big_mib: int            # W2 / W2w size
    make_files: int         # W3 project size
    timeout: float          # per run
    taskset: str | None

    @classmethod
    def make(cls, opts: argparse.Namespace) -> Config:
        quick = bool(opts.quick)
        return cls(quick=quick,
                   runs=opts.runs or (3 if quick else 5),
                   budget_ms=100 if quick else 250,
                   big_mib=64 if quick else 256,
                   make_files=4 if quick else 16,
                   timeout=opts.timeout or (90.0 if quick else 240.0),
                   taskset=opts.taskset)


@dataclass
class Ctx:
    """Where things are: the compiled workloads, and the home data every mode works on."""
    cfg: Config
    exe: Path
    home: Path              # data directory (a home path for qrun; exported by sshfs)
    small: Path             # W1/W1b target
    big: Path               # W2 input
    out: Path               # W2w output
    proj: Path              # W3 project
    lua: Path | None = None  # W3l: the Lua 5.4.6 tree from ../shared/data (None: not there)
    many: Path | None = None  # W1f: a directory of MANY_FILES empty files f0, f1, ...
    spread: Path | None = None  # W1s: SPREAD_DIRS directories d0, d1, ... of one empty file f
    fan: Path | None = None  # W8: FAN_JOBS trees j0, j1, ... of FAN_DIRS directories d0, ... of a file f


MANY_FILES = 2000
SPREAD_DIRS = 500
FAN_JOBS = 16      # W8: jobs at once
FAN_DIRS = 200     # W8: first stats per job


def ctx_wrap(ctx: Ctx, argv: list[str]) -> list[str]:
    """argv under `taskset -c CPUS` when --taskset asks for it."""
    return ["taskset", "-c", ctx.cfg.taskset, *argv] if ctx.cfg.taskset else argv
