"""How the job's /proc and /dev/fd paths are read: which process and fd they name.

Pure parsing; the tracer decides what each one means for the job (a home file behind an
fd, a home pid to translate, a link whose home value it knows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PROC = re.compile(r"^/proc/(self|thread-self|\d+)(?:/task/(\d+))?(/.*)?$")
_DEV_FD = re.compile(r"^/dev/fd/(\d+)$")
STD_STREAMS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


@dataclass(frozen=True)
class ProcPath:
    who: str            # "self", "thread-self" or a pid as the job wrote it
    task: int | None    # /proc/X/task/TID/...
    rest: str           # what follows the process part: "", "/exe", "/fd/3", ...

    @property
    def fd(self) -> int | None:
        """N for .../fd/N."""
        m = re.fullmatch(r"/fd/(\d+)", self.rest)
        return int(m.group(1)) if m else None


def parse(path: str, follow: bool) -> ProcPath | None:
    """A normalized absolute path that names a process under /proc (or an fd through
    /dev/fd and /dev/std*, which are links into /proc/self/fd: only when followed)."""
    if follow:
        if path in STD_STREAMS:
            return ProcPath("self", None, f"/fd/{STD_STREAMS[path]}")
        m = _DEV_FD.match(path)
        if m:
            return ProcPath("self", None, f"/fd/{m.group(1)}")
    m = _PROC.match(path)
    if not m:
        return None
    return ProcPath(m.group(1), int(m.group(2)) if m.group(2) else None, m.group(3) or "")


# Where the C wait loop must not decide on its own (it would run them locally untouched):
# prefixes, and prefixes that count only when a digit follows (/proc/<pid>).
ASK_TRACER = ("/proc/self", "/proc/thread-self", "/dev/fd", "/dev/stdin", "/dev/stdout", "/dev/stderr")
ASK_TRACER_NUMBERED = ("/proc/",)
