"""A process named by its pid and its start time (pids are reused), as the job records
and the placement ledger keep them. Light on purpose: `qrun` imports it at start-up."""

from __future__ import annotations


def process_start(pid: int) -> str:
    """A live process's start time (clock ticks since boot), which with its pid names it
    uniquely: pids are reused. "" for no process, or a zombie (it has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return "" if len(fields) < 20 or fields[0] in ("Z", "X") else fields[19]


def alive(pid: int | None, start: str) -> bool:
    return bool(pid) and start != "" and process_start(pid or 0) == start
