"""The workloads W1..W6 (defined in bench/README.md), as data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import FAN_DIRS, FAN_JOBS, MANY_FILES, SPREAD_DIRS, Config, Ctx
from .modes import Mode


@dataclass
class Workload:
    key: str
    title: str
    unit: str
    # timing "program": the arguments of one bench/workloads.c workload (its first word is the
    # tag of its RESULT line); "wall" (whole process) and "spawn" (whole process, per start):
    # the full command; "fan": one workload run by FAN_JOBS processes at once, each given
    # its index as a last argument (bench/measure.py adds up their spans).
    command: Callable[[Ctx, Mode], list[str]]
    higher_is_better: bool = False
    heavy: bool = False             # runs alone, warmed up once natively (page cache, compiler)
    timing: str = "program"
    cwd: Callable[[Ctx, Mode], Path] | None = None
    prepare: Callable[[Ctx], None] | None = None
    check: Callable[[Ctx], str | None] | None = None
    # A process run at home beside the workload, natively (the changes W7 waits for).
    helper: Callable[[Ctx], list[str]] | None = None

    @property
    def grouped(self) -> bool:
        """Light in-program workloads share one process per run, so a slow-starting mode
        (qrun starts two Python interpreters) is started once per run, not once per workload."""
        return self.timing == "program" and not self.heavy and self.helper is None


def _budget(c: Ctx) -> str:
    return str(c.cfg.budget_ms)


def _remove_out(c: Ctx) -> None:
    c.out.unlink(missing_ok=True)


CHANGES = 20   # W7: changes made at home per run


def _reset_changes(c: Ctx) -> None:
    """W7's directory as `workloads seen` expects it: an empty flag, no log, not ready."""
    d = c.home / "coherence"
    for name in ("log", "ready"):
        (d / name).unlink(missing_ok=True)
    (d / "flag").write_bytes(b"")


def _reset_fan(c: Ctx) -> None:
    """W8's start line: no go file, an empty directory for the jobs' ready files."""
    (c.home / "fan-go").unlink(missing_ok=True)
    ready = c.home / "fan-ready"
    ready.mkdir(exist_ok=True)
    for f in ready.iterdir():
        f.unlink()


def _clean_proj(c: Ctx) -> None:
    for f in c.proj.glob("*.o"):
        f.unlink()
    (c.proj / "prog").unlink(missing_ok=True)


def _built(c: Ctx) -> str | None:
    return None if (c.proj / "prog").exists() else "make left no program behind"


def _clean_lua(c: Ctx) -> None:
    if c.lua is not None:
        for f in [*c.lua.glob("*.o"), *c.lua.glob("*.a"), c.lua / "lua"]:
            f.unlink(missing_ok=True)


def _lua_built(c: Ctx) -> str | None:
    if c.lua is None:
        return "the Lua tree (../shared/data/lua-5.4.6.tar) is not there"
    return None if (c.lua / "lua").exists() else "make left no lua binary behind"


def _lua_dir(c: Ctx, m: Mode) -> Path:
    return m.path(c.lua if c.lua is not None else c.proj)


def workloads(cfg: Config) -> list[Workload]:
    return [
        Workload("W1", "stat() of a home file", "µs",
                 lambda c, m: ["stat", str(m.path(c.small)), _budget(c)]),
        Workload("W1f", f"first stat() of each of {MANY_FILES} home files", "µs",
                 lambda c, m: ["stat1", str(m.path(c.many or c.home)), str(MANY_FILES)]),
        Workload("W1s", f"first stat() of a home file in each of {SPREAD_DIRS} directories", "µs",
                 lambda c, m: ["stat1d", str(m.path(c.spread or c.home)), str(SPREAD_DIRS)]),
        Workload("W1b", "open + read 4 KiB + close of a home file", "µs",
                 lambda c, m: ["orc", str(m.path(c.small)), _budget(c)]),
        Workload("W2", f"read {cfg.big_mib} MiB home file, 1 MiB reads", "MB/s",
                 lambda c, m: ["read", str(m.path(c.big))],
                 higher_is_better=True, heavy=True),
        Workload("W2w", f"write {cfg.big_mib} MiB home file, 1 MiB writes", "MB/s",
                 lambda c, m: ["write", str(m.path(c.out)), str(c.cfg.big_mib)],
                 higher_is_better=True, heavy=True, prepare=_remove_out),
        Workload("W2d", "write 9 MiB home file, 512-byte writes (dd bs=512)", "MB/s",
                 lambda c, m: ["write", str(m.path(c.out)), "9", "512"],
                 higher_is_better=True, heavy=True, prepare=_remove_out),
        Workload("W3", f"make -j2, {cfg.make_files} C files at home", "s",
                 lambda c, m: ["make", "-s", "-j2"], heavy=True, timing="wall",
                 cwd=lambda c, m: m.path(c.proj), prepare=_clean_proj, check=_built),
        Workload("W3l", "make -j2 of Lua 5.4.6 at home", "s",
                 lambda c, m: ["make", "-s", "-j2"], heavy=True, timing="wall",
                 cwd=_lua_dir, prepare=_clean_lua, check=_lua_built),
        Workload("W4", "untrapped syscall (clock_gettime)", "ns",
                 lambda c, m: ["clock", _budget(c)]),
        Workload("W4r", "read 4 KiB of a local fd (/dev/zero)", "ns",
                 lambda c, m: ["rdzero", _budget(c)]),
        Workload("W5", "start of /bin/true, whole process", "ms",
                 lambda c, m: ["/bin/true"], timing="spawn"),
        Workload("W5b", "fork+exec+wait /bin/true in the job", "ms",
                 lambda c, m: ["spawn", "/bin/true", _budget(c)]),
        Workload("W7", f"change made at home seen by the job (worst of {CHANGES})", "ms",
                 lambda c, m: ["seen", str(m.path(c.home / "coherence")), str(CHANGES)],
                 prepare=_reset_changes,
                 helper=lambda c: [str(c.exe), "change", str(c.home / "coherence"), str(CHANGES)]),
        Workload("W6", "pipe round trip between two job processes", "µs",
                 lambda c, m: ["pingpong", _budget(c)]),
        Workload("W8", f"{FAN_JOBS} jobs at once, first stats: calls/s in total", "calls/s",
                 lambda c, m: ["fan", str(m.path(c.home / "fan-go")), str(m.path(c.home / "fan-ready")),
                               str(m.path(c.fan or c.home)), str(FAN_DIRS)],
                 higher_is_better=True, heavy=True, timing="fan", prepare=_reset_fan),
    ]
