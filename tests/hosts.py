"""Throw-away "test hosts" built from Linux namespaces on this machine.

Each host is one holder process (its PID-1) in fresh mount/UTS/IPC/pid namespaces, started inside
a named network namespace that is wired to a per-cluster bridge with a veth pair. The recipe and
its pitfalls are measured in shared/notes/test-hosts.md, section 1.

The pid namespace is what makes teardown reliable: SIGKILL to a host's PID-1 makes the kernel kill
everything that runs in that host, and its private mounts vanish with the last process, so nothing
leaks into the root mount table even if the test process crashes.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import itertools
import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any, Self

__all__ = ["Host", "HostCluster", "can_make_hosts"]

SETUP_TIMEOUT = 5.0
_POLL = 0.005
# All network objects we create carry this shape, so a later run can tell which leftovers belong
# to a test process that died without cleaning up (see _sweep_stale).
_NAME_RE = re.compile(r"^qh(\d+)-[0-9a-z]+$")
_LOCK_PATH = "/run/lock/qrun-test-hosts.lock"
_READY = "qrun-host-ready"
_SUBNET_BASE = "10.77"
_TOOL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
_counter = itertools.count(1)

# PID-1 of every host. dash is used because it is small and its `wait` reaps any child, so
# orphans re-parented to PID-1 do not stay zombies (`sleep infinity` as init would leave them).
# /tmp is assembled on /dev/shm as a staging point because the shared dirs must be bound in from
# the *old* /tmp before the new one covers it; `--propagation private` is what permits the move.
_INIT_SCRIPT = r"""
set -eu
name=$1 addr=$2; shift 2
echo "$name" > /proc/sys/kernel/hostname
ip link set lo up
ip addr add "$addr" dev eth0
ip link set eth0 up
mount -t tmpfs -o mode=1777,nosuid,nodev qrun-tmp /dev/shm
while [ "$1" != -- ]; do
    mkdir -p "/dev/shm${1#/tmp}"
    mount --bind "$1" "/dev/shm${1#/tmp}"
    shift
done
shift
mount --move /dev/shm /tmp
mount -t tmpfs -o mode=1777,nosuid,nodev qrun-shm /dev/shm
for p; do
    mkdir -p "$p"
    mount -t tmpfs -o mode=755 qrun-hide "$p"
done
echo qrun-host-ready
exec </dev/null >/dev/null 2>&1
while :; do sleep 86400 & wait $! || :; done
"""


def _ip_batch(lines: Sequence[str], *, check: bool) -> subprocess.CompletedProcess[str]:
    # One `ip -batch` process instead of one `ip` per command keeps setup and teardown fast.
    args = ["ip", "-batch", "-"] if check else ["ip", "-force", "-batch", "-"]
    proc = subprocess.run(
        args,
        input="".join(line + "\n" for line in lines),
        check=False,
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT,
        env=_TOOL_ENV,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip -batch failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _starttime(pid: int) -> int | None:
    """Start time of a live (non-zombie) process, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses, so split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    # A zombie counts as dead: its reaper may be a parent that only reaps every few seconds.
    if fields[0] in ("Z", "X", "x"):
        return None
    return int(fields[19])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"],
        capture_output=True, text=True, timeout=SETUP_TIMEOUT, env=_TOOL_ENV, check=True,
    ).stdout
    nets = []
    for m in re.finditer(r"\binet (\d+\.\d+\.\d+\.\d+/\d+)", out):
        nets.append(ipaddress.IPv4Interface(m.group(1)).network)
    routes = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"],
        check=False, capture_output=True, text=True, timeout=SETUP_TIMEOUT, env=_TOOL_ENV,
    ).stdout
    for line in routes.splitlines():
        dest = line.split(" ", 1)[0]
        if dest in ("default", "broadcast", "local", "unreachable", "blackhole", "prohibit"):
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(dest, strict=False))
    return nets


def _pick_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    for x in range(256):
        cand = ipaddress.IPv4Network(f"{_SUBNET_BASE}.{x}.0/24")
        if not any(cand.overlaps(u) for u in used):
            return cand
    raise RuntimeError(f"no free {_SUBNET_BASE}.X.0/24 subnet left")


def _sweep_stale() -> None:
    """Delete bridges, veths and netns names left by test processes that no longer exist.

    Processes of such hosts are already gone (their holders run with a parent-death SIGKILL), but
    the network objects outlive a SIGKILLed test process.
    """
    names: set[str] = set()
    for d in ("/sys/class/net", "/run/netns"):
        with contextlib.suppress(FileNotFoundError):
            names.update(os.listdir(d))
    stale = sorted(
        n for n in names if (m := _NAME_RE.match(n)) and not _pid_alive(int(m.group(1)))
    )
    if not stale:
        return
    lines = [f"link del {n}" for n in stale if _link_exists(n)]
    lines += [f"netns del {n}" for n in stale if _netns_exists(n)]
    _ip_batch(lines, check=False)


@lru_cache(maxsize=1)
def can_make_hosts() -> tuple[bool, str]:
    """Whether this machine can build test hosts; the reason is meant for pytest.skip()."""
    if os.geteuid() != 0:
        return False, "test hosts need root (network/pid namespaces, mounts)"
    for tool in ("unshare", "nsenter", "ip", "mount"):
        if shutil.which(tool, path=_TOOL_ENV["PATH"]) is None:
            return False, f"test hosts need `{tool}`, which is not installed"
    name = f"qh{os.getpid()}-probe"
    try:
        add = _ip_batch([f"netns add {name}"], check=False)
        if add.returncode != 0:
            return False, f"cannot create a network namespace: {add.stderr.strip()}"
        # Probe the exact namespace combination the hosts use: some containers allow netns but
        # refuse pid or mount namespaces.
        probe = subprocess.run(
            ["nsenter", f"--net=/run/netns/{name}", "unshare", "--mount", "--uts", "--ipc",
             "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private",
             "true"],
            check=False, capture_output=True, text=True, timeout=SETUP_TIMEOUT, env=_TOOL_ENV,
        )
        if probe.returncode != 0:
            return False, f"cannot create mount/pid namespaces: {probe.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"cannot create namespaces: {e}"
    finally:
        if _netns_exists(name):
            _ip_batch([f"netns del {name}"], check=False)
    return True, ""


class Host:
    """One test host. `pid` is the global pid of its PID-1, the handle for nsenter."""

    def __init__(self, name: str, ip: str, home_ip: str, netns: str) -> None:
        self.name = name
        self.ip = ip
        self.home_ip = home_ip
        self.netns = netns
        # Home-side end of the veth; it shares the netns name, which is unique per cluster.
        self.veth = netns
        self.pid = 0
        self._starttime: int | None = None
        self._holder: subprocess.Popen[bytes] | None = None
        self._blocked = False
        self._iptables_ok: bool | None = None

    def __repr__(self) -> str:
        return f"Host(name={self.name!r}, ip={self.ip!r}, home_ip={self.home_ip!r}, pid={self.pid})"

    def nsenter_prefix(self) -> list[str]:
        if not self.pid:
            raise RuntimeError(f"host {self.name} is not running")
        return ["nsenter", "-t", str(self.pid), "-a", "--"]

    def _argv(self, cmd: Sequence[str], cwd: str | os.PathLike[str] | None) -> list[str]:
        if isinstance(cmd, str):
            raise TypeError("cmd must be a list of arguments, not a string")
        if cwd is None:
            return self.nsenter_prefix() + list(cmd)
        # subprocess's cwd would apply to nsenter at home, and `nsenter --wd=DIR` opens DIR
        # before entering the mount ns (so it could even escape a hidden dir); cd inside instead.
        chdir = 'cd "$1" && shift && exec "$@"'
        return [*self.nsenter_prefix(), "/bin/sh", "-c", chdir, "sh", os.fspath(cwd), *cmd]

    def run(
        self,
        cmd: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        check: bool = False,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """subprocess.run() inside the host; `cwd` is resolved inside the host."""
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self._argv(cmd, cwd), check=check, **kwargs)

    def popen(
        self,
        cmd: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """subprocess.Popen() inside the host; `cwd` is resolved inside the host."""
        return subprocess.Popen(self._argv(cmd, cwd), **kwargs)

    def is_alive(self) -> bool:
        return bool(self.pid) and self._starttime is not None and (
            _starttime(self.pid) == self._starttime
        )

    # -- fault injection ------------------------------------------------------------------------

    def _iptables(
        self, args: Sequence[str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        # Only the net ns is entered: the rules are per netns, and the tools/locks stay home's.
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-n", "--", *args],
            check=False, input=stdin, capture_output=True, text=True, timeout=10, env=_TOOL_ENV,
        )

    def iptables_available(self) -> bool:
        if self._iptables_ok is None:
            self._iptables_ok = (
                shutil.which("iptables", path=_TOOL_ENV["PATH"]) is not None
                and shutil.which("iptables-restore", path=_TOOL_ENV["PATH"]) is not None
                and self._iptables(["iptables", "-w", "5", "-S", "OUTPUT"]).returncode == 0
            )
        return self._iptables_ok

    def _home_rules(self, op: str) -> None:
        rules = (
            "*filter\n"
            f"{op} INPUT -s {self.home_ip}/32 -j DROP\n"
            f"{op} OUTPUT -d {self.home_ip}/32 -j DROP\n"
            "COMMIT\n"
        )
        # iptables-restore applies both rules atomically, so a host is never half-blocked.
        proc = self._iptables(["iptables-restore", "-w", "5", "--noflush"], stdin=rules)
        if proc.returncode != 0:
            raise RuntimeError(f"iptables-restore in {self.name} failed: {proc.stderr.strip()}")

    def block_home(self) -> None:
        """Silently drop all traffic between this host and home (home_ip), both directions."""
        if not self._blocked:
            self._home_rules("-I")
            self._blocked = True

    def unblock_home(self) -> None:
        if self._blocked:
            self._home_rules("-D")
            self._blocked = False

    def partition_job(self, proc: subprocess.Popen[str], progress: str, seconds: float) -> tuple[str, str]:
        """Once the job `proc` has written 5 lines to its `progress` file, drop all traffic
        between this host and home for `seconds`; then the job's stdout and stderr once it
        has ended (within 120 s; it is killed if it has not)."""
        def lines() -> int:
            with open(progress) as f:
                return len(f.read().split())
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(progress) or lines() < 5:
                assert time.monotonic() < deadline, "the job did not get going"
                time.sleep(0.1)
            self.block_home()
            time.sleep(seconds)
            self.unblock_home()
            return proc.communicate(timeout=120)
        finally:
            self.unblock_home()
            if proc.poll() is None:
                proc.kill()


class HostCluster:
    """n test hosts h1..hn on a private bridge; use as a context manager or start()/close().

    `hide`: paths masked by an empty tmpfs inside every host. A missing one is created at home
    (and left there: removing a dir that other live hosts use as a mountpoint would unmask it for
    them), so whatever is created there later stays hidden. `share`: dirs under /tmp that stay
    visible at the same path inside the otherwise empty private /tmp.

    The holders die with the thread that started them (parent-death signal), so start the cluster
    from a thread that outlives its use, e.g. pytest's main thread.
    """

    def __init__(
        self,
        n: int = 3,
        hide: Sequence[str | os.PathLike[str]] = (),
        prefix: str | None = None,
        share: Sequence[str | os.PathLike[str]] = (),
        timeout: float = SETUP_TIMEOUT,
    ) -> None:
        if not 1 <= n <= 200:
            raise ValueError("n must be between 1 and 200")
        self.n = n
        self.timeout = timeout
        self.prefix = prefix if prefix is not None else f"qh{os.getpid()}-{next(_counter)}"
        self.bridge = f"{self.prefix}b"
        for name in (self.bridge, f"{self.prefix}h{n}"):
            if len(name) > 15 or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"interface name {name!r} is invalid or longer than 15 chars")
        self.hide = [self._abs(p, "hide") for p in hide]
        self.share = [self._abs(p, "share") for p in share]
        for p in self.share:
            if not p.startswith("/tmp/") or not os.path.isdir(p):
                raise ValueError(f"share path {p!r} must be an existing directory under /tmp")
        self.created_dirs: list[str] = []
        self.subnet: ipaddress.IPv4Network | None = None
        self.home_ip = ""
        self.hosts: list[Host] = []
        self.setup_seconds = 0.0
        self.teardown_seconds = 0.0
        self._owner_pid = os.getpid()
        self._started = False
        self._closed = False

    @staticmethod
    def _abs(p: str | os.PathLike[str], what: str) -> str:
        s = os.fspath(p)
        if not os.path.isabs(s):
            raise ValueError(f"{what} path {s!r} must be absolute")
        # mount follows symlinks anyway; resolving makes the /tmp checks and mkdir agree with it.
        return os.path.realpath(s)

    # -- container protocol ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __getitem__(self, key: int | str) -> Host:
        if isinstance(key, str):
            for h in self.hosts:
                if h.name == key:
                    return h
            raise KeyError(key)
        return self.hosts[key]

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._started:
            raise RuntimeError("HostCluster.start() called twice")
        self._started = True
        t0 = time.monotonic()
        atexit.register(self._atexit_close)
        try:
            self._prepare_hide_dirs()
            self._create_network()
            self._start_holders()
            self._wait_ready(t0 + self.timeout)
        except BaseException:
            self.close()
            raise
        self.setup_seconds = time.monotonic() - t0
        return self

    def _prepare_hide_dirs(self) -> None:
        for p in self.hide:
            if p.startswith(("/tmp/", "/dev/shm/")) or p in ("/tmp", "/dev/shm"):
                continue  # created inside the host's private tmpfs by the init script
            if os.path.lexists(p):
                if not os.path.isdir(p):
                    raise ValueError(f"hide path {p!r} exists but is not a directory")
                continue
            # Must exist at home *before* the hosts start: a dir created later on the shared root
            # fs would not be covered by a mask and would show home's content inside.
            missing = p
            while not os.path.lexists(os.path.dirname(missing)):
                missing = os.path.dirname(missing)
            os.makedirs(p, exist_ok=True)
            self.created_dirs.append(missing)

    def _create_network(self) -> None:
        os.makedirs(os.path.dirname(_LOCK_PATH), exist_ok=True)
        # The lock serialises subnet choice with other test processes until our address is in
        # `ip addr`, which is where the next process looks.
        with open(_LOCK_PATH, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _sweep_stale()
            self.subnet = _pick_subnet()
            base = self.subnet.network_address
            self.home_ip = str(base + 1)
            plen = self.subnet.prefixlen
            self.hosts = [
                Host(f"h{i}", str(base + 10 + i), self.home_ip, f"{self.prefix}h{i}")
                for i in range(1, self.n + 1)
            ]
            lines = [
                f"link add {self.bridge} type bridge",
                f"addr add {self.home_ip}/{plen} dev {self.bridge}",
                f"link set {self.bridge} up",
            ]
            for h in self.hosts:
                lines += [
                    f"netns add {h.netns}",
                    f"link add {h.veth} type veth peer name eth0 netns {h.netns}",
                    f"link set {h.veth} master {self.bridge} up",
                ]
            _ip_batch(lines, check=True)

    def _start_holders(self) -> None:
        assert self.subnet is not None
        plen = self.subnet.prefixlen
        # Parent-death SIGKILL on the holder (and --kill-child on its PID-1) means a SIGKILLed
        # test process still takes its hosts down with it. setpriv is optional.
        pdeath = ["setpriv", "--pdeathsig", "KILL"] if shutil.which(
            "setpriv", path=_TOOL_ENV["PATH"]) else []
        for h in self.hosts:
            argv = [
                *pdeath,
                # Not `ip netns exec`: it remounts /sys, which drops /sys/fs/cgroup.
                "nsenter", f"--net=/run/netns/{h.netns}",
                "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child",
                "--mount-proc", "--propagation", "private",
                "/bin/sh", "-c", _INIT_SCRIPT, f"qrun-host-init:{self.prefix}:{h.name}",
                h.name, f"{h.ip}/{plen}", *self.share, "--", *self.hide,
            ]
            h._holder = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, env=_TOOL_ENV,
            )

    def _wait_ready(self, deadline: float) -> None:
        pending: dict[int, tuple[Host, bytearray]] = {}
        for h in self.hosts:
            assert h._holder is not None and h._holder.stdout is not None
            pending[h._holder.stdout.fileno()] = (h, bytearray())
        try:
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    names = ", ".join(h.name for h, _ in pending.values())
                    raise RuntimeError(
                        f"test hosts not ready within {self.timeout:.1f}s: {names}")
                readable, _, _ = select.select(list(pending), [], [], left)
                for fd in readable:
                    h, buf = pending[fd]
                    chunk = os.read(fd, 4096)
                    buf += chunk
                    if (_READY + "\n").encode() in buf:
                        del pending[fd]
                    elif not chunk:
                        out = buf.decode(errors="replace").strip()
                        raise RuntimeError(f"test host {h.name} failed to start: {out}")
        finally:
            for h in self.hosts:
                if h._holder is not None and h._holder.stdout is not None:
                    h._holder.stdout.close()
        for h in self.hosts:
            assert h._holder is not None
            h.pid = self._find_pid1(h._holder.pid, deadline)
            h._starttime = _starttime(h.pid)

    def _find_pid1(self, holder_pid: int, deadline: float) -> int:
        path = f"/proc/{holder_pid}/task/{holder_pid}/children"
        while True:
            with contextlib.suppress(FileNotFoundError):
                with open(path) as f:
                    kids = f.read().split()
                for kid in kids:
                    # NSpid "<global> 1" proves it is the init of a nested pid namespace.
                    with open(f"/proc/{kid}/status") as st:
                        for line in st:
                            if line.startswith("NSpid:") and line.split()[-1] == "1":
                                return int(kid)
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no PID-1 found under holder {holder_pid}")
            time.sleep(_POLL)

    def _atexit_close(self) -> None:
        # A forked child inherits atexit handlers; only the creator may tear the hosts down.
        if os.getpid() == self._owner_pid:
            self.close()

    def close(self) -> None:
        """Kill every host and delete the network objects. Idempotent, safe after partial setup."""
        if os.getpid() != self._owner_pid:
            return
        t0 = time.monotonic()
        deadline = t0 + SETUP_TIMEOUT
        errors: list[str] = []
        for h in self.hosts:
            # The start-time check makes sure a recycled pid is never signalled.
            if h.pid and h._starttime is not None and _starttime(h.pid) == h._starttime:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(h.pid, signal.SIGKILL)
            elif h._holder is not None and h._holder.poll() is None:
                # Setup failed before PID-1 was recorded. Its holder is our unreaped child, so
                # its children list is trustworthy; killing the holder alone would rely on
                # --kill-child having been armed already.
                with contextlib.suppress(OSError, RuntimeError):
                    pid1 = self._find_pid1(h._holder.pid, 0.0)
                    os.kill(pid1, signal.SIGKILL)
                h._holder.kill()
        for h in self.hosts:
            holder = h._holder
            if holder is None:
                continue
            if holder.stdout is not None and not holder.stdout.closed:
                holder.stdout.close()
            try:
                holder.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # Killing the holder makes --kill-child SIGKILL the host's PID-1 as well.
                holder.kill()
                try:
                    holder.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    errors.append(f"holder of {h.name} (pid {holder.pid}) did not exit")
        for h in self.hosts:
            while h.pid and _starttime(h.pid) == h._starttime and h._starttime is not None:
                if time.monotonic() >= deadline:
                    errors.append(f"PID-1 of {h.name} (pid {h.pid}) did not die")
                    break
                time.sleep(_POLL)
            h._blocked = False
        # Deleting the home end of a veth deletes its peer too; do it before dropping the netns
        # name so no half-dead pair lingers while the kernel cleans the netns up asynchronously.
        lines = [f"link del {h.veth}" for h in self.hosts if _link_exists(h.veth)]
        lines += [f"netns del {h.netns}" for h in self.hosts if _netns_exists(h.netns)]
        if _link_exists(self.bridge):
            lines.append(f"link del {self.bridge}")
        if lines:
            _ip_batch(lines, check=False)
        left = [h.veth for h in self.hosts if _link_exists(h.veth)]
        left += [f"netns {h.netns}" for h in self.hosts if _netns_exists(h.netns)]
        left += [self.bridge] if _link_exists(self.bridge) else []
        if left:
            errors.append(f"could not delete {', '.join(left)}")
        if not self._closed:
            self.teardown_seconds = time.monotonic() - t0
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self._atexit_close)
        if errors:
            raise RuntimeError("test host teardown incomplete: " + "; ".join(errors))
