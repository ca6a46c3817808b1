"""Benchmark qrun against native execution and the tools a user would pick instead.

    python -m bench.run [--quick] [--json] [--only W1,W3] [--modes native,qrun,...]

Each workload (W1..W5, defined in bench/README.md) runs in each mode: natively, under qrun
(`--host local` and `--host sandbox`), under strace (plain and with a seccomp filter), under
proot and over sshfs when those are installed. A cell is the median of N runs after a
warm-up, with its ratio to native; a mode that cannot run says why instead.

Benchmarks measure; they never assert. Nothing here is used by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SOURCE = HERE / "workloads.c"
MODE_NAMES = ("native", "qrun", "qrun-sandbox", "strace", "strace-seccomp", "proot", "sshfs")
EXTRA_MODES = ("qrun-1cpu",)   # only when asked for with --modes


# ---- configuration ----------------------------------------------------------------------
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


# ---- running commands -------------------------------------------------------------------
@dataclass
class Proc:
    rc: int
    out: str
    err: str
    wall: float
    timed_out: bool = False

    def reason(self, timeout: float) -> str:
        if self.timed_out:
            return f"timed out after {timeout:g} s"
        lines = [ln.strip() for ln in self.err.splitlines() if ln.strip()]
        # A Python traceback's last line is the useful one; so is a tool's last complaint.
        why = lines[-1] if lines else "no output"
        status = f"killed by signal {-self.rc}" if self.rc < 0 else f"exit {self.rc}"
        return _clip(f"{why} ({status})", 160)


def run(argv: list[str], timeout: float, cwd: Path | None = None) -> Proc:
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        return Proc(127, "", f"{argv[0]}: {exc.strerror}", 0.0)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM first: qrun forwards it to the job, whose processes live in the stub's
        # session on the execution host. Then SIGKILL whatever is left in our own group
        # (strace's tracees, for one).
        p.terminate()
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out, err = b"", b""
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if p.returncode is None:
            more_out, more_err = p.communicate()
            out, err = out + more_out, err + more_err
        return Proc(p.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                    time.perf_counter() - t0, timed_out=True)
    wall = time.perf_counter() - t0
    return Proc(p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), wall)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def apt_hint(pkg: str) -> str:
    """' (Debian package X v is available)' when apt knows a candidate; no network access."""
    if not shutil.which("apt-cache"):
        return ""
    p = run(["apt-cache", "policy", pkg], 20)
    m = re.search(r"Candidate:\s*(\S+)", p.out)
    if m and m.group(1) != "(none)":
        return f" (Debian package {pkg} {m.group(1)} is available)"
    return f" (no Debian package {pkg} known to apt here)"


# ---- modes ------------------------------------------------------------------------------
class Mode:
    """How a command is run: a command prefix, and optionally a different view of the data."""

    def __init__(self, name: str, prefix: list[str], package: str | None = None,
                 what: str = "") -> None:
        self.name = name
        self.prefix = prefix
        self.package = package
        self.what = what or " ".join(prefix) or "the command itself"

    def setup(self, ctx: Ctx) -> str | None:
        """Returns why the mode cannot run here, or None."""
        if self.prefix and not shutil.which(self.prefix[0]):
            return "not installed" + (apt_hint(self.package) if self.package else "")
        p = run(ctx_wrap(ctx, self.wrap(["/bin/true"])), 120)
        if p.rc != 0 or p.timed_out:
            return "cannot run /bin/true: " + p.reason(120)
        return None

    def wrap(self, argv: list[str]) -> list[str]:
        return self.prefix + argv

    def path(self, p: Path) -> Path:
        return p

    def teardown(self) -> None:
        pass


class Sshfs(Mode):
    """The data directory mounted from localhost over sshfs; commands run natively on the mount."""

    def __init__(self) -> None:
        super().__init__("sshfs", [], "sshfs", "data via sshfs localhost:DIR (default options)")
        self.mnt: Path | None = None
        self.src: Path | None = None

    def setup(self, ctx: Ctx) -> str | None:
        if not shutil.which("sshfs"):
            return "not installed" + apt_hint("sshfs")
        if not shutil.which("ssh"):
            return "no ssh client" + apt_hint("openssh-client")
        ssh_opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "StrictHostKeyChecking=accept-new"]
        p = run(["ssh", *ssh_opts, "localhost", "true"], 30)
        if p.rc != 0 or p.timed_out:
            hint = "" if shutil.which("sshd") else "; no sshd here" + apt_hint("openssh-server")
            return f"needs passwordless ssh to localhost: {p.reason(30)}{hint}"
        mnt = Path(tempfile.mkdtemp(prefix="qrun-bench-sshfs-"))
        p = run(["sshfs", "-o", "BatchMode=yes,StrictHostKeyChecking=accept-new",
                 f"localhost:{ctx.home}", str(mnt)], 60)
        if p.rc != 0 or p.timed_out:
            mnt.rmdir()
            return "sshfs mount failed: " + p.reason(60)
        self.mnt, self.src = mnt, ctx.home
        return None

    def path(self, p: Path) -> Path:
        if self.mnt is None or self.src is None:
            return p
        return self.mnt / p.relative_to(self.src)

    def teardown(self) -> None:
        if self.mnt is None:
            return
        for cmd in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
            if shutil.which(cmd[0]) and run([*cmd, str(self.mnt)], 30).rc == 0:
                break
        try:
            self.mnt.rmdir()
        except OSError:
            pass
        self.mnt = None


def qrun_binary() -> str | None:
    for cand in (Path(sys.executable).parent / "qrun", REPO / ".venv" / "bin" / "qrun"):
        if cand.exists():
            return str(cand)
    return shutil.which("qrun")


def all_modes() -> dict[str, Mode]:
    q = qrun_binary() or "qrun"
    strace = ["strace", "-f", "-o", "/dev/null"]
    return {
        "native": Mode("native", []),
        "qrun": Mode("qrun", [q, "--transparent", "--host", "local", "--"],
                     what="qrun --transparent --host local"),
        "qrun-sandbox": Mode("qrun-sandbox", [q, "--transparent", "--host", "sandbox", "--"],
                             what="qrun --transparent --host sandbox (namespaces)"),
        "qrun-1cpu": Mode("qrun-1cpu", ["taskset", "-c", "0", q, "--transparent", "--host", "local", "--"],
                          "util-linux", "taskset -c 0 qrun --transparent --host local (all on CPU 0)"),
        "strace": Mode("strace", strace, "strace"),
        "strace-seccomp": Mode("strace-seccomp",
                               ["strace", "-f", "--seccomp-bpf", "-e", "trace=%file", "-o", "/dev/null"],
                               "strace"),
        "proot": Mode("proot", ["proot"], "proot"),
        "sshfs": Sshfs(),
    }


def ctx_wrap(ctx: Ctx, argv: list[str]) -> list[str]:
    return ["taskset", "-c", ctx.cfg.taskset, *argv] if ctx.cfg.taskset else argv


# ---- workloads --------------------------------------------------------------------------
@dataclass
class Workload:
    key: str
    title: str
    unit: str
    # timing "program": the arguments of one bench/workloads.c workload (its first word is the
    # tag of its RESULT line); "wall" (whole process) and "spawn" (whole process, per start):
    # the full command.
    command: Callable[[Ctx, Mode], list[str]]
    higher_is_better: bool = False
    heavy: bool = False             # runs alone, warmed up once natively (page cache, compiler)
    timing: str = "program"
    cwd: Callable[[Ctx, Mode], Path] | None = None
    prepare: Callable[[Ctx], None] | None = None
    check: Callable[[Ctx], str | None] | None = None

    @property
    def grouped(self) -> bool:
        """Light in-program workloads share one process per run, so a slow-starting mode
        (qrun starts two Python interpreters) is started once per run, not once per workload."""
        return self.timing == "program" and not self.heavy


def workloads(cfg: Config) -> list[Workload]:
    def budget(c: Ctx) -> str:
        return str(c.cfg.budget_ms)

    def remove_out(c: Ctx) -> None:
        c.out.unlink(missing_ok=True)

    def clean_proj(c: Ctx) -> None:
        for f in c.proj.glob("*.o"):
            f.unlink()
        (c.proj / "prog").unlink(missing_ok=True)

    def built(c: Ctx) -> str | None:
        return None if (c.proj / "prog").exists() else "make left no program behind"

    return [
        Workload("W1", "stat() of a home file", "µs",
                 lambda c, m: ["stat", str(m.path(c.small)), budget(c)]),
        Workload("W1b", "open + read 4 KiB + close of a home file", "µs",
                 lambda c, m: ["orc", str(m.path(c.small)), budget(c)]),
        Workload("W2", f"read {cfg.big_mib} MiB home file, 1 MiB reads", "MB/s",
                 lambda c, m: ["read", str(m.path(c.big))],
                 higher_is_better=True, heavy=True),
        Workload("W2w", f"write {cfg.big_mib} MiB home file, 1 MiB writes", "MB/s",
                 lambda c, m: ["write", str(m.path(c.out)), str(c.cfg.big_mib)],
                 higher_is_better=True, heavy=True, prepare=remove_out),
        Workload("W3", f"make -j2, {cfg.make_files} C files at home", "s",
                 lambda c, m: ["make", "-s", "-j2"], heavy=True, timing="wall",
                 cwd=lambda c, m: m.path(c.proj), prepare=clean_proj, check=built),
        Workload("W4", "untrapped syscall (clock_gettime)", "ns",
                 lambda c, m: ["clock", budget(c)]),
        Workload("W4r", "read 4 KiB of a local fd (/dev/zero)", "ns",
                 lambda c, m: ["rdzero", budget(c)]),
        Workload("W5", "start of /bin/true, whole process", "ms",
                 lambda c, m: ["/bin/true"], timing="spawn"),
        Workload("W5b", "fork+exec+wait /bin/true in the job", "ms",
                 lambda c, m: ["spawn", "/bin/true", budget(c)]),
        Workload("W6", "pipe round trip between two job processes", "µs",
                 lambda c, m: ["pingpong", budget(c)]),
    ]


# ---- preparing the data -----------------------------------------------------------------
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


def make_project(root: Path, n: int) -> None:
    """A small C project: n units of three functions each, a shared header and a Makefile."""
    root.mkdir(parents=True, exist_ok=True)
    header = ["#include <stdio.h>", "#include <stdlib.h>", "#include <string.h>"]
    header += [f"int unit{i}(int x);" for i in range(n)]
    (root / "common.h").write_text("\n".join(header) + "\n")
    for i in range(n):
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
        (root / f"u{i}.c").write_text('#include "common.h"\n\n' + "\n".join(fns))
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
    return Ctx(cfg, exe, home, small, big, home / "written.dat", proj)


# ---- measuring --------------------------------------------------------------------------
@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


_RESULT = re.compile(r"^RESULT\s+(\S+)\s+(\S+)\s+(\S+)", re.M)


def measure(ctx: Ctx, ws: list[Workload], m: Mode) -> tuple[dict[str, float], float, str | None]:
    """One run of one or more workloads in one process: their values by key, the
    whole-process seconds, and why the workloads without a value have none."""
    cfg = ctx.cfg
    first = ws[0]
    for w in ws:
        if w.prepare:
            w.prepare(ctx)
    if first.timing == "program":
        argv = [str(ctx.exe)]
        for i, w in enumerate(ws):
            argv += (["+"] if i else []) + w.command(ctx, m)
    else:
        argv = first.command(ctx, m)
    argv = ctx_wrap(ctx, m.wrap(argv))
    cwd = first.cwd(ctx, m) if first.cwd else ctx.home
    if first.timing == "spawn":
        # Whole-process start, repeated for at least the loop budget; mean per start.
        total, count, deadline = 0.0, 0, time.perf_counter() + cfg.budget_ms / 1e3
        while count == 0 or (time.perf_counter() < deadline and count < 200):
            p = run(argv, cfg.timeout, cwd)
            if p.rc != 0 or p.timed_out:
                return {}, p.wall, p.reason(cfg.timeout)
            total += p.wall
            count += 1
        return {first.key: total / count * 1e3}, total / count, None
    p = run(argv, cfg.timeout, cwd)
    failed = p.reason(cfg.timeout) if p.rc != 0 or p.timed_out else None
    if first.timing == "wall":
        if failed:
            return {}, p.wall, failed
        if first.check and (why := first.check(ctx)):
            return {}, p.wall, why
        return {first.key: p.wall}, p.wall, None
    found = {tag: float(v) for tag, v, _unit in _RESULT.findall(p.out)}
    values = {w.key: found[w.command(ctx, m)[0]] for w in ws if w.command(ctx, m)[0] in found}
    if not failed and len(values) < len(ws):
        failed = _clip("no RESULT line in the output: " + (p.out.strip() or p.err.strip()), 160)
    return values, p.wall, failed


def pipe_round_trip(ctx: Ctx) -> float | None:
    """The machine's current context-switch cost (native), to show how noisy the run was."""
    p = run(ctx_wrap(ctx, [str(ctx.exe), "pingpong", "100"]), 60)
    found = _RESULT.search(p.out)
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


def bench(ctx: Ctx, wls: list[Workload], modes: list[Mode], progress: Callable[[str], None],
          calibration: list[float]) -> dict[str, dict[str, Cell]]:
    native = modes[0]
    results: dict[str, dict[str, Cell]] = {w.key: {m.name: Cell() for m in modes} for w in wls}

    def one(ws: list[Workload], m: Mode, keep: bool) -> None:
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

    for ws in jobs_of(wls):
        t0 = time.perf_counter()
        if (rt := pipe_round_trip(ctx)) is not None:
            calibration.append(rt)
        # Warm-up: once per mode; heavy workloads (and all with --quick) once natively only,
        # which warms the page cache and the compiler. Every mode already ran once in setup.
        for m in [native] if ws[0].heavy or ctx.cfg.quick else modes:
            one(ws, m, keep=False)
        # Runs interleave the modes, so slow drifts of a noisy machine hit every mode alike.
        for _ in range(ctx.cfg.runs):
            for m in modes:
                one(ws, m, keep=True)
        progress(f"{'+'.join(w.key for w in ws)}: {time.perf_counter() - t0:.1f} s")
    if (rt := pipe_round_trip(ctx)) is not None:
        calibration.append(rt)
    return results


def ratio(w: Workload, value: float | None, base: float | None) -> float | None:
    if not value or not base:
        return None
    return base / value if w.higher_is_better else value / base


# ---- output -----------------------------------------------------------------------------
def fmt_num(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


_LARGER = {"ns": ("µs", 1e3), "µs": ("ms", 1e3), "ms": ("s", 1e3)}


def fmt_value(v: float, unit: str) -> str:
    """'16.7 µs' rather than '16696 ns'."""
    while unit in _LARGER and v >= 10000:
        unit, v = _LARGER[unit][0], v / _LARGER[unit][1]
    return f"{fmt_num(v)} {unit}"


def fmt_ratio(r: float) -> str:
    return f"{r:.0f}×" if r >= 10 else f"{r:.2f}×"


def table(wls: list[Workload], modes: list[Mode],
          results: dict[str, dict[str, Cell]]) -> tuple[str, list[str]]:
    notes: list[str] = []
    head = ["workload"] + [m.name for m in modes]
    rows = []
    for w in wls:
        cells = results[w.key]
        base = cells[modes[0].name].median
        row = [f"{w.key:4} {w.title}"]
        for m in modes:
            c = cells[m.name]
            if c.error:
                notes.append(f"{w.key} {m.name}: {c.error}")
                row.append(f"failed [{len(notes)}]")
                continue
            v = c.median
            if v is None:
                row.append("-")
                continue
            text = fmt_value(v, w.unit)
            r = ratio(w, v, base)
            if m is not modes[0] and r is not None:
                text += f" ({fmt_ratio(r)})"
            row.append(text)
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(wd) for h, wd in zip(head, widths, strict=True)).rstrip(),
             "  ".join("-" * wd for wd in widths)]
    for r in rows:
        cols = [r[0].ljust(widths[0])] + [c.rjust(wd) for c, wd in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cols))
    return "\n".join(lines), notes


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {"nproc": os.cpu_count(), "kernel": platform.release(),
                               "arch": platform.machine(), "python": platform.python_version()}
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                info["cpu"] = ln.split(":", 1)[1].strip()
                break
        for ln in Path("/proc/meminfo").read_text().splitlines():
            if ln.startswith("MemTotal:"):
                info["mem_gib"] = round(int(ln.split()[1]) / 2**20, 1)
                break
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)', Path("/etc/os-release").read_text(), re.M)
        if m:
            info["os"] = m.group(1)
    except OSError:
        pass
    versions = {"gcc": ["gcc", "-dumpfullversion"], "strace": ["strace", "-V"], "proot": ["proot", "-V"],
                "sshfs": ["sshfs", "--version"]}
    for name, cmd in versions.items():
        if shutil.which(cmd[0]):
            p = run(cmd, 10)
            m = re.search(r"\d+\.\d+(\.\d+)?", p.out + p.err)
            if m:
                info[name] = m.group(0)
    return info


def machine_line(info: dict[str, object]) -> str:
    parts = [f"nproc {info.get('nproc')}", f"kernel {info.get('kernel')} {info.get('arch')}"]
    for key in ("cpu", "os"):
        if key in info:
            parts.append(str(info[key]))
    if "mem_gib" in info:
        parts.append(f"{info['mem_gib']} GiB RAM")
    tools = ", ".join(f"{k} {info[k]}" for k in ("python", "gcc", "strace", "proot", "sshfs") if k in info)
    return "machine: " + "; ".join(parts) + "; " + tools


# ---- main -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
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


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    cfg = Config.make(opts)
    wls = workloads(cfg)
    if opts.only:
        want = [k.strip().lower() for k in opts.only.split(",") if k.strip()]
        unknown = [k for k in want if k not in {w.key.lower() for w in wls}]
        if unknown:
            sys.stderr.write(f"bench: unknown workload(s) {', '.join(unknown)}; "
                             f"known: {', '.join(w.key for w in wls)}\n")
            return 2
        wls = [w for w in wls if w.key.lower() in want]
    known = all_modes()
    names = list(MODE_NAMES)
    if opts.modes:
        names = [n.strip() for n in opts.modes.split(",") if n.strip()]
        bad = [n for n in names if n not in known]
        if bad:
            sys.stderr.write(f"bench: unknown mode(s) {', '.join(bad)}; "
                             f"known: {', '.join(MODE_NAMES + EXTRA_MODES)}\n")
            return 2
        names = ["native"] + [n for n in names if n != "native"]
    if cfg.taskset and not shutil.which("taskset"):
        sys.stderr.write("bench: --taskset needs util-linux's taskset\n")
        return 2

    out = sys.stderr if opts.json else sys.stdout

    def progress(msg: str) -> None:
        sys.stderr.write(f"bench: {msg}\n")
        sys.stderr.flush()

    started = time.perf_counter()
    exe = build_workloads(Path(tempfile.gettempdir()) / f"qrun-bench-build-{os.getuid()}")
    work = Path(tempfile.mkdtemp(prefix="qrun-bench-"))
    modes: list[Mode] = []
    unavailable: dict[str, str] = {}
    calibration: list[float] = []
    try:
        ctx = prepare_data(cfg, work, exe)
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
        if not modes or modes[0].name != "native":
            sys.stderr.write(f"bench: native runs are impossible here: {unavailable.get('native')}\n")
            return 1
        results = bench(ctx, wls, modes, progress, calibration)
    finally:
        for m in modes:
            m.teardown()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started

    info = machine_info()
    text, notes = table(wls, modes, results)
    print(f"qrun benchmark: median of {cfg.runs} run{'s' if cfg.runs != 1 else ''} after a warm-up"
          f"{' (--quick)' if cfg.quick else ''}; (N×) = slowdown against native", file=out)
    print(text, file=out)
    for i, n in enumerate(notes, 1):
        print(f"[{i}] {n}", file=out)
    for name, why in unavailable.items():
        print(f"not run: {name}: {why}", file=out)
    print("modes: " + "; ".join(f"{m.name} = {m.what}" for m in modes[1:]), file=out)
    if calibration:
        info["pipe_round_trip_us"] = {"median": statistics.median(calibration),
                                      "min": min(calibration), "max": max(calibration)}
        print(f"noise: a native pipe round trip took {statistics.median(calibration):.1f} µs "
              f"(min {min(calibration):.1f}, max {max(calibration):.1f}) over the run; every "
              "trapped call pays at least one such switch", file=out)
    print(machine_line(info) + f"; total {elapsed:.0f} s"
          + (f"; taskset -c {cfg.taskset}" if cfg.taskset else ""), file=out)

    if opts.json:
        doc = {
            "config": {"quick": cfg.quick, "runs": cfg.runs, "loop_budget_ms": cfg.budget_ms,
                       "big_mib": cfg.big_mib, "make_files": cfg.make_files, "taskset": cfg.taskset},
            "machine": info,
            "elapsed_s": round(elapsed, 1),
            "modes": {m.name: {"available": True, "what": m.what} for m in modes}
            | {n: {"available": False, "reason": why} for n, why in unavailable.items()},
            "workloads": {
                w.key: {
                    "title": w.title, "unit": w.unit, "higher_is_better": w.higher_is_better,
                    "results": {
                        m.name: {
                            "median": results[w.key][m.name].median,
                            "ratio_to_native": ratio(w, results[w.key][m.name].median,
                                                     results[w.key]["native"].median),
                            "runs": results[w.key][m.name].values,
                            "wall_s_median": (statistics.median(results[w.key][m.name].walls)
                                              if results[w.key][m.name].walls else None),
                            "error": results[w.key][m.name].error,
                        } for m in modes
                    },
                } for w in wls
            },
        }
        json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
