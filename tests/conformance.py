"""Harness helpers for the qrun conformance probes.

Each probe (tests/probes/) prints canonical ``name: value`` lines.  It is run
natively at home and under an arbitrary command prefix (the qrun command line,
supplied by the caller), and the two stdouts must be identical apart from the
allowed divergences listed in tests/divergences.py.

Probe invocation contract:

* C probes (``<name>.static`` / ``<name>.dynamic``): ``BINARY WORKDIR BINARY``
  (the third argument is the probe's own path, for probes that copy or re-exec
  themselves; /proc/self/exe is deliberately not used).
* ``shell.sh``: ``/bin/sh shell.sh WORKDIR``; ``shell.busybox`` is the same
  script under ``/bin/busybox sh``.
* ``pyprobe.py``: ``/usr/bin/python3 pyprobe.py WORKDIR``.

The cwd is WORKDIR, an empty directory that is deleted and recreated (mode
0755) at the same absolute path before every run, stdin is /dev/null and the
environment is the caller's with the ``PROBE_ENV`` overrides.
"""

from __future__ import annotations

import collections
import difflib
import fnmatch
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:  # tests/ may or may not be a package, depending on the runner's layout
    from . import divergences as _divergences
except ImportError:
    import divergences as _divergences  # type: ignore[no-redef]

Divergence = _divergences.Divergence

TESTS_DIR = Path(__file__).resolve().parent
PROBE_DIR = TESTS_DIR / "probes"
SH = "/bin/sh"
PYTHON = "/usr/bin/python3"
BUSYBOX = "/bin/busybox"

# Environment overrides for every probe run (native and under the prefix).
# They are applied on top of the caller's environment, which both runs share
# (the prefix command, e.g. qrun, may need variables of its own such as
# PYTHONPATH), so that tool lookup and locale never depend on the caller.
PROBE_ENV: dict[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
    "LC_ALL": "C",
    "LANG": "C",
    "TZ": "UTC",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
}


def probe_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a probe run gets: os.environ + PROBE_ENV + extra."""
    env = dict(os.environ)
    env.update(PROBE_ENV)
    env.update(extra or {})
    return env


NATIVE_TIMEOUT = 60.0
UNDER_TIMEOUT = 300.0

# "name: value" with a non-empty name free of blanks and colons
LINE_RE = re.compile(r"^[^\s:]+: ")


# --------------------------------------------------------------------------
# building the C probes

def _load_build_module():
    # loaded by path: the name "build" would clash with the PyPA package
    spec = importlib.util.spec_from_file_location("qrun_probe_build", PROBE_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


_build = _load_build_module()
BuildError = _build.BuildError
_binaries: dict[str, Path] | None = None


def build_probes(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Build all C probes into out_dir and make them the ones run_* use."""
    global _binaries
    _binaries = _build.build_all(out_dir)
    return dict(_binaries)


def binaries() -> dict[str, Path]:
    """The built C probes; builds into a per-user temp dir if none were built."""
    if _binaries is None:
        default = Path(tempfile.gettempdir()) / f"qrun-conformance-probes-{os.getuid()}"
        default.mkdir(mode=0o700, exist_ok=True)
        if default.stat().st_uid != os.getuid():
            raise BuildError(f"{default} belongs to another user")
        build_probes(default)
    assert _binaries is not None
    return dict(_binaries)


# --------------------------------------------------------------------------
# the probe table

@dataclass(frozen=True)
class Probe:
    id: str
    kind: str  # "c", "sh" or "py"
    source: Path
    expected_rc: int = 0
    interpreter: tuple[str, ...] = ()

    def argv(self, workdir: str | os.PathLike[str]) -> list[str]:
        """Command line that runs this probe on workdir (builds C probes on demand)."""
        wd = str(workdir)
        if self.kind == "c":
            exe = str(binaries()[self.id])
            return [exe, wd, exe]
        return [*self.interpreter, str(self.source), wd]

    def unavailable(self) -> str | None:
        """Why this probe cannot run on this machine, or None."""
        if self.interpreter and not os.access(self.interpreter[0], os.X_OK):
            return f"{self.interpreter[0]} is not installed"
        return None


# exit status each probe must end with (default 0)
EXPECTED_RC = {
    "ident": 42,  # ident.c exits 42 on purpose: exit-status propagation
}

C_PROBE_NAMES = [src.stem for src in _build.sources()]


def _probe_table() -> list[Probe]:
    probes = []
    for name in C_PROBE_NAMES:
        for variant in _build.VARIANTS:
            probes.append(Probe(f"{name}.{variant}", "c", PROBE_DIR / f"{name}.c",
                                EXPECTED_RC.get(name, 0)))
    probes.append(Probe("shell.sh", "sh", PROBE_DIR / "shell.sh", 0, (SH,)))
    probes.append(Probe("shell.busybox", "sh", PROBE_DIR / "shell.sh", 0, (BUSYBOX, "sh")))
    probes.append(Probe("pyprobe.py", "py", PROBE_DIR / "pyprobe.py", 0, (PYTHON,)))
    return probes


PROBES: list[Probe] = _probe_table()
PROBE_IDS: list[str] = [p.id for p in PROBES]
_BY_ID = {p.id: p for p in PROBES}


def get_probe(probe_id: str) -> Probe:
    try:
        return _BY_ID[probe_id]
    except KeyError:
        raise KeyError(f"unknown probe {probe_id!r}; known: {', '.join(PROBE_IDS)}") from None


# --------------------------------------------------------------------------
# running

@dataclass
class Result:
    stdout: str
    stderr: str
    returncode: int | None  # None: timed out (killed)
    argv: list[str] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def prepare_workdir(workdir: str | os.PathLike[str]) -> Path:
    """Delete and recreate workdir: empty, mode 0755, same absolute path."""
    wd = Path(workdir)
    if not wd.is_absolute():
        raise ValueError(f"workdir must be absolute: {wd}")
    if wd.exists() or wd.is_symlink():
        if wd.is_dir() and not wd.is_symlink():
            shutil.rmtree(wd)
        else:
            wd.unlink()
    wd.mkdir(parents=True)
    wd.chmod(0o755)
    return wd


def _run(argv: list[str], workdir: Path, env: dict[str, str], timeout: float) -> Result:
    proc = subprocess.Popen(
        argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,  # so a timeout can kill the whole tree
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        err += f"\n[conformance harness: killed after {timeout}s]\n".encode()
        rc = None
    return Result(out.decode("utf-8", "backslashreplace"),
                  err.decode("utf-8", "backslashreplace"), rc, argv)


def run_native(probe_id: str, workdir: str | os.PathLike[str], *,
               timeout: float = NATIVE_TIMEOUT) -> Result:
    """Run a probe natively on a fresh workdir."""
    probe = get_probe(probe_id)
    wd = prepare_workdir(workdir)
    return _run(probe.argv(wd), wd, probe_env(), timeout)


def run_under(prefix_argv: Sequence[str], probe_id: str, workdir: str | os.PathLike[str], *,
              env: dict[str, str] | None = None, timeout: float = UNDER_TIMEOUT) -> Result:
    """Run a probe as ``[*prefix_argv, *probe_argv]`` on a fresh workdir.

    prefix_argv is an arbitrary command prefix (e.g. the qrun command line);
    env entries are added on top of probe_env() (for variables only the
    prefix needs; the job may see them too, so probes never print the
    environment).
    """
    if isinstance(prefix_argv, (str, bytes)):
        raise TypeError("prefix_argv must be a list of arguments, not a string")
    probe = get_probe(probe_id)
    wd = prepare_workdir(workdir)
    return _run([*map(str, prefix_argv), *probe.argv(wd)], wd, probe_env(env), timeout)


# --------------------------------------------------------------------------
# comparing

# how many times each allowed divergence was needed (across all compare calls)
DIVERGENCE_COUNTS: collections.Counter[Divergence] = collections.Counter()


def divergences_for(probe_id: str) -> list[Divergence]:
    return [d for d in _divergences.ALLOWED if fnmatch.fnmatchcase(probe_id, d.probe_glob)]


@dataclass
class Comparison:
    diff: list[str]  # remaining differences, "-native line" / "+other line"
    applied: list[Divergence]  # allowed divergences that hid a real difference


def _text(x: Result | str) -> list[str]:
    return (x.stdout if isinstance(x, Result) else x).splitlines()


def compare_detailed(native: Result | str, other: Result | str, probe_id: str) -> Comparison:
    a, b = _text(native), _text(other)
    applied = []
    for div in divergences_for(probe_id):
        rx = re.compile(div.line_regex)
        hit_a = [line for line in a if rx.search(line)]
        hit_b = [line for line in b if rx.search(line)]
        if hit_a != hit_b:
            applied.append(div)
        a = [line for line in a if not rx.search(line)]
        b = [line for line in b if not rx.search(line)]
    return Comparison(_diff(a, b), applied)


def _diff(a: list[str], b: list[str]) -> list[str]:
    return [line for line in difflib.unified_diff(a, b, "a", "b", n=0, lineterm="")
            if not line.startswith(("---", "+++", "@@"))]


def diff_lines(a: Result | str, b: Result | str) -> list[str]:
    """Plain stdout diff ("-a line" / "+b line"), no allowed divergences."""
    return _diff(_text(a), _text(b))


def compare(native: Result | str, other: Result | str, probe_id: str) -> list[str]:
    """Differing stdout lines after the allowed divergences; counts their use."""
    result = compare_detailed(native, other, probe_id)
    DIVERGENCE_COUNTS.update(result.applied)
    return result.diff


def malformed_lines(result: Result | str) -> list[str]:
    """Lines that are not of the canonical ``name: value`` form."""
    return [line for line in _text(result) if not LINE_RE.match(line)]


def describe(result: Result, label: str, stdout_lines: int = 40) -> str:
    """Human-readable dump of one run for assertion messages."""
    lines = result.lines
    text = f"--- {label}: rc={result.returncode} argv={result.argv}\n"
    if stdout_lines:
        head = "\n".join(lines[:stdout_lines])
        more = "" if len(lines) <= stdout_lines else f"\n... ({len(lines) - stdout_lines} more lines)"
        text += f"stdout:\n{head}{more}\n"
    return text + f"stderr:\n{result.stderr[-3000:]}"
