"""Thin C layer (cffi API mode): process spawning, ptrace register transfer, tracee memory.

Everything above this package talks to the kernel through these few calls; nothing here
knows about syscall routing or the wire protocol.
"""

from __future__ import annotations

try:
    from qrun.native._qrun_native import ffi, lib
except ImportError as exc:  # pragma: no cover - only when the extension was never built
    raise ImportError(
        "qrun's native extension is not built; run ./install.sh again "
        "(needs a C compiler and cffi)"
    ) from exc

__all__ = ["ffi", "lib"]
