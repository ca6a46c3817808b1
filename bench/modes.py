"""Modes: how a command is run (a command prefix), and optionally a different view of the data."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Protocol

from .commands import apt_hint, run
from .config import Ctx, ctx_wrap
from .sshfs import NO_CACHE, SshfsView

REPO = Path(__file__).resolve().parent.parent
MODE_NAMES = ("native", "qrun", "qrun-sandbox", "strace", "strace-seccomp", "proot", "proot-5.4", "sshfs",
              "sshfs-nocache")
# Upstream PRoot 5.4 built with its seccomp filter (Debian's proot has none): ../shared/data.
PROOT_54 = REPO.parent / "shared" / "data" / "proot-5.4-seccomp"
EXTRA_MODES = ("qrun-1cpu",)   # only when asked for with --modes


class DataView(Protocol):
    """Where a mode's commands find the home data, when not at its own path."""

    def setup(self, ctx: Ctx) -> str | None: ...

    def path(self, p: Path) -> Path: ...

    def teardown(self) -> None: ...


class Mode:
    """How a command is run: a command prefix, and optionally a view of the data (which then
    also decides whether the mode can run here)."""

    def __init__(self, name: str, prefix: list[str], package: str | None = None,
                 what: str = "", view: DataView | None = None) -> None:
        self.name = name
        self.prefix = prefix
        self.package = package
        self.what = what or " ".join(prefix) or "the command itself"
        self.view = view

    def setup(self, ctx: Ctx) -> str | None:
        """Returns why the mode cannot run here, or None."""
        if self.view is not None:
            return self.view.setup(ctx)
        if self.prefix and not shutil.which(self.prefix[0]):
            return "not installed" + (apt_hint(self.package) if self.package else "")
        p = run(ctx_wrap(ctx, self.wrap(["/bin/true"])), 120)
        if p.rc != 0 or p.timed_out:
            return "cannot run /bin/true: " + p.reason(120)
        return None

    def wrap(self, argv: list[str]) -> list[str]:
        return self.prefix + argv

    def path(self, p: Path) -> Path:
        return self.view.path(p) if self.view is not None else p

    def teardown(self) -> None:
        if self.view is not None:
            self.view.teardown()


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
        "proot": Mode("proot", ["proot"], "proot", "Debian's proot (no seccomp filter)"),
        "proot-5.4": Mode("proot-5.4", [str(PROOT_54)], "libtalloc2",
                          "upstream proot 5.4 with its seccomp filter"),
        "sshfs": Mode("sshfs", [], "sshfs", "data via sshfs from a private sshd on loopback (default caches)",
                      view=SshfsView()),
        "sshfs-nocache": Mode("sshfs-nocache", [], "sshfs",
                              f"the same with every cache off ({NO_CACHE})", view=SshfsView(cache=False)),
    }
