"""Where the stub runs. A launcher only decides how to start `<stub command>` on some host
and where the home server listens; the stub always connects back (Open MPI's split of
"where" from "how").
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from qrun.homenode import exitcodes
from qrun.homenode.userdirs import user_name

STUB_COMMAND = [sys.executable, "-P", "-m", "qrun.remote.stub"]


class LaunchError(Exception):
    def __init__(self, message: str, code: int = exitcodes.LAUNCH) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class SlurmTools:
    """How Slurm's commands are run: as srun_command runs srun (`ssh login /opt/slurm/bin/srun`
    gives prefix ["ssh", "login"] and bindir "/opt/slurm/bin")."""
    prefix: list[str] = field(default_factory=list)
    bindir: str = ""   # "": found on PATH

    @classmethod
    def of(cls, srun_words: list[str]) -> SlurmTools:
        head, _, tail = srun_words[-1].rpartition("/")
        return cls(srun_words[:-1], head if tail == "srun" else "")

    def argv(self, tool: str) -> list[str]:
        return [*self.prefix, f"{self.bindir}/{tool}" if self.bindir else tool]

    def run(self, tool: str, args: list[str],
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """One of Slurm's commands, its output captured (OSError, TimeoutExpired after 60 s)."""
        return subprocess.run([*self.argv(tool), *args], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60, env=env, cwd="/")

    def to_wire(self) -> list[str]:
        return [*self.prefix, self.bindir]

    @classmethod
    def from_wire(cls, words: object) -> SlurmTools:
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            return cls()
        return cls(words[:-1], words[-1])


@dataclass
class Launch:
    argv: list[str]
    bind: str                 # where the home server listens
    describe: str
    cleanup: list[str] = field(default_factory=list)
    # Turns the launcher's last stderr lines (when it died before the stub connected) into
    # one clear message and a distinct exit status.
    classify: Callable[[str], tuple[str, int]] | None = None
    # What qrun is waiting for while the launcher runs and the stub has not connected yet,
    # for a human: completes "waiting for ...", e.g. "Slurm to start the job (squeue -n
    # qrun-0123456789ab)". Empty: nothing worth saying (the stub starts at once).
    waiting_for: str = ""
    # A command (argv, run without a shell) that cancels the job while it has not started,
    # e.g. ["scancel", "--name=qrun-0123456789ab", "--user=alice"] for Slurm, where killing
    # srun can leave a pending job in the queue. None: killing the launcher is enough.
    cancel: list[str] | None = None
    # What the chosen host's jobs may reach at home (its home_roots in the cluster file).
    home_roots: list[str] = field(default_factory=list)
    # Where the stub keeps the job's local copies there, and how much room they may take
    # (the host's cache_dir and cache_limit; "" and 0: the stub's defaults).
    cache_dir: str = ""
    cache_limit: int = 0
    kind: str = ""   # which launcher: local, sandbox, via, ssh or slurm (for the job records)
    name: str = ""   # the job's name there, if it has one (Slurm's job name)
    # Slurm: how sbatch would queue the same job (the command and its options, without
    # --array, --dependency and the script), the stub command the script runs, and where
    # Slurm's commands are.
    sbatch: list[str] = field(default_factory=list)
    stub: list[str] = field(default_factory=list)
    slurm_tools: SlurmTools | None = None
    # A stub that Slurm started and that phoned the daemon (sbatch_script): its public key,
    # and who is told where the home server listens, in place of a bootstrap line.
    client_key: bytes = b""
    publish: Callable[[str, bytes, str], None] | None = None


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
    return Launch(stub, f"ipc://{d}/home.sock", "local", [d], waiting_for="the stub to start on this machine",
                  kind="local")


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
    return Launch(argv, f"ipc://{d}/home.sock", "sandbox", [d],
                  waiting_for="the stub to start in the sandbox", kind="sandbox")


def via(job: str, stub: list[str], prefix: str, home_addr: str) -> Launch:
    try:
        words = shlex.split(prefix)
    except ValueError as exc:
        raise LaunchError(f"--via {prefix!r}: cannot split it like a command line ({exc})",
                          exitcodes.USAGE) from None
    if not words:
        raise LaunchError("--via needs a command prefix, e.g. --via 'ssh node1'", exitcodes.USAGE)
    host = home_addr
    if host.startswith("tcp://"):
        host = host[len("tcp://"):]
    bind = f"tcp://{host}" if ":" in host.rsplit("]", 1)[-1] else f"tcp://{host}:0"
    describe = " ".join(words)
    return Launch(words + stub, bind, describe, waiting_for=f"`{describe}` to start the stub", kind="via")


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
    """OpenSSH, multiplexed: a master connection to the host, kept for ControlPersist
    seconds after its last job, carries every job, so starting one costs a round trip
    instead of a key exchange. The user's own ssh config and keys apply.

    The master is opened by qrun itself (`ssh_master`), one process per host at a time,
    before the job's own ssh runs: concurrent first jobs would otherwise all race to
    create the control socket, and the losers print `ControlSocket ... already exists,
    disabling multiplexing` and pay a key exchange each."""
    cm_dir = os.path.join(os.path.expanduser("~"), ".cache", "qrun")
    try:
        os.makedirs(cm_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise LaunchError(f"cannot create {cm_dir} for ssh's control sockets: {exc.strerror}",
                          exitcodes.USAGE) from None
    try:
        base = shlex.split(ssh_command)
    except ValueError as exc:
        raise LaunchError(f"ssh_command cannot be split like a command line ({exc})",
                          exitcodes.USAGE) from None
    addr = home_addr or route_address(target.rpartition("@")[2])
    control = f"ControlPath={cm_dir}/ssh-%C"
    words = base + ["-o", "BatchMode=yes", "-o", "ControlMaster=auto", "-o", "ControlPersist=60",
                    "-o", control, target, "--", shlex.join(stub)]
    if not any(w.lower().startswith(("controlmaster", "controlpath")) for w in base[1:]):
        ssh_master(base, target, host, control, cm_dir)
    return Launch(words, _tcp_bind(addr), host, classify=classify_ssh(host),
                  waiting_for=f"ssh to start the stub on {host}", kind="ssh")


MASTER_TIMEOUT = 60.0   # as long as a stub gets to connect back (HomeServer.connect_timeout)


def ssh_master(base: list[str], target: str, host: str, control: str, cm_dir: str) -> None:
    """Make sure a master connection to `target` is up, opening it if needed under a
    per-host lock, so that concurrent jobs wait for one master instead of racing. A
    failure to log in is classified as the job's own ssh failure would be. The socket of
    a master qrun opened is noted (`master-KEY`): while it answers, no `ssh -O check`."""
    import xxhash  # (here: only ssh needs it)
    key = xxhash.xxh3_128_hexdigest("\0".join(base + [target]).encode())[:20]
    noted = os.path.join(cm_dir, f"master-{key}")
    if _answers(noted):
        return
    opts = ["-o", "BatchMode=yes", "-o", control]
    check = base + opts + ["-O", "check", target]
    if _quiet(check) == 0:
        return
    with open(os.path.join(cm_dir, f"lock-{key}"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _quiet(check) == 0:
            return  # another qrun opened it while we waited
        master = base + ["-o", "BatchMode=yes", "-o", "ControlMaster=yes", "-o", "ControlPersist=60",
                         "-o", control, "-f", "-N", target]
        # A file, not a pipe: the master stays in the background with our stderr.
        with tempfile.TemporaryFile() as err:
            try:
                rc = subprocess.run(master, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, timeout=MASTER_TIMEOUT).returncode
            except OSError as exc:
                raise LaunchError(f"cannot start the launcher `{base[0]}`: {exc.strerror}") from None
            except subprocess.TimeoutExpired:
                raise LaunchError(f"cannot reach {host} (ssh did not log in within {MASTER_TIMEOUT:.0f} s)",
                                  exitcodes.UNREACHABLE) from None
            err.seek(0)
            tail = err.read(1 << 16).decode(errors="replace")
    if rc != 0:
        sys.stderr.write(tail)
        sys.stderr.flush()
        raise LaunchError(*classify_ssh(host)(tail))
    _note_socket(base + opts + ["-G", target], noted)


def _answers(noted: str) -> bool:
    """Whether the master socket named in file `noted` accepts a connection (its master
    is up: ssh's own check costs a process start, about 15 ms of every job's start)."""
    try:
        with open(noted, encoding="utf-8") as f:
            path = f.read(4096)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
        return True
    except (OSError, ValueError):
        return False


def _note_socket(show_config: list[str], noted: str) -> None:
    """Note where the master's socket is: `ssh -G` prints its ControlPath expanded (%C)."""
    try:
        out = subprocess.run(show_config, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return
    paths = [ln.split(None, 1)[1] for ln in out.splitlines() if ln.lower().startswith("controlpath ")]
    if paths:
        tmp = f"{noted}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(paths[0].strip())
        os.replace(tmp, noted)


def _quiet(argv: list[str]) -> int:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=30).returncode
    except (OSError, subprocess.TimeoutExpired):
        return -1


def slurm(job: str, stub: list[str], host: str | None, home_addr: str, partition: str = "",
          srun_command: str = "srun", exclude: list[str] | None = None) -> Launch:
    """srun starts the stub where Slurm decides (or on `host`); inside an allocation it
    uses that allocation. The stub reports which node it landed on.

    srun runs the stub in `/`, which exists on every node: the job's own working
    directory is set up by the stub (it may not exist on the node at all), and srun's
    default, the submit directory, would make slurmstepd complain on every job."""
    name = f"qrun-{job}"
    try:
        words = shlex.split(srun_command)
    except ValueError as exc:
        raise LaunchError(f"srun_command cannot be split like a command line ({exc})",
                          exitcodes.USAGE) from None
    if not words:
        raise LaunchError("srun_command is empty", exitcodes.USAGE)
    where = [f"--job-name={name}", "--chdir=/"]
    if host:
        where.append(f"--nodelist={host}")
    if partition:
        where.append(f"--partition={partition}")
    if exclude:
        where.append(f"--exclude={','.join(exclude)}")
    tools = SlurmTools.of(words)
    batch = tools.argv("sbatch") + ["--parsable", "-N1", "-n1", "--no-requeue", "--output=/dev/null", *where]
    words += ["-N1", "-n1", "--quiet", *where]
    allocation = os.environ.get("SLURM_JOB_ID", "")
    if allocation:
        # Inside salloc or an sbatch script the stub runs as a step of this allocation and
        # home is this node, not the submit host that home_addr usually names.
        addr = allocation_address(home_addr)
        waiting = f"Slurm to start a step of allocation {allocation} (squeue -s -j {allocation})"
        cancel = None  # killing srun cancels a step that has not started
    elif not home_addr:
        raise LaunchError("the slurm launcher needs to know where stubs connect back to: set "
                          "home_addr in the cluster file or pass --home-addr", exitcodes.USAGE)
    else:
        addr = home_addr
        waiting = f"Slurm to start the job (squeue -n {name})"
        cancel = ["scancel", f"--name={name}", f"--user={user_name()}"]
    return Launch(words + stub, _tcp_bind(addr), host or "slurm", classify=classify_slurm,
                  waiting_for=waiting, cancel=cancel, kind="slurm", name=name, sbatch=batch, stub=stub,
                  slurm_tools=tools)


BOOTSTRAP_END = "QRUN_BOOTSTRAP_END"


def sbatch_script(stub: list[str], bootstrap: dict[str, object]) -> str:
    """The batch script of a job Slurm queues: the stub, with its bootstrap line as its
    stdin (a quoted here-document: nothing in it is expanded). The stub then asks the
    daemon at home which home server serves its job (and, for an array, which task it is:
    SLURM_ARRAY_TASK_ID), and exits with the job's status, which Slurm's afterok reads."""
    line = json.dumps(bootstrap)
    assert BOOTSTRAP_END not in line and "\n" not in line
    return f"#!/bin/sh\nexec {shlex.join(stub)} <<'{BOOTSTRAP_END}'\n{line}\n{BOOTSTRAP_END}\n"


WATCH_EVERY = 10.0   # seconds between looks at Slurm's queue for a started stub's job


def claimed(launch: Launch, slurm_id: str, client_key: bytes,
            publish: Callable[[str, bytes, str], None]) -> Launch:
    """The launch of a job whose stub Slurm has started and which phoned the daemon: no
    launcher to start, only a watch of the Slurm job (python -m qrun.homenode.slurmwatch),
    which ends when Slurm ends it: the stub is then gone, whatever it managed to say."""
    tools = launch.slurm_tools or SlurmTools()
    watch = [sys.executable, "-P", "-m", "qrun.homenode.slurmwatch", slurm_id, str(WATCH_EVERY),
             *tools.argv("squeue")]

    def classify(tail: str) -> tuple[str, int]:
        return f"Slurm ended job {slurm_id} before its stub reported ({_last_line(tail)})", exitcodes.LOST
    return Launch(watch, launch.bind, launch.describe, launch.cleanup, classify=classify,
                  waiting_for=f"the stub of Slurm job {slurm_id} to call", kind="slurm", name=launch.name,
                  home_roots=launch.home_roots, cache_dir=launch.cache_dir, cache_limit=launch.cache_limit,
                  client_key=client_key, publish=publish)


def is_local_address(addr: str) -> bool:
    """Whether this machine can listen on `addr` (an IP address or a name)."""
    try:
        infos = socket.getaddrinfo(addr, 0, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError):
        return False
    for family, _, _, _, sockaddr in infos:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind(sockaddr)
                return True
            except OSError:
                continue
    return False


def allocation_address(home_addr: str) -> str:
    """This node's address for stubs started inside the current Slurm allocation:
    home_addr if it is one of this node's, else the source address of the route to it
    (the submit host) or to the Slurm controller."""
    if home_addr and is_local_address(home_addr):
        return home_addr
    targets = [home_addr] if home_addr else []
    # SLURM_WORKING_CLUSTER is NAME:CONTROLLER_ADDR:PORT:... in every job's environment.
    parts = os.environ.get("SLURM_WORKING_CLUSTER", "").split(":")
    if len(parts) > 2 and parts[1]:
        targets.append(parts[1])
    for target in targets:
        try:
            return route_address(target)
        except LaunchError:
            continue
    raise LaunchError("inside a Slurm allocation, qrun could not find this node's address for the "
                      "stub to connect to: pass --home-addr with an address of this node", exitcodes.USAGE)
