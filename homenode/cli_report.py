"""What `qrun` itself says: its own failures in one line, and how the job ended."""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

from qrun.homenode import exitcodes

if TYPE_CHECKING:  # (imported late: the home server's modules load while the stub starts)
    from qrun.homenode.server_outcome import Outcome


def fail(msg: str, code: int) -> int:
    sys.stderr.write(f"qrun: {msg}\n")
    sys.stderr.flush()
    return code


def report(o: Outcome, verbose: bool, argv0: str) -> int:
    st = o.status
    if st.get("error"):  # the job never ran (e.g. the host forbids ptrace): that, not its status
        sys.stderr.write(f"qrun: {st['error']}\n")
        code = exitcodes.BY_KIND.get(str(st.get("error_kind")), exitcodes.LAUNCH)
    elif "signal" in st:
        sig = int(st["signal"])
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig != signal.SIGPIPE:  # its reader went away: shells say nothing either
            sys.stderr.write(f"qrun: job killed by signal {sig} ({name})"
                             f"{' (core dumped)' if st.get('core') else ''}\n")
        code = 128 + sig
    else:
        code = int(st.get("code", 1))
        if st.get("spawn_errno"):
            what = "command not found" if code == 127 else os.strerror(int(st["spawn_errno"]))
            sys.stderr.write(f"qrun: {argv0}: {what}\n")
    if verbose:
        u = o.usage
        sys.stderr.write(f"qrun: host={o.host} status={code} wall={o.wall:.3f}s "
                         f"cpu={float(u.get('utime', 0)) + float(u.get('stime', 0)):.3f}s "
                         f"maxrss={int(u.get('maxrss_kb', 0))}KiB{_data_path(u)}\n")
    return code


def _data_path(u: dict[str, float]) -> str:
    """A transparent job's counts (wire.DATA_PATH_COUNTS)."""
    from qrun.syscalls.wire import DATA_PATH_COUNTS
    out = "".join(f" {k.replace('_', '-')}={int(u[k])}" for k in DATA_PATH_COUNTS if k in u)
    return out + (f" reconnects={int(u['reconnects'])}" if u.get("reconnects") else "")
