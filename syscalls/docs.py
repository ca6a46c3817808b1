"""Derive the syscall compatibility page (docs/syscalls.md) from the syscall table.

    python -m qrun.syscalls.docs > docs/syscalls.md

The page is computed from `syscalls.table.TABLE` alone, so it cannot drift from what the
seccomp filter, the stub and the home node do with each entry. Output is deterministic:
the same table always gives the same bytes.
"""

from __future__ import annotations

from collections import Counter

from qrun.syscalls.model import TAGS, Level, Route, Syscall
from qrun.syscalls.table import TABLE

# The order sections appear in (the vocabulary's own order).
SECTION_ORDER = TAGS

# An entry carrying several tags is listed once, under the most specific of them:
# the first of its tags in this order. `file` is the broadest tag (every fd call on a
# home file is also a file call), so it comes last.
PRECEDENCE = ("desc", "process", "signal", "identity", "creds", "system", "memory",
              "network", "ipc", "time", "file")

SECTION_TITLES = {
    "file": "file — paths, cwd, exec, metadata",
    "desc": "desc — calls on file descriptors",
    "process": "process — processes, exec, waiting",
    "signal": "signal — sending signals",
    "identity": "identity — pids, ids, host name",
    "memory": "memory",
    "network": "network",
    "ipc": "ipc",
    "time": "time",
    "system": "system — host administration",
    "creds": "creds — changing credentials",
}

LEVEL_ORDER = (Level.FULL, Level.PARTIAL, Level.DENIED, Level.LOCAL)
ROUTE_ORDER = (Route.BY_PATH, Route.BY_FD, Route.IRREGULAR, Route.IDENTITY, Route.DENY, Route.LOCAL)

LEVEL_MEANING = {
    Level.FULL: "behaves as it would natively at home",
    Level.PARTIAL: "works, with the restriction given in its note",
    Level.DENIED: "refused with the errno shown and one warning line on stderr",
    Level.LOCAL: "not trapped: runs on the execution host as is",
}

ROUTE_MEANING = {
    Route.BY_PATH: "forwarded home when its path routes home (see the path policy), else run locally",
    Route.BY_FD: "forwarded home when its fd is a home file, else run locally",
    Route.IRREGULAR: "handled by the stub's code of the name shown (opens, exec, cwd, fork, wait, kill, ...)",
    Route.IDENTITY: "answered by the stub from the job's home identity",
    Route.DENY: "refused with the errno shown",
    Route.LOCAL: "never trapped by the seccomp filter",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _nr(n: int | None) -> str:
    return "—" if n is None else str(n)


def section_of(sc: Syscall) -> str:
    """The one family section a trapped entry is listed under."""
    for tag in PRECEDENCE:
        if tag in sc.tags:
            return tag
    return "other"


def _route(sc: Syscall) -> str:
    if sc.route is Route.DENY:
        return f"deny ({sc.errno})"
    if sc.route in (Route.IRREGULAR, Route.IDENTITY) and sc.handler:
        return f"{sc.route.value}: `{sc.handler}`"
    return sc.route.value


def _idempotent(sc: Syscall) -> str:
    if sc.route in (Route.BY_PATH, Route.BY_FD):
        return "yes" if sc.idempotent else "no"
    if sc.route is Route.IRREGULAR and not sc.idempotent:
        return "no"
    return "—"


def _note(sc: Syscall) -> str:
    parts = []
    if sc.home_as:
        parts.append(f"executed at home as `{sc.home_as}`")
    if sc.copy_local:
        parts.append("runs locally on a read-only copy")
    if sc.note:
        parts.append(sc.note)
    return _cell("; ".join(parts))


def _summary(entries: list[Syscall]) -> list[str]:
    levels = Counter(s.level for s in entries)
    routes = Counter(s.route for s in entries)
    trapped = sum(1 for s in entries if s.trapped)
    lines = [
        "## Summary",
        "",
        f"{len(entries)} syscalls in the table: {trapped} trapped by the seccomp filter, "
        f"{len(entries) - trapped} left untrapped.",
        "",
        "| level | syscalls | meaning |",
        "|---|---:|---|",
    ]
    for lv in LEVEL_ORDER:
        lines.append(f"| {lv.value} | {levels.get(lv, 0)} | {LEVEL_MEANING[lv]} |")
    lines += ["", "| route | syscalls | meaning |", "|---|---:|---|"]
    for rt in ROUTE_ORDER:
        lines.append(f"| {rt.value} | {routes.get(rt, 0)} | {ROUTE_MEANING[rt]} |")
    return lines


def _family(tag: str, entries: list[Syscall]) -> list[str]:
    title = SECTION_TITLES.get(tag, tag)
    lines = [
        f"## {title}",
        "",
        "| syscall | x86_64 nr | aarch64 nr | route | level | idempotent | note |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for sc in entries:
        lines.append(f"| `{sc.name}` | {_nr(sc.x86_64)} | {_nr(sc.aarch64)} | {_route(sc)} | "
                     f"{sc.level.value} | {_idempotent(sc)} | {_note(sc)} |")
    return lines


def render(table: list[Syscall] | None = None) -> str:
    """The Markdown compatibility page for `table` (default: the syscall table)."""
    entries = list(TABLE if table is None else table)
    out = [
        "# Syscall support",
        "",
        "<!-- Generated by `python -m qrun.syscalls.docs` from syscalls/table.py; do not edit by hand. -->",
        "",
        "Which system calls `qrun --transparent` traps, where each one is executed, and how",
        "completely it is supported. The page is generated from the syscall table, the same",
        "data the seccomp filter, the stub's argument marshalling and the home node's executor",
        "are derived from. See the [user guide](guide.md) for what the job sees and the",
        "[architecture](architecture.md) for how a trapped call is handled.",
        "",
        "- A syscall number in neither column of the table (a call newer than the table) is",
        "  trapped and fails with ENOSYS and one warning line.",
        "- Calls through another ABI on the same kernel (i386 `int 0x80`, x86_64's x32) are",
        "  refused with ENOSYS by the filter itself.",
        "- **idempotent** says whether executing the call twice at home would be harmless. It is",
        "  shown for the calls the generic executor forwards, and as `no` for the irregular",
        "  calls the table marks as not idempotent. Whatever it says, a resent request is",
        "  answered from the home node's reply cache and never executed twice.",
        "- Each trapped call is listed once, under the most specific of its family tags",
        "  (an fd call on a home file is tagged both `desc` and `file` and is listed under",
        "  `desc`).",
        "",
    ]
    out += _summary(entries)
    trapped = [s for s in entries if s.trapped]
    sections = [t for t in SECTION_ORDER if any(section_of(s) == t for s in trapped)]
    if any(section_of(s) == "other" for s in trapped):
        sections.append("other")
    for tag in sections:
        out.append("")
        out += _family(tag, [s for s in trapped if section_of(s) == tag])
    local = sorted(s.name for s in entries if not s.trapped)
    out += [
        "",
        "## Untrapped (local)",
        "",
        f"These {len(local)} syscalls are never trapped: they run on the execution host "
        "exactly as they would without qrun (memory management, sockets, futexes, timers, "
        "signal masks and handlers, fd-table operations such as `dup`, ...).",
        "",
        ", ".join(f"`{n}`" for n in local),
        "",
    ]
    return "\n".join(out)


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
