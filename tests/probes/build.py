"""Build the C conformance probes.

Each ``tests/probes/<name>.c`` is compiled twice:

* ``<out>/<name>.static``  with ``gcc -O1 -static -pthread``
* ``<out>/<name>.dynamic`` with ``gcc -O1 -pthread``

``build_all(out_dir)`` returns ``{'files.static': Path(...), ...}``.  A binary
is rebuilt only when it is older than its source, ``probe.h`` or this file.

Usable from the command line too: ``python3 tests/probes/build.py OUT_DIR``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROBE_DIR = Path(__file__).resolve().parent
HEADER = PROBE_DIR / "probe.h"
COMMON_FLAGS = ["-O1", "-pthread", "-Wall", "-Wextra", "-std=gnu11"]
VARIANTS = {
    "static": ["-static"],
    "dynamic": [],
}


class BuildError(RuntimeError):
    """A probe could not be built (no gcc, no static libc, compile error)."""


def sources() -> list[Path]:
    """The C probe sources, sorted by name."""
    return sorted(PROBE_DIR.glob("*.c"))


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BuildError(
            "gcc not found on PATH: the C conformance probes need gcc and a static "
            "glibc (Debian: apt-get install gcc libc6-dev)"
        )
    return gcc


def _up_to_date(target: Path, deps: list[Path]) -> bool:
    try:
        built = target.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    return all(dep.stat().st_mtime_ns <= built for dep in deps)


def _compile(gcc: str, src: Path, variant: str, target: Path) -> None:
    deps = [src, HEADER, Path(__file__).resolve()]
    if _up_to_date(target, deps):
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    cmd = [gcc, *COMMON_FLAGS, *VARIANTS[variant], "-I", str(PROBE_DIR),
           "-o", str(tmp), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(
            f"building {target.name} failed (exit {proc.returncode}):\n"
            f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
        )
    os.replace(tmp, target)  # atomic: concurrent builders never see half a binary


def build_all(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Build every C probe in both variants into out_dir; return id -> path."""
    gcc = _gcc()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs: dict[str, tuple[Path, str, Path]] = {}
    for src in sources():
        for variant in VARIANTS:
            probe_id = f"{src.stem}.{variant}"
            jobs[probe_id] = (src, variant, out / probe_id)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = [pool.submit(_compile, gcc, s, v, t) for s, v, t in jobs.values()]
        errors = []
        for fut in futures:
            try:
                fut.result()
            except BuildError as exc:
                errors.append(str(exc))
    if errors:
        raise BuildError("\n\n".join(errors))
    return {probe_id: target for probe_id, (_, _, target) in jobs.items()}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    try:
        built = build_all(argv[1])
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    for probe_id, path in built.items():
        print(f"{probe_id}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
