"""What the benchmark ran on: hardware, system and tool versions."""

from __future__ import annotations

import os
import platform
import re
import shutil
from pathlib import Path

from .commands import run

TOOL_VERSIONS = {"gcc": ["gcc", "-dumpfullversion"], "strace": ["strace", "-V"], "proot": ["proot", "-V"],
                 "sshfs": ["sshfs", "--version"]}


def _system(info: dict[str, object]) -> None:
    """CPU model, memory and distribution, as far as /proc and /etc say."""
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                info["cpu"] = ln.split(":", 1)[1].strip()
                break
        for ln in Path("/proc/meminfo").read_text().splitlines():
            if ln.startswith("MemTotal:"):
                info["mem_gib"] = round(int(ln.split()[1]) / 2**20, 1)
                break
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)', Path("/etc/os-release").read_text(), re.M)
        if m:
            info["os"] = m.group(1)
    except OSError:
        pass


def _tools(info: dict[str, object]) -> None:
    for name, cmd in TOOL_VERSIONS.items():
        if shutil.which(cmd[0]):
            p = run(cmd, 10)
            m = re.search(r"\d+\.\d+(\.\d+)?", p.out + p.err)
            if m:
                info[name] = m.group(0)


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {"nproc": os.cpu_count(), "kernel": platform.release(),
                               "arch": platform.machine(), "python": platform.python_version()}
    _system(info)
    _tools(info)
    return info


def machine_line(info: dict[str, object]) -> str:
    parts = [f"nproc {info.get('nproc')}", f"kernel {info.get('kernel')} {info.get('arch')}"]
    for key in ("cpu", "os"):
        if key in info:
            parts.append(str(info[key]))
    if "mem_gib" in info:
        parts.append(f"{info['mem_gib']} GiB RAM")
    tools = ", ".join(f"{k} {info[k]}" for k in ("python", "gcc", "strace", "proot", "sshfs") if k in info)
    return "machine: " + "; ".join(parts) + "; " + tools
