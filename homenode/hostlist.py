"""Slurm-style host lists: `node[1-3,7]`, `a,b[01-02]`, nested commas inside brackets."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


class HostListError(ValueError):
    pass


def _split_top(expr: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in expr:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HostListError(f"unbalanced ']' in {expr!r}")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise HostListError(f"unbalanced '[' in {expr!r}")
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _expand_one(item: str) -> list[str]:
    m = re.match(r"^([^\[\]]*)\[([^\[\]]+)\](.*)$", item)
    if not m:
        if "[" in item or "]" in item:
            raise HostListError(f"bad host list item {item!r}")
        return [item]
    prefix, body, rest = m.groups()
    out = []
    for rng in body.split(","):
        r = _RANGE.match(rng.strip())
        if not r:
            raise HostListError(f"bad range {rng!r} in {item!r}")
        lo, hi = r.group(1), r.group(2) or r.group(1)
        if int(hi) < int(lo):
            raise HostListError(f"descending range {rng!r} in {item!r}")
        if int(hi) - int(lo) > 100000:
            raise HostListError(f"range {rng!r} is too large")
        width = len(lo) if lo.startswith("0") else 0
        for n in range(int(lo), int(hi) + 1):
            for tail in _expand_one(rest):
                out.append(f"{prefix}{str(n).zfill(width)}{tail}")
    return out


def expand(expr: str) -> list[str]:
    """`node[1-3,7]` -> node1 node2 node3 node7 (order kept, duplicates dropped)."""
    seen: dict[str, None] = {}
    for item in _split_top(expr):
        for name in _expand_one(item):
            seen[name] = None
    return list(seen)
