"""Every syscall the runtime traps is exercised by some conformance probe.

Measured, not declared: each probe runs natively under strace, and the union of the calls
they make must include every trapped entry of the table (for this machine's
architecture), except the few listed in NOT_PROBED with the reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import conformance as conf
import pytest
from qrun.syscalls.model import Route
from qrun.syscalls.table import TABLE, by_number

ARCH = "x86_64"

# Trapped calls no probe makes, and why. Each is still covered by the filter and executor
# tests (test_table.py); denied ones by test_denied_calls_fail_clearly.
NOT_PROBED: dict[str, str] = {
    "setfsuid": "only used by file servers; answered from the identity like setuid",
    "setfsgid": "only used by file servers; answered from the identity like setgid",
    "rt_tgsigqueueinfo": "thread-directed queued signals; same translation as tgkill",
    "tee": "pipe-to-pipe only; never touches a home fd",
}

_CALL = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z_0-9]+)[( ]")


@pytest.fixture(scope="session")
def traced_calls(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    strace = shutil.which("strace")
    if not strace:
        pytest.skip("strace is not installed")
    seen: set[str] = set()
    for probe in conf.PROBES:
        if probe.unavailable():
            continue
        try:
            argv = probe.argv(tmp_path_factory.mktemp("cov") / "work")
        except conf.BuildError as exc:  # no compiler: nothing to measure
            pytest.skip(str(exc))
        out = tmp_path_factory.mktemp("trace") / "trace.txt"
        wd = conf.prepare_workdir(Path(argv[-2] if probe.kind == "c" else argv[-1]))
        subprocess.run([strace, "-f", "-qq", "-o", str(out), *argv], cwd=wd, env=conf.probe_env(),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        for line in out.read_text(errors="replace").splitlines():
            m = _CALL.match(line)
            if m:
                name = m.group(1)
                if name.startswith("syscall_0x"):  # newer than this strace: named by number
                    known = by_number(ARCH).get(int(name[len("syscall_0x"):], 16))
                    name = known.name if known else name
                seen.add(name)
    return seen


def trapped() -> set[str]:
    return {s.name for s in TABLE
            if s.route not in (Route.LOCAL, Route.DENY) and s.number(ARCH) is not None}


def test_every_trapped_call_is_exercised_by_a_probe(traced_calls: set[str]) -> None:
    missing = sorted(trapped() - traced_calls - set(NOT_PROBED))
    assert missing == [], f"trapped calls no probe makes: {missing}"


def test_not_probed_list_has_no_stale_entries(traced_calls: set[str]) -> None:
    assert set(NOT_PROBED) <= trapped()
    assert sorted(set(NOT_PROBED) & traced_calls) == [], "listed as not probed, yet probed"
