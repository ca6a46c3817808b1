"""Where the stub runs. A launcher only decides how to start `<stub command>` on some host
and where the home server listens; the stub always connects back (Open MPI's split of
"where" from "how").
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from qrun.homenode import exitcodes

STUB_COMMAND = [sys.executable, "-P", "-m", "qrun.remote.stub"]

class LaunchError(Exception):
    def __init__(self, message: str, code: int = exitcodes.LAUNCH) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Launch:
    argv: list[str]
    bind: str                 # where the home server listens
    describe: str
    cleanup: list[str] = field(default_factory=list)
    # Turns the launcher's last stderr lines (when it died before the stub connected) into
    # one clear message and a distinct exit status.
    classify: Callable[[str], tuple[str, int]] | None = None


def _last_line(tail: str) -> str:
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def classify_ssh(host: str) -> Callable[[str], tuple[str, int]]:
    def classify(tail: str) -> tuple[str, int]:
        low = tail.lower()
        if any(w in low for w in ("permission denied", "host key verification failed",
                                  "not allowed", "too many authentication failures")):
            return f"{host} refused the ssh connection ({_last_line(tail)})", exitcodes.REFUSED
        if any(w in low for w in ("connection refused", "no route to host", "timed out",
                                  "could not resolve", "network is unreachable",
                                  "connection closed by", "name or service not known")):
            return f"cannot reach {host} ({_last_line(tail)})", exitcodes.UNREACHABLE
        return f"could not start the stub on {host} through ssh ({_last_line(tail)})", exitcodes.LAUNCH
    return classify


def classify_slurm(tail: str) -> tuple[str, int]:
    low = tail.lower()
    if any(w in low for w in ("invalid node name", "requested node configuration is not available")):
        return f"Slurm has no such node ({_last_line(tail)})", exitcodes.NO_HOST
    if any(w in low for w in ("unable to contact slurm controller", "unable to allocate resources",
                              "connection refused", "slurm_load", "zero bytes were transmitted",
                              "socket timed out", "communication connection failure")):
        return f"Slurm is not available ({_last_line(tail)})", exitcodes.SCHEDULER
    return f"srun could not start the stub ({_last_line(tail)})", exitcodes.SCHEDULER


def route_address(target: str, port: int = 22) -> str:
    """This machine's address on the route to `target` (a UDP connect sends nothing)."""
    try:
        infos = socket.getaddrinfo(target, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise LaunchError(f"cannot resolve {target}: {exc.strerror}", exitcodes.UNREACHABLE) from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
        except OSError as exc:
            raise LaunchError(f"cannot reach {target}: {exc.strerror}", exitcodes.UNREACHABLE) from None
        return str(s.getsockname()[0])


def _tcp_bind(addr: str) -> str:
    return f"tcp://[{addr}]:0" if ":" in addr else f"tcp://{addr}:0"


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


def ssh(job: str, stub: list[str], host: str, target: str, home_addr: str,
        ssh_command: str = "ssh") -> Launch:
    """OpenSSH, multiplexed: the first job opens a master connection that later jobs reuse
    for ControlPersist seconds, so starting a job costs one round trip instead of a
    key exchange. The user's own ssh config and keys apply."""
    cm_dir = os.path.join(os.path.expanduser("~"), ".cache", "qrun")
    os.makedirs(cm_dir, mode=0o700, exist_ok=True)
    words = shlex.split(ssh_command) + [
        "-o", "BatchMode=yes", "-o", "ControlMaster=auto", "-o", "ControlPersist=60",
        "-o", f"ControlPath={cm_dir}/ssh-%C", target, "--", shlex.join(stub)]
    addr = home_addr or route_address(target.rpartition("@")[2])
    return Launch(words, _tcp_bind(addr), host, classify=classify_ssh(host))


def slurm(job: str, stub: list[str], host: str | None, home_addr: str, partition: str = "",
          srun_command: str = "srun", exclude: list[str] | None = None) -> Launch:
    """srun starts the stub where Slurm decides (or on `host`); inside an allocation it
    uses that allocation. The stub reports which node it landed on."""
    words = shlex.split(srun_command) + ["-N1", "-n1", "--quiet", f"--job-name=qrun-{job[:6]}"]
    if host:
        words.append(f"--nodelist={host}")
    if partition:
        words.append(f"--partition={partition}")
    if exclude:
        words.append(f"--exclude={','.join(exclude)}")
    if not home_addr:
        raise LaunchError("the slurm launcher needs to know where stubs connect back to: set "
                          "home_addr in the cluster file or pass --home-addr", exitcodes.USAGE)
    addr = home_addr
    return Launch(words + stub, _tcp_bind(addr), host or "slurm", classify=classify_slurm)
