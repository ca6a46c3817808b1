"""Path policy: which absolute paths the job sees from home and which stay local.

Longest matching prefix wins; anything not matched routes home (so /tmp, /etc, home
directories and the submit directory are all the home node's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# The execution host's own kernel interfaces and system software tree.
DEFAULT_LOCAL = ("/proc", "/sys", "/dev", "/usr", "/bin", "/sbin", "/lib", "/lib32",
                 "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/ld.so.preload")
# Exceptions inside local trees that would leak the execution host's identity.
DEFAULT_HOME = ("/proc/sys/kernel/hostname", "/proc/sys/kernel/domainname")


def normalize(path: str) -> str:
    """Lexical normalization of an absolute path ('..' is not resolved through symlinks)."""
    p = os.path.normpath(path)
    return "/" + p.lstrip("/") if p.startswith("//") else p


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/") or prefix == "/"


@dataclass
class PathPolicy:
    local: list[str] = field(default_factory=lambda: list(DEFAULT_LOCAL))
    home: list[str] = field(default_factory=lambda: list(DEFAULT_HOME))

    def routes_home(self, abspath: str) -> bool:
        path = normalize(abspath)
        best, home = -1, True
        for prefix in self.local:
            if _under(path, prefix) and len(prefix) > best:
                best, home = len(prefix), False
        for prefix in self.home:
            if _under(path, prefix) and len(prefix) >= best:
                best, home = len(prefix), True
        return home

    def to_wire(self) -> dict[str, list[str]]:
        return {"local": self.local, "home": self.home}

    @classmethod
    def from_wire(cls, d: dict[str, list[str]]) -> PathPolicy:
        return cls(local=[normalize(p) for p in d["local"]], home=[normalize(p) for p in d["home"]])

    def with_overrides(self, local: list[str], home: list[str]) -> PathPolicy:
        lo = [normalize(os.path.abspath(p)) for p in local]
        ho = [normalize(os.path.abspath(p)) for p in home]
        # A user's --local beats a default --home at the same path and vice versa.
        return PathPolicy(local=[p for p in self.local if p not in ho] + lo,
                          home=[p for p in self.home if p not in lo] + ho)
