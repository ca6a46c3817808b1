"""A real sshd and a real Slurm on the namespace test hosts of tests/hosts.py.

`SshCluster` runs one sshd per host; `SlurmCluster` runs munged and slurmctld at home and one
slurmd per host. The recipes, timings and pitfalls are measured in
shared/notes/test-hosts.md, sections 2 and 3.

Both keep all their state under a directory the caller passes. It must lie under /tmp and be
shared into the hosts (`HostCluster(share=[state_dir])`): sshd and slurmd read their configs
from there, and the munge socket in it is how slurmd reaches the one munged at home. The ssh
client side (key, control sockets) goes to `SshCluster.home_only_dir(state_dir)`, which the
caller should also *hide* on the hosts (`HostCluster(hide=[...])`): otherwise code running in a
host could ride home's ControlMaster sockets into the other hosts without authenticating.

Every daemon gets its own config, port, socket, pid file and log, so a stock sshd/munged/
slurmd on the machine is neither used nor disturbed. Every wait is bounded.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from typing import Any, Self

from hosts import Host, HostCluster, _starttime

__all__ = [
    "ClusterError",
    "SlurmCluster",
    "SshCluster",
    "log_tail",
    "slurm_missing",
    "ssh_missing",
]

SSHD = "/usr/sbin/sshd"
_TOOL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
_POLL = 0.02
# Linux's limit for a unix socket path (sun_path) including the NUL byte.
_SUN_PATH_MAX = 107
# ssh creates the control socket under a temporary name first: ControlPath plus ".XXXXXXXXXXXXXXXX".
_CM_TEMP_SUFFIX = 17
_CM_HASH = 40  # length of %C


class ClusterError(RuntimeError):
    """Setup or control of a test cluster failed; the message carries the relevant log tails."""


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            tail = collections.deque(f, maxlen=lines)
    except OSError as e:
        return f"[{path}: {e.strerror}]"
    if not tail:
        return f"[{path}: empty]"
    return f"--- {path} (last {len(tail)} lines) ---\n" + "".join(tail).rstrip("\n")


def _missing(tools: Iterable[str]) -> str | None:
    if os.geteuid() != 0:
        return "needs root (daemons inside namespace test hosts)"
    gone = [t for t in tools if shutil.which(t, path=_TOOL_ENV["PATH"]) is None]
    if gone:
        return f"not installed: {', '.join(gone)}"
    return None


def ssh_missing() -> str | None:
    """Why SshCluster cannot run here (a pytest.skip reason), or None."""
    return _missing(["sshd", "ssh", "ssh-keygen"])


def slurm_missing() -> str | None:
    """Why SlurmCluster cannot run here (a pytest.skip reason), or None."""
    return _missing(["munged", "slurmctld", "slurmd", "srun", "sinfo", "sbatch", "scontrol",
                     "unshare", "mount"])


def _host_name(host: Host | str) -> str:
    return host if isinstance(host, str) else host.name


def _check_state_dir(cluster: HostCluster, state_dir: str) -> None:
    if not cluster.hosts or not all(h.is_alive() for h in cluster.hosts):
        raise ClusterError("the HostCluster is not running")
    if not state_dir.startswith("/tmp/"):
        raise ClusterError(f"state dir {state_dir} must be under /tmp (shared into the hosts)")
    # The daemons in the hosts read their configs from here; a dir that is not shared would
    # otherwise show up as obscure "file not found" errors in their logs.
    marker = os.path.join(state_dir, f".visible-{secrets.token_hex(4)}")
    with open(marker, "w"):
        pass
    try:
        r = cluster.hosts[0].run(["test", "-e", marker], timeout=5, env=_TOOL_ENV)
    finally:
        os.unlink(marker)
    if r.returncode != 0:
        raise ClusterError(f"state dir {state_dir} is not visible in the hosts: create the "
                           "HostCluster with share=[state_dir]")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _pids_in_host(host: Host, comms: Sequence[str]) -> list[int]:
    """Global pids of the processes named `comms` inside `host`'s pid namespace."""
    try:
        target = os.readlink(f"/proc/{host.pid}/ns/pid")
    except OSError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == host.pid:
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{entry}/ns/pid") == target and _comm(int(entry)) in comms:
                out.append(int(entry))
    return out


def _pdeath_prefix() -> list[str]:
    # Daemons at home would outlive a SIGKILLed pytest; the hosts' daemons die with their host.
    return ["setpriv", "--pdeathsig", "KILL"] if shutil.which(
        "setpriv", path=_TOOL_ENV["PATH"]) else []


class _Daemon:
    """A daemon we started, known by global pid *and* start time, so that a recycled pid is
    never signalled. Daemons run in the foreground: no pid-file races, and their parent
    (nsenter for a host, us at home) tells us at once when they die during startup."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], out_path: str) -> None:
        self.name = name
        self.popen = popen
        self.out_path = out_path
        self.pid = 0
        self.starttime: int | None = None

    @classmethod
    def start(cls, name: str, argv: Sequence[str], out_path: str, *, host: Host | None,
              env: dict[str, str]) -> _Daemon:
        prefix = host.nsenter_prefix() if host is not None else _pdeath_prefix()
        with open(out_path, "ab") as out:
            popen = subprocess.Popen(
                [*prefix, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                start_new_session=True,
            )
        d = cls(name, popen, out_path)
        if host is None:
            # setpriv, unshare (without --fork) and sh all exec: the daemon keeps this pid.
            d._set_pid(popen.pid)
        return d

    def _set_pid(self, pid: int) -> None:
        self.pid = pid
        self.starttime = _starttime(pid)

    def resolve(self, deadline: float) -> None:
        """Find the daemon's global pid: nsenter forks it as its only child to enter the pid ns."""
        while not self.pid:
            if self.popen.poll() is not None:
                raise ClusterError(f"{self.name} exited at once (status {self.popen.returncode})")
            kids = _children(self.popen.pid)
            if kids:
                self._set_pid(kids[0])
            elif time.monotonic() > deadline:
                raise ClusterError(f"{self.name}: no process found under {self.popen.pid}")
            else:
                time.sleep(_POLL / 4)

    def alive(self) -> bool:
        if self.popen.poll() is not None:
            return False
        if not self.pid:
            return True
        return self.starttime is not None and _starttime(self.pid) == self.starttime

    def signal(self, sig: int) -> None:
        if self.pid and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
        elif not self.pid and self.popen.poll() is None:
            self.popen.send_signal(sig)


def _stop_daemons(daemons: Sequence[_Daemon], term_wait: float) -> list[str]:
    """TERM, then KILL what is left after `term_wait` s (a slurmd that never registered ignores
    TERM); all at once, so that stopping n daemons costs one wait, not n."""
    errors = []
    for d in daemons:
        d.signal(signal.SIGTERM)
    for sig, wait in ((signal.SIGKILL, term_wait), (None, 3.0)):
        deadline = time.monotonic() + wait
        while any(d.alive() for d in daemons) and time.monotonic() < deadline:
            time.sleep(_POLL)
        for d in daemons:
            if d.alive():
                if sig is None:
                    errors.append(f"{d.name} (pid {d.pid or d.popen.pid}) did not die")
                else:
                    d.signal(sig)
    for d in daemons:
        try:
            d.popen.wait(timeout=2)
        except subprocess.TimeoutExpired:
            d.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.popen.wait(timeout=1)
    return errors


class _Lifecycle:
    """start()/stop() bookkeeping shared by both clusters."""

    def __init__(self, cluster: HostCluster, state_dir: str | os.PathLike[str], timeout: float):
        self.cluster = cluster
        self.state_dir = os.path.realpath(os.fspath(state_dir))
        self.timeout = timeout
        self.setup_seconds = 0.0
        self.teardown_seconds = 0.0
        self._owner_pid = os.getpid()
        self._started = False
        self._stopped = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _host(self, host: Host | str) -> Host:
        return self.cluster[_host_name(host)]

    def start(self) -> Self:
        if self._started:
            raise RuntimeError(f"{type(self).__name__}.start() called twice")
        self._started = True
        t0 = time.monotonic()
        atexit.register(self._atexit_stop)
        try:
            _check_state_dir(self.cluster, self.state_dir)
            self._start(t0 + self.timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        self.setup_seconds = time.monotonic() - t0
        return self

    def _start(self, deadline: float) -> None:
        raise NotImplementedError

    def _stop(self) -> list[str]:
        raise NotImplementedError

    def _atexit_stop(self) -> None:
        # A forked child inherits atexit handlers; only the creator owns the daemons.
        if os.getpid() == self._owner_pid:
            with contextlib.suppress(Exception):
                self.stop()

    def stop(self) -> None:
        """Stop everything this object started. Idempotent; safe after a partial start."""
        if os.getpid() != self._owner_pid:
            return
        t0 = time.monotonic()
        errors = self._stop()
        if not self._stopped:
            self.teardown_seconds = time.monotonic() - t0
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self._atexit_stop)
        if errors:
            raise ClusterError(f"{type(self).__name__} teardown incomplete: " + "; ".join(errors))


# -- ssh ------------------------------------------------------------------------------------------

_SSHD_CONFIG = """\
ListenAddress {ip}:22
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
AllowUsers {allow}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
# The keys live below /tmp, which is world-writable: StrictModes would reject them.
StrictModes no
UseDNS no
# The default post-quantum kex costs ~130 ms of CPU per connection on a small VM.
KexAlgorithms curve25519-sha256
PrintMotd no
PrintLastLog no
X11Forwarding no
# Parallel tests multiplex many sessions over one ControlMaster connection (default 10).
MaxSessions 100
MaxStartups 100:30:200
LogLevel VERBOSE
Subsystem sftp internal-sftp
"""

# OpenSSH >= 9.8 penalises sources that fail to authenticate, which would keep refusing home
# for a while after refuse()/allow(); older versions reject the option, so it is probed.
_PENALTIES = "PerSourcePenalties no\n"

_SSH_CONFIG_HOST = """\
Host {name} {ip}
    HostName {ip}
"""

_SSH_CONFIG_COMMON = """\
Host *
    User root
    Port 22
    IdentityFile {key}
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    CheckHostIP no
    BatchMode yes
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    KexAlgorithms curve25519-sha256
    ControlMaster auto
    ControlPath {control_path}
    ControlPersist 60
    ConnectTimeout 5
    ServerAliveInterval 5
    ServerAliveCountMax 3
    LogLevel ERROR
"""


class SshCluster(_Lifecycle):
    """One sshd per host of a running HostCluster, reachable from home as root with a key.

    `ssh_config` is a client config for `ssh -F`: host aliases h1..hn (and their IPs), strict
    pre-filled known_hosts, BatchMode and a ControlMaster per host. Only root@home_ip may log in.
    refuse()/allow() turn logins to one host into "Permission denied" and back.
    """

    def __init__(self, cluster: HostCluster, state_dir: str | os.PathLike[str],
                 *, timeout: float = 10.0) -> None:
        super().__init__(cluster, state_dir, timeout)
        self.client_dir = self.home_only_dir(self.state_dir)
        self.server_dir = os.path.join(self.state_dir, "sshd")
        self.ssh_config = os.path.join(self.client_dir, "config")
        self.key = os.path.join(self.client_dir, "id_ed25519")
        self.known_hosts = os.path.join(self.client_dir, "known_hosts")
        self.control_path = os.path.join(self.client_dir, "cm-%C")
        self.authorized_keys = os.path.join(self.server_dir, "authorized_keys")
        self._daemons: dict[str, _Daemon] = {}
        self._refused: set[str] = set()
        self._penalties = ""

    @staticmethod
    def home_only_dir(state_dir: str | os.PathLike[str]) -> str:
        """The client side's dir below state_dir; pass it to HostCluster(hide=...)."""
        return os.path.join(os.path.realpath(os.fspath(state_dir)), "ssh-client")

    def host_dir(self, host: Host | str) -> str:
        return os.path.join(self.server_dir, _host_name(host))

    def log_path(self, host: Host | str) -> str:
        return os.path.join(self.host_dir(host), "sshd.log")

    def logs(self, host: Host | str | None = None) -> str:
        names = [_host_name(host)] if host is not None else [h.name for h in self.cluster]
        parts = []
        for n in names:
            parts.append(log_tail(self.log_path(n)))
            out = os.path.join(self.host_dir(n), "sshd.out")
            # Only early failures (before sshd opened its -E log) land here.
            if os.path.exists(out) and os.path.getsize(out):
                parts.append(log_tail(out))
        return "\n".join(parts)

    def pids(self) -> list[int]:
        """Global pids of the listening sshds that are still running."""
        return [d.pid for d in self._daemons.values() if d.pid and d.alive()]

    def ssh_argv(self, host: Host | str, *cmd: str) -> list[str]:
        """`ssh -F CONFIG hN [cmd...]`."""
        return ["ssh", "-F", self.ssh_config, _host_name(host), *cmd]

    # -- setup ----------------------------------------------------------------------------------

    def _keygen(self, path: str, comment: str) -> subprocess.Popen[bytes]:
        for p in (path, path + ".pub"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        return subprocess.Popen(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=_TOOL_ENV,
        )

    def _sshd_config_path(self, host: Host) -> str:
        return os.path.join(self.host_dir(host), "sshd_config")

    def _write_sshd_config(self, host: Host) -> None:
        # A user that never logs in makes sshd refuse the key after checking it, which is what a
        # misconfigured real cluster looks like ("Permission denied (publickey)").
        allow = f"qrun-refused@{host.home_ip}" if host.name in self._refused else (
            f"root@{host.home_ip}")
        text = _SSHD_CONFIG.format(
            ip=host.ip, host_key=os.path.join(self.host_dir(host), "ssh_host_ed25519_key"),
            pid_file=os.path.join(self.host_dir(host), "sshd.pid"),
            authorized_keys=self.authorized_keys, allow=allow,
        ) + self._penalties
        path = self._sshd_config_path(host)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)

    def _start(self, deadline: float) -> None:
        longest = len(self.control_path) - 2 + _CM_HASH + _CM_TEMP_SUFFIX
        if longest > _SUN_PATH_MAX:
            raise ClusterError(f"state dir {self.state_dir} is too long for ssh's ControlPath "
                               f"({longest} > {_SUN_PATH_MAX} bytes); use a shorter one")
        for d in [self.client_dir, self.server_dir, *(self.host_dir(h) for h in self.cluster)]:
            os.makedirs(d, mode=0o700, exist_ok=True)
        gens = [self._keygen(self.key, "qrun-test-client")]
        gens += [self._keygen(os.path.join(self.host_dir(h), "ssh_host_ed25519_key"),
                              f"qrun-test-{h.name}") for h in self.cluster]
        for g in gens:
            try:
                out, _ = g.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                g.kill()
                g.wait()
                raise ClusterError("ssh-keygen timed out") from None
            if g.returncode != 0:
                raise ClusterError(f"ssh-keygen failed: {out.decode(errors='replace').strip()}")

        with open(self.key + ".pub") as f:
            client_pub = f.read().strip()
        home_ip = self.cluster.home_ip
        with open(self.authorized_keys, "w") as f:
            f.write(f'from="{home_ip}" {client_pub}\n')
        with open(self.known_hosts, "w") as f:
            for h in self.cluster:
                with open(os.path.join(self.host_dir(h), "ssh_host_ed25519_key.pub")) as k:
                    key_type, key_b64 = k.read().split()[:2]
                f.write(f"{h.name},{h.ip} {key_type} {key_b64}\n")
        with open(self.ssh_config, "w") as f:
            for h in self.cluster:
                f.write(_SSH_CONFIG_HOST.format(name=h.name, ip=h.ip))
            f.write(_SSH_CONFIG_COMMON.format(key=self.key, known_hosts=self.known_hosts,
                                              control_path=self.control_path))

        # sshd (even `sshd -t`) insists on its privsep dir, which only a started stock ssh
        # service would have created. /run is the machine's own, also inside the hosts.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self._penalties = _PENALTIES
        first = self.cluster.hosts[0]
        self._write_sshd_config(first)
        probe = subprocess.run([SSHD, "-t", "-f", self._sshd_config_path(first)],
                               capture_output=True, text=True, timeout=5, env=_TOOL_ENV)
        if probe.returncode != 0 and "persourcepenalties" in probe.stderr.lower():
            self._penalties = ""
            self._write_sshd_config(first)
            probe = subprocess.run([SSHD, "-t", "-f", self._sshd_config_path(first)],
                                   capture_output=True, text=True, timeout=5, env=_TOOL_ENV)
        if probe.returncode != 0:
            raise ClusterError(f"sshd rejects its config: {probe.stderr.strip()}")

        for h in self.cluster:
            self._write_sshd_config(h)
            # In case the caller hid /run on the hosts.
            script = 'mkdir -p -m 0755 /run/sshd && exec "$@"'
            argv = ["/bin/sh", "-c", script, "sh", SSHD, "-D", "-f", self._sshd_config_path(h),
                    "-E", self.log_path(h)]
            self._daemons[h.name] = _Daemon.start(
                f"sshd in {h.name}", argv, os.path.join(self.host_dir(h), "sshd.out"),
                host=h, env=_TOOL_ENV)
        for h in self.cluster:
            self._wait_listening(h, deadline, 0)

    def _listening_count(self, host: Host) -> int:
        try:
            with open(self.log_path(host), errors="replace") as f:
                return f.read().count("Server listening on")
        except FileNotFoundError:
            return 0

    def _wait_listening(self, host: Host, deadline: float, seen: int) -> None:
        """Until sshd has logged one more 'Server listening' than `seen` and answers on :22."""
        d = self._daemons[host.name]
        while True:
            try:
                d.resolve(deadline)
            except ClusterError as e:
                raise ClusterError(f"{e}\n{self.logs(host)}") from None
            if not d.alive():
                raise ClusterError(f"sshd in {host.name} died\n{self.logs(host)}")
            if self._listening_count(host) > seen and _ssh_banner(host.ip):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"sshd in {host.name} not answering on {host.ip}:22\n"
                                   f"{self.logs(host)}")
            time.sleep(_POLL)

    # -- fault injection ------------------------------------------------------------------------

    def _reload(self, host: Host) -> None:
        d = self._daemons.get(host.name)
        if d is None or not d.alive():
            raise ClusterError(f"sshd in {host.name} is not running\n{self.logs(host)}")
        seen = self._listening_count(host)
        # With -D, SIGHUP makes sshd re-exec itself under the same pid with the new config.
        d.signal(signal.SIGHUP)
        self._wait_listening(host, time.monotonic() + self.timeout, seen)

    def _exit_master(self, name: str) -> None:
        subprocess.run(["ssh", "-F", self.ssh_config, "-O", "exit", name],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=5, check=False)

    def refuse(self, host: Host | str) -> None:
        """From now on ssh to `host` fails authentication ("Permission denied")."""
        h = self._host(host)
        self._refused.add(h.name)
        self._write_sshd_config(h)
        self._reload(h)
        # An open master would keep multiplexing new sessions without authenticating again.
        self._exit_master(h.name)

    def allow(self, host: Host | str) -> None:
        """Undo refuse()."""
        h = self._host(host)
        if h.name not in self._refused:
            return
        self._refused.discard(h.name)
        self._write_sshd_config(h)
        self._reload(h)

    # -- teardown -------------------------------------------------------------------------------

    def _stop(self) -> list[str]:
        if os.path.exists(self.ssh_config):
            masters = [
                subprocess.Popen(["ssh", "-F", self.ssh_config, "-O", "exit", h.name],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
                for h in self.cluster
            ]
            for m in masters:
                try:
                    m.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    m.kill()
                    m.wait()
        errors = _stop_daemons(list(self._daemons.values()), term_wait=2.0)
        # Per-connection sshd processes outlive the listener; only our sshds run in our hosts.
        for h in self.cluster:
            if h.is_alive():
                for pid in _pids_in_host(h, ["sshd", "sshd-session"]):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        return errors


def _ssh_banner(ip: str) -> bool:
    try:
        with socket.create_connection((ip, 22), timeout=0.5) as s:
            s.settimeout(0.5)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


# -- Slurm ----------------------------------------------------------------------------------------

_SLURM_CONF = """\
ClusterName={cluster_name}
SlurmctldHost=home({home_ip})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
# Bind slurmctld to the address of its hostname ('home' = the bridge), not to all addresses.
# NoInAddrAny must stay off: srun would then listen on 127.0.0.1, where slurmd cannot call back.
CommunicationParameters=NoCtldInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={dir}/ctld-state
SlurmctldPidFile={dir}/slurmctld.pid
SlurmctldLogFile={dir}/slurmctld.log
# Lets each 2-core test host offer the CPUs=8 declared below, so parallel tests do not queue.
SlurmdParameters=config_overrides
SlurmdSpoolDir={dir}/%n/spool
SlurmdPidFile={dir}/%n/slurmd.pid
SlurmdLogFile={dir}/%n/slurmd.log
PlugStackConfig={dir}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# The default waits 3 s before scheduling a batch job.
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
# Clients retry an unreachable slurmctld about once a second for MessageTimeout seconds: 10 s
# by default, which would make every "Slurm is down" test wait that long.
MessageTimeout={message_timeout}
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=60
KillWait=5
Waittime=0
PropagateResourceLimits=NONE
MailProg=/bin/true
SlurmctldDebug=info
SlurmdDebug=info
{nodes}
PartitionName={partition} Nodes={node_list} Default=YES MaxTime=INFINITE State=UP
"""

_SLURMD_PORT = 6818  # inside each host's own network namespace, so it cannot clash
_CTLD_PORT_BASE = 16900
# Inherited from an enclosing Slurm job, these would point srun/sbatch at the wrong cluster/job.
_SLURM_ENV_RE = re.compile(r"^(SLURM|SBATCH|SALLOC|SRUN|SQUEUE|SINFO|SCONTROL)_")

# Ran by sh inside slurmctld's own mount+UTS namespaces: slurmctld only runs on the host named
# in SlurmctldHost and binds to what that name resolves to, so it must be called 'home' and
# 'home' must resolve to the bridge address, without touching the machine's hostname or hosts.
_CTLD_SCRIPT = """\
set -e
mount --bind "$1" /etc/hosts
echo home > /proc/sys/kernel/hostname
shift
exec "$@"
"""


def _port_free(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


class SlurmCluster(_Lifecycle):
    """munged + slurmctld at home and one slurmd per host of a running HostCluster.

    Run the clients at home with `env=slurm.env`, e.g.
    `subprocess.run(slurm.srun_argv("-N3", "hostname"), env=slurm.env)`; `run()` does that.
    down()/up() stop and restart slurmctld. `message_timeout` bounds how long a client keeps
    retrying an unreachable slurmctld (about that many seconds minus one).

    slurmctld's first scheduling pass comes about 3 s after it starts, so the first *batch* job
    waits that long (sruns are not affected).

    Start it from a thread that outlives its use (pytest's main thread): munged and slurmctld
    die with the thread that started them, so that a killed test run leaves nothing behind.
    """

    def __init__(self, cluster: HostCluster, state_dir: str | os.PathLike[str],
                 *, timeout: float = 20.0, partition: str = "box",
                 message_timeout: int = 4) -> None:
        super().__init__(cluster, state_dir, timeout)
        self.partition = partition
        self.message_timeout = message_timeout
        self.dir = os.path.join(self.state_dir, "slurm")
        self.munge_dir = os.path.join(self.state_dir, "munge")
        self.munge_socket = os.path.join(self.munge_dir, "munge.sock")
        self.munge_log = os.path.join(self.munge_dir, "munged.log")
        self.conf = os.path.join(self.dir, "slurm.conf")
        self.ctld_log = os.path.join(self.dir, "slurmctld.log")
        self.ctld_port = 0
        self.cluster_name = ""
        env = {k: v for k, v in os.environ.items() if not _SLURM_ENV_RE.match(k)}
        env["SLURM_CONF"] = self.conf
        self.env: dict[str, str] = env
        self._daemon_env = {**_TOOL_ENV, "SLURM_CONF": self.conf}
        self._munged: _Daemon | None = None
        self._ctld: _Daemon | None = None
        self._slurmds: dict[str, _Daemon] = {}

    def pids(self) -> list[int]:
        """Global pids of munged, slurmctld and the slurmds that are still running."""
        daemons = [self._munged, self._ctld, *self._slurmds.values()]
        return [d.pid for d in daemons if d is not None and d.pid and d.alive()]

    def srun_argv(self, *args: str) -> list[str]:
        return ["srun", *args]

    def slurmd_log(self, host: Host | str) -> str:
        return os.path.join(self.dir, _host_name(host), "slurmd.log")

    def logs(self) -> str:
        paths = [self.munge_log, self.ctld_log, os.path.join(self.dir, "slurmctld.out")]
        paths += [self.slurmd_log(h) for h in self.cluster]
        paths += [os.path.join(self.dir, h.name, "slurmd.out") for h in self.cluster]
        return "\n".join(log_tail(p, 8) for p in paths if os.path.exists(p))

    def run(self, argv: Sequence[str], timeout: float = 30, **kwargs: Any
            ) -> subprocess.CompletedProcess[str]:
        """subprocess.run() of a Slurm client at home with this cluster's env, output captured."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False, **kwargs)

    def node_states(self) -> dict[str, str]:
        """{node: state} from sinfo, e.g. {'h1': 'idle'}; {} while slurmctld does not answer."""
        try:
            r = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], timeout=5)
        except subprocess.TimeoutExpired:
            return {}
        if r.returncode != 0:
            return {}
        return dict(line.split()[:2] for line in r.stdout.splitlines() if len(line.split()) >= 2)

    # -- setup ----------------------------------------------------------------------------------

    def _pick_ctld_port(self) -> int:
        assert self.cluster.subnet is not None
        # Clusters of concurrent test runs get different subnets, hence different first picks.
        octet = int(str(self.cluster.subnet.network_address).split(".")[2])
        for i in range(64):
            port = _CTLD_PORT_BASE + (octet * 2 + i) % 1000
            if _port_free(self.cluster.home_ip, port):
                return port
        raise ClusterError(f"no free slurmctld port on {self.cluster.home_ip}")

    def _write_files(self) -> None:
        for d in [self.dir, self.munge_dir, os.path.join(self.dir, "ctld-state"),
                  *(os.path.join(self.dir, h.name, "spool") for h in self.cluster)]:
            os.makedirs(d, mode=0o700, exist_ok=True)
        key = os.path.join(self.munge_dir, "munge.key")
        if not os.path.exists(key):
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(1024))
        # Without its own (empty) plugstack.conf, Slurm would load the machine's SPANK plugins.
        with open(os.path.join(self.dir, "plugstack.conf"), "w"):
            pass
        nodes = "\n".join(
            f"NodeName={h.name} NodeAddr={h.ip} CPUs=8 RealMemory=1000 State=UNKNOWN"
            for h in self.cluster
        )
        with open(self.conf, "w") as f:
            f.write(_SLURM_CONF.format(
                cluster_name=self.cluster_name, home_ip=self.cluster.home_ip,
                ctld_port=self.ctld_port, slurmd_port=_SLURMD_PORT,
                munge_socket=self.munge_socket, dir=self.dir, nodes=nodes,
                partition=self.partition, message_timeout=self.message_timeout, node_list=",".join(h.name for h in self.cluster),
            ))
        with open("/etc/hosts") as f:
            etc_hosts = f.read()
        with open(os.path.join(self.dir, "hosts"), "w") as f:
            # First match wins: ours go before anything the machine may say about these names.
            f.write(f"{self.cluster.home_ip} home\n")
            f.writelines(f"{h.ip} {h.name}\n" for h in self.cluster)
            f.write(etc_hosts)

    def _start_munged(self, deadline: float) -> None:
        argv = [
            "munged", "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={os.path.join(self.munge_dir, 'munge.key')}",
            f"--pid-file={os.path.join(self.munge_dir, 'munged.pid')}",
            f"--log-file={self.munge_log}",
            f"--seed-file={os.path.join(self.munge_dir, 'munged.seed')}",
        ]
        self._munged = _Daemon.start("munged", argv, os.path.join(self.munge_dir, "munged.out"),
                                     host=None, env=_TOOL_ENV)
        while True:
            if not self._munged.alive():
                raise ClusterError(f"munged died\n{self.logs()}")
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(self.munge_socket)
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise ClusterError(f"munged not answering on {self.munge_socket}\n{self.logs()}")
            time.sleep(_POLL)

    def _start_ctld(self) -> None:
        argv = ["unshare", "--mount", "--uts", "--propagation", "private",
                "/bin/sh", "-c", _CTLD_SCRIPT, "sh", os.path.join(self.dir, "hosts"),
                "slurmctld", "-D", "-i", "-f", self.conf]
        self._ctld = _Daemon.start("slurmctld", argv, os.path.join(self.dir, "slurmctld.out"),
                                   host=None, env=self._daemon_env)

    def _start(self, deadline: float) -> None:
        self.ctld_port = self._pick_ctld_port()
        self.cluster_name = f"qrun{self.ctld_port}"
        self._write_files()
        self._start_munged(deadline)
        self._start_ctld()
        # A slurmd that finds slurmctld not yet listening retries its registration only later.
        self._wait_ctld(deadline)
        for h in self.cluster:
            # slurmd takes its NodeName from the host's hostname.
            self._slurmds[h.name] = _Daemon.start(
                f"slurmd in {h.name}", ["slurmd", "-D", "-f", self.conf],
                os.path.join(self.dir, h.name, "slurmd.out"), host=h, env=self._daemon_env)
        for d in self._slurmds.values():
            d.resolve(deadline)
        self._wait_idle(deadline)

    def _wait_ctld(self, deadline: float) -> None:
        # Polled by connecting, as a client that finds slurmctld not yet listening sleeps a
        # whole second before its retry.
        while True:
            if self._ctld is None or not self._ctld.alive():
                raise ClusterError(f"slurmctld died\n{self.logs()}")
            try:
                with socket.create_connection((self.cluster.home_ip, self.ctld_port),
                                              timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"slurmctld not listening on {self.cluster.home_ip}:"
                                   f"{self.ctld_port}\n{self.logs()}")
            time.sleep(_POLL)

    def _wait_idle(self, deadline: float) -> None:
        want = {h.name for h in self.cluster}
        states: dict[str, str] = {}
        while True:
            for d in [self._munged, self._ctld, *self._slurmds.values()]:
                if d is not None and not d.alive():
                    raise ClusterError(f"{d.name} died\n{self.logs()}")
            # A client that finds slurmctld not yet listening sleeps a whole second before its
            # retry, so only ask once the port answers.
            states = self.node_states()
            if set(states) >= want and all(states[n] == "idle" for n in want):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"nodes not idle within {self.timeout:.0f}s: {states}\n"
                                   f"{self.logs()}")
            time.sleep(_POLL)

    # -- fault injection ------------------------------------------------------------------------

    def down(self) -> None:
        """Stop slurmctld (clients then fail with 'Unable to contact slurm controller')."""
        if self._ctld is not None:
            errors = _stop_daemons([self._ctld], term_wait=5.0)
            self._ctld = None
            if errors:
                raise ClusterError("; ".join(errors))

    def up(self) -> None:
        """Restart slurmctld after down() and wait until all nodes are idle again."""
        if self._ctld is not None and self._ctld.alive():
            return
        deadline = time.monotonic() + self.timeout
        self._start_ctld()
        self._wait_ctld(deadline)
        # The restarted slurmctld keeps the nodes 'unknown' for seconds until it asks them to
        # register again; a reconfigure makes every slurmd register now.
        r = self.run(["scontrol", "reconfigure"], timeout=10)
        if r.returncode != 0:
            raise ClusterError(f"scontrol reconfigure failed: {r.stderr.strip()}\n{self.logs()}")
        self._wait_idle(deadline)

    # -- teardown -------------------------------------------------------------------------------

    def _stop(self) -> list[str]:
        errors = _stop_daemons(list(self._slurmds.values()), term_wait=2.0)
        # Job steps outlive slurmd; only our slurmd starts slurmstepd in our hosts.
        for h in self.cluster:
            if h.is_alive():
                for pid in _pids_in_host(h, ["slurmstepd"]):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        rest = [d for d in (self._ctld, self._munged) if d is not None]
        errors += _stop_daemons(rest, term_wait=3.0)
        return errors
