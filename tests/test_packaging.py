"""qrun's own code comes from its installation, never from the job's working directory."""

from __future__ import annotations

import subprocess
from pathlib import Path


def test_user_folders_named_like_qrun_packages_are_not_imported(qrun_cmd: list[str], tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    for pkg in ("remote", "native", "syscalls", "homenode", "qrun"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(
            f"open({str(canary)!r}, 'a').write('{pkg} imported\\n')\n")
    r = subprocess.run(qrun_cmd + ["--transparent", "--host", "local", "--", "/bin/sh", "-c", "echo ran; ls"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ran", "homenode", "native", "qrun", "remote", "syscalls"]
    assert not canary.exists(), canary.read_text()


def test_every_package_directory_is_installed() -> None:
    """pyproject lists packages by name: a new subpackage left out would be missing from a
    wheel (an editable install hides that)."""
    import tomllib
    repo = Path(__file__).resolve().parent.parent
    cfg = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = cfg["package-dir"]
    found = set()
    for name, folder in dirs.items():
        for init in (repo / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(repo / folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed
    data = cfg["package-data"]["qrun.native"]
    assert set(data) == {p.name for p in (repo / "native").iterdir() if p.suffix in (".h", ".c")}


def test_packages_are_the_repository_folders_found_without_a_finder() -> None:
    """install.sh puts `qrun` on sys.path as links to the four folders: each interpreter a
    job starts (home and stub) finds qrun with Python's plain path search, not through an
    import hook of setuptools' editable install, whose set-up cost every start-up."""
    import os
    import sys
    import tomllib
    repo = Path(__file__).resolve().parent.parent
    dirs_of = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    code = ("import sys, os, importlib, qrun\n"
            f"print([os.path.realpath(os.path.dirname(importlib.import_module(n).__file__)) for n in {list(dirs_of)!r}])\n"
            "print(os.path.realpath(os.path.dirname(qrun.__file__)))\n"
            "print(sorted(str(getattr(f, '__module__', '')) for f in sys.meta_path))\n")
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60,
                       cwd="/", stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    dirs, top, hooks = r.stdout.splitlines()
    assert dirs == str([str(repo / d) for d in dirs_of.values()])
    assert top == os.path.realpath(os.path.join(sys.prefix, "qrun-import", "qrun"))
    assert "editable" not in hooks, hooks
