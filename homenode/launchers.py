"""Where the stub runs. A launcher only decides how to start `<stub command>` on some host
and where the home server listens; the stub always connects back (Open MPI's split of
"where" from "how").
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

STUB_COMMAND = [sys.executable, "-m", "remote.stub"]

class LaunchError(Exception):
    pass


@dataclass
class Launch:
    argv: list[str]
    bind: str                 # where the home server listens
    describe: str
    cleanup: list[str] = field(default_factory=list)


def _ipc_dir() -> str:
    return tempfile.mkdtemp(prefix="qrun-")


def local(job: str, stub: list[str]) -> Launch:
    d = _ipc_dir()
    return Launch(stub, f"ipc://{d}/home.sock", "local", [d])


def sandbox_support() -> tuple[bool, str]:
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False, "the sandbox host needs util-linux's unshare and mount"
    if os.geteuid() == 0:
        return True, ""
    try:
        with open("/proc/sys/kernel/unprivileged_userns_clone") as f:
            if f.read().strip() == "0":
                return False, ("the sandbox host needs root or unprivileged user namespaces "
                               "(kernel.unprivileged_userns_clone is 0)")
    except OSError:
        pass
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if f.read().strip() == "0":
                return False, "the sandbox host needs user namespaces (user.max_user_namespaces is 0)"
    except OSError:
        pass
    return True, ""


def sandbox(job: str, stub: list[str], hide: list[str]) -> Launch:
    ok, why = sandbox_support()
    if not ok:
        raise LaunchError(why)
    d = _ipc_dir()
    # Fresh namespaces; the stub itself then names the host, empties /tmp and /dev/shm and
    # hides the user's home and submit directories, once it has connected home through
    # the ipc socket (the new network namespace has no route anywhere else).
    ns = ["unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--fork", "--kill-child",
          "--mount-proc", "--propagation", "private"]
    if os.geteuid() != 0:
        ns[1:1] = ["--user", "--map-root-user"]
    hides = [a for p in hide for a in ("--hide", p)]
    argv = ns + stub + ["--hostname", "sandbox", "--private-tmp"] + hides
    return Launch(argv, f"ipc://{d}/home.sock", "sandbox", [d])


def via(job: str, stub: list[str], prefix: str, home_addr: str) -> Launch:
    words = shlex.split(prefix)
    if not words:
        raise LaunchError("--via needs a command prefix, e.g. --via 'ssh node1'")
    host = home_addr
    if host.startswith("tcp://"):
        host = host[len("tcp://"):]
    bind = f"tcp://{host}" if ":" in host.rsplit("]", 1)[-1] else f"tcp://{host}:0"
    return Launch(words + stub, bind, " ".join(words))


def hidden_paths(cwd: str) -> list[str]:
    """What the sandbox hides: the user's home directory and the submit directory."""
    out = []
    home = os.path.expanduser("~")
    for p in (home, cwd):
        if p and p != "/" and not p.startswith("/tmp") and p not in out:
            out.append(p)
    return out
