"""Where qrun keeps this user's state at home, and who the user is."""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def state_dir() -> Path:
    """$XDG_STATE_HOME/qrun (default ~/.local/state/qrun): the job records, the daemon's
    lock and socket, the placement ledger. It must be on a local disk (SQLite's WAL)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "qrun"


def user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
