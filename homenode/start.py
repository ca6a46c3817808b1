"""The `qrun` command's entry point: the command line module is loaded behind a Ctrl-C
guard, so that a Ctrl-C while Python loads it ends qrun with one line, not a traceback."""

from __future__ import annotations

import sys


def entry() -> None:
    try:
        from qrun.homenode.cli import entry as run
    except KeyboardInterrupt:
        sys.stderr.write("qrun: interrupted\n")
        sys.exit(130)
    run()
