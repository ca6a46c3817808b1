"""Preparing what the workloads work on: the compiled bench/workloads.c and the home data."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

from .commands import run
from .config import FAN_DIRS, FAN_JOBS, MANY_FILES, SPREAD_DIRS, Config, Ctx

SOURCE = Path(__file__).resolve().parent / "workloads.c"


def build_workloads(build_dir: Path) -> Path:
    """Compile workloads.c once; rebuilt only when the source is newer than the binary."""
    build_dir.mkdir(parents=True, exist_ok=True)
    exe = build_dir / "workloads"
    if exe.exists() and exe.stat().st_mtime >= SOURCE.stat().st_mtime:
        return exe
    if not shutil.which("gcc"):
        raise SystemExit("bench: gcc is needed to build bench/workloads.c")
    tmp = build_dir / f"workloads.{os.getpid()}"
    p = run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(SOURCE)], 120)
    if p.rc != 0:
        raise SystemExit(f"bench: cannot compile {SOURCE}:\n{p.err}")
    tmp.replace(exe)
    return exe


def write_big(path: Path, mib: int) -> None:
    block = bytes(range(256)) * 4096          # 1 MiB, not all zeros
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)


def _unit_source(i: int) -> str:
    """u<i>.c: three small functions and unit<i>() calling them."""
    fns = []
    for j in range(3):
        fns.append(
            f"static int f{j}(int x) {{\n"
            f"    int a[64], s = 0;\n"
            f"    for (int k = 0; k < 64; k++) a[k] = x * {j + 1} + k + {i};\n"
            f"    for (int k = 0; k < 64; k++) s += a[k] % {j + 3};\n"
            f"    char buf[32];\n"
            f"    snprintf(buf, sizeof buf, \"%d\", s);\n"
            f"    return s + (int)strlen(buf);\n"
            f"}}\n")
    body = " + ".join(f"f{j}(x + {j})" for j in range(3))
    fns.append(f"int unit{i}(int x) {{ return {body}; }}\n")
    return '#include "common.h"\n\n' + "\n".join(fns)


def make_project(root: Path, n: int) -> None:
    """A small C project: n units of three functions each, a shared header and a Makefile."""
    root.mkdir(parents=True, exist_ok=True)
    header = ["#include <stdio.h>", "#include <stdlib.h>", "#include <string.h>"]
    header += [f"int unit{i}(int x);" for i in range(n)]
    (root / "common.h").write_text("\n".join(header) + "\n")
    for i in range(n):
        (root / f"u{i}.c").write_text(_unit_source(i))
    calls = "".join(f"    s += unit{i}({i});\n" for i in range(n))
    (root / "main.c").write_text('#include "common.h"\n\nint main(void) {\n    long s = 0;\n'
                                 f'{calls}    printf("%ld\\n", s);\n    return 0;\n}}\n')
    objs = " ".join(["main.o"] + [f"u{i}.o" for i in range(n)])
    (root / "Makefile").write_text(
        "CC = gcc\nCFLAGS = -O1\n"
        f"OBJS = {objs}\n\n"
        "prog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\n"
        "%.o: %.c common.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n")


def prepare_data(cfg: Config, work: Path, exe: Path) -> Ctx:
    home = work / "home"
    home.mkdir()
    small = home / "small.dat"
    small.write_bytes(os.urandom(16384))
    big = home / "big.dat"
    write_big(big, cfg.big_mib)
    proj = home / "proj"
    make_project(proj, cfg.make_files)
    (home / "coherence").mkdir()   # W7's (there before sshfs mounts home: it caches entries)
    many = home / "many"
    many.mkdir()
    for i in range(MANY_FILES):
        (many / f"f{i}").touch()
    spread = home / "spread"
    for i in range(SPREAD_DIRS):
        (spread / f"d{i}").mkdir(parents=True)
        (spread / f"d{i}" / "f").touch()
    (home / "fan-ready").mkdir()   # (W8's, there before sshfs mounts home, as W7's)
    fan = home / "fan"
    for k in range(FAN_JOBS):
        for i in range(FAN_DIRS):
            (fan / f"j{k}" / f"d{i}").mkdir(parents=True)
            (fan / f"j{k}" / f"d{i}" / "f").touch()
    return Ctx(cfg, exe, home, small, big, home / "written.dat", proj, unpack_lua(home), many, spread, fan)


LUA_TAR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lua-5.4.6.tar"


def unpack_lua(home: Path) -> Path | None:
    """The Lua 5.4.6 tree (../shared/data), unpacked at home for the real-project build."""
    if not LUA_TAR.is_file():
        return None
    with tarfile.open(LUA_TAR) as tar:
        members = tar.getmembers()
        if any(m.name.startswith("/") or ".." in m.name.split("/") or not (m.isfile() or m.isdir())
               for m in members):
            return None  # not the plain source tree it should be: no W3l
        tar.extractall(home, members)  # (this Python's tarfile may predate extraction filters)
    return home / "lua"
