"""The code base stays ruff- and mypy-clean (both come with the `test` extra)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return str(path)


def test_ruff_is_clean() -> None:
    dirs = [d for d in ("homenode", "remote", "syscalls", "native", "tests", "bench") if (REPO / d).is_dir()]
    r = subprocess.run([tool("ruff"), "check", *dirs], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


PACKAGES = ("homenode", "remote", "syscalls", "native")


def mypy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The folders are installed as qrun.<folder> through an import hook mypy cannot follow:
    # give it the same layout as links.
    ns = tmp_path / "qrun"
    ns.mkdir()
    for d in PACKAGES:
        (ns / d).symlink_to(REPO / d)
    return subprocess.run([tool("mypy"), *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MYPYPATH": str(tmp_path)})


def test_mypy_is_clean(tmp_path: Path) -> None:
    r = mypy(tmp_path, *[a for d in PACKAGES for a in ("-p", f"qrun.{d}")])
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_is_clean_over_the_tests(tmp_path: Path) -> None:
    files = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("tests/*.py"), *REPO.glob("tests/probes/*.py")])
    r = mypy(tmp_path, "--explicit-package-bases", *files)
    assert r.returncode == 0, r.stdout + r.stderr
