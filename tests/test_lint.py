"""The code base stays ruff- and mypy-clean (both come with the `test` extra)."""

from __future__ import annotations

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


def test_mypy_is_clean() -> None:
    r = subprocess.run([tool("mypy")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
