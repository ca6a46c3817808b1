"""Running one command with a timeout, and saying why it failed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


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
        return clip(f"{why} ({status})", 160)


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
        out, err = _stop(p)
        return Proc(p.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                    time.perf_counter() - t0, timed_out=True)
    wall = time.perf_counter() - t0
    return Proc(p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), wall)


def _stop(p: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """End a command that ran out of time; what it wrote until then."""
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
    return out, err


def clip(s: str, n: int) -> str:
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
