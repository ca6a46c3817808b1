"""The stub: started by a launcher on the execution host, it phones home, runs the job under
the tracer, streams stdio, relays signals and reports the exit status.

Bootstrap: one JSON line on stdin carries the endpoint and the per-job CURVE keys, so no
secret ever appears on a command line. Everything after that line is not read.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import sys
import time
from typing import Any, NoReturn

import zmq
from qrun.native import ffi, lib
from qrun.remote import statedir
from qrun.remote.cachespace import CacheSpace
from qrun.remote.channel import Credentials, HomeLost, Rpc, claim, connect, held_ipc, try_send
from qrun.remote.fds import FdSpace
from qrun.remote.job import Job
from qrun.remote.spawn import spawn, start_failure
from qrun.remote.stdio import LEASE, StdioPump, eprint, set_winsize
from qrun.remote.trace import CallTrace, select
from qrun.remote.tracer import ARCH, DEBUG, Tracer
from qrun.syscalls import wire
from qrun.syscalls.paths import PathPolicy

EXIT_STUB_FAILURE = 125


def read_bootstrap() -> Credentials:
    line = b""
    while not line.endswith(b"\n"):
        ch = os.read(0, 1)  # one byte at a time: nothing past the line is consumed
        if not ch:
            break
        line += ch
        if len(line) > 65536:
            raise ValueError("bootstrap line too long")
    d = json.loads(line)
    plain = d.get("encrypted") is False and str(d["endpoint"]).startswith("ipc://")
    lease = d.get("lease", LEASE)
    return Credentials(endpoint=d["endpoint"], server_key=d["server_key"].encode(),
                       public=d["public"].encode(), secret=d["secret"].encode(), job=str(d["job"]),
                       encrypted=not plain, rendezvous=d.get("rendezvous") in ("job", "array"),
                       array=d.get("rendezvous") == "array",
                       lease=float(lease) if isinstance(lease, (int, float)) else LEASE)


def handshake(rpc: Rpc, cred: Credentials, timeout: float) -> dict[str, Any]:
    hello = wire.encode("hello", job=cred.job, arch=ARCH, digest=wire.table_digest(),
                        version=wire.PROTOCOL_VERSION, host=socket.gethostname(), pid=os.getpid())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not rpc.sock.poll(200, zmq.POLLOUT) or not try_send(rpc.sock, hello):
            continue  # not connected (yet): the home node may still be coming up
        if rpc.sock.poll(2000):
            msg = wire.decode(rpc.sock.recv())
            if msg["t"] == "welcome":
                return msg
            if msg["t"] == "error":
                raise SystemExit(f"qrun-stub: the home node refused the job: {msg['msg']}")
    raise HomeLost(f"the home node did not answer at {cred.endpoint}")


class PlainJob:
    """What the stdio pump needs of a job that runs without the tracer."""

    def __init__(self) -> None:
        self.main_pid = 0

    def remote_pid(self, home_pid: int) -> int | None:
        return None  # a plain job's processes have no home pids: signals go to its group

    @property
    def job_stopped(self) -> bool:
        try:
            with open(f"/proc/{self.main_pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] == b"T"
        except (OSError, IndexError):
            return False

    def kill_all(self) -> None:
        if self.main_pid:
            try:
                os.killpg(self.main_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def login_env() -> dict[str, str]:
    """What a fresh login on this host would start with (whatever the launcher passed on)."""
    try:
        pw = pwd.getpwuid(os.getuid())
        home, user, shell = pw.pw_dir, pw.pw_name, pw.pw_shell or "/bin/sh"
    except KeyError:
        home, user, shell = "/", str(os.getuid()), "/bin/sh"
    return {"HOME": home, "USER": user, "LOGNAME": user, "SHELL": shell,
            "PATH": "/usr/local/bin:/usr/bin:/bin"}


def plain_env(welcome: dict[str, Any], pty: dict[str, Any] | None = None) -> dict[str, str]:
    """--export: ALL is home's environment; NONE a fresh login environment of this host;
    a list is that plus the named variables (with home's or the given values). A job on
    a terminal always gets home's TERM."""
    export = welcome["options"].get("export", {"mode": "ALL"})
    if export.get("mode") == "ALL":
        return {str(k): str(v) for k, v in welcome["env"].items()}
    env = login_env()
    if pty is not None and pty.get("term"):
        env["TERM"] = str(pty["term"])
    if export.get("mode") == "LIST":
        env.update({str(k): str(v) for k, v in export.get("vars", {}).items()})
    return env


def start_stdio(ctl: zmq.Socket, timeout: float, job: Tracer | PlainJob, pty: dict[str, Any] | None = None,
                lease: float = LEASE) -> tuple[StdioPump, tuple[int, int, int]]:
    """The job's stdin/stdout/stderr (pipes, or one pty of the given size), relayed home by
    a running pump; returns the job's ends (the caller closes them once the job has them)."""
    if pty is not None:
        master, slave = os.openpty()
        os.set_inheritable(master, False)
        os.set_inheritable(slave, False)
        set_winsize(master, int(pty.get("rows", 24)), int(pty.get("cols", 80)))
        os.set_blocking(master, False)
        writer = os.dup(master)  # closed at home's end of input; the pty itself stays
        os.set_inheritable(writer, False)
        pump = StdioPump(ctl, timeout, {master: 1}, writer, job, lease)  # type: ignore[arg-type]
        pump.pty = master
        pump.start()
        return pump, (slave, os.dup(slave), os.dup(slave))
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(in_w, False)
    pump = StdioPump(ctl, timeout, {out_r: 1, err_r: 2}, in_w, job, lease)  # type: ignore[arg-type]
    pump.start()
    return pump, (in_r, out_w, err_w)


def report_exit(pump: StdioPump, status: dict[str, Any], host: str,
                data: dict[str, int] | None = None, exit_with_job: bool = False) -> int:
    """Send how the job ended (with its resource usage and, for a transparent job, what
    its data path moved) and wait for home's goodbye."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    usage = {"utime": ru.ru_utime, "stime": ru.ru_stime, "maxrss_kb": ru.ru_maxrss, **(data or {})}
    pump.finish({"status": status, "usage": {**usage, "reconnects": pump.reconnects}, "host": host})
    pump.done.wait(pump.timeout + pump.lease + 30)   # (it waits out home's absence, up to the lease)
    if not exit_with_job:
        return 0
    return 128 + int(status["signal"]) if "signal" in status else int(status.get("code", 0))


def run_plain(ctl: zmq.Socket, welcome: dict[str, Any], timeout: float) -> int:
    """Plain remote execution (rsh/GNU Queue style): no tracing, the host's own files."""
    argv = [str(a) for a in welcome["argv"]]
    cwd = str(welcome["cwd"])
    host = socket.gethostname()
    os.umask(int(welcome["umask"]))
    job = PlainJob()
    pty = welcome["options"].get("pty")
    pump, stdio = start_stdio(ctl, timeout, job, pty, lease_of(welcome))
    try:
        # (closed before any report: the pump sends the exit once the job's ends are shut)
        missing_cwd = not os.path.isdir(cwd)
        if not missing_cwd:
            job.main_pid, wait_pid, err_fd = spawn(argv, plain_env(welcome, pty), cwd, stdio, None,
                                                   terminal=pty is not None)
            pump.job_started()
    except OSError as exc:
        eprint(f"cannot fork: {exc.strerror}")
        return EXIT_STUB_FAILURE
    finally:
        for fd in stdio:
            os.close(fd)
    if missing_cwd:
        return report_exit(pump, {"code": 1, "error_kind": "remote_cwd",
                                  "error": f"the working directory {cwd} does not exist on {host}"}, host,
                           exit_with_job=welcome["options"]["exit_with_job"])
    while True:
        try:
            _, status = os.waitpid(wait_pid, 0)
            break
        except InterruptedError:
            continue
    job.kill_all()  # nothing the job left behind outlives it
    result = wait_status_to_wire(status) | start_failure(err_fd)
    return report_exit(pump, result, host, exit_with_job=welcome["options"]["exit_with_job"])


def wait_status_to_wire(status: int) -> dict[str, object]:
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status), "core": os.WCOREDUMP(status)}
    return {"code": os.WEXITSTATUS(status)}


def isolate(opts: argparse.Namespace) -> str | None:
    """Make this (namespaced) host what the launcher asked for. Runs once both home
    connections are up. qrun's own installation stays visible (read-only) wherever it lies
    below a hidden directory: a module Python loads late must still be there."""
    if opts.hostname:
        socket.sethostname(opts.hostname)
    covers = [(p, "mode=1777", False) for p in (("/tmp", "/dev/shm") if opts.private_tmp else ())]
    covers += [(p, "size=64k,mode=0755", True) for p in opts.hide]
    for path, options, readonly in covers:
        if readonly and not os.path.isdir(path):
            continue   # (none, or gone with a directory hidden before it: the submit one in home)
        keep = [k for k in own_installation() if k.startswith(path.rstrip("/") + "/")]
        rc = lib.qr_cover(os.fsencode(path), options.encode(), int(readonly),
                          b"".join(os.fsencode(k) + b"\0" for k in keep) + b"\0")
        if rc < 0:
            return f"cannot {'hide' if readonly else 'empty'} {path}: {os.strerror(-rc)}"
    return None


def own_installation() -> list[str]:
    """The directories the stub's Python and qrun's packages are loaded from."""
    import qrun.homenode
    import qrun.native
    import qrun.remote
    import qrun.syscalls
    dirs = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    dirs |= {os.path.realpath(os.path.dirname(m.__file__ or "")) for m in
             (qrun.homenode, qrun.native, qrun.remote, qrun.syscalls)}
    return sorted(d for d in dirs if d != "/")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="qrun-stub", description=__doc__)
    ap.add_argument("--hide", action="append", default=[],
                    help="mount an empty directory over PATH before the job starts")
    ap.add_argument("--hostname", help="set this (namespaced) host's name first")
    ap.add_argument("--private-tmp", action="store_true",
                    help="give this (namespaced) host an empty /tmp and /dev/shm first")
    opts = ap.parse_args(argv)
    try:
        cred = read_bootstrap()
    except (ValueError, KeyError) as exc:
        eprint(f"bad bootstrap line on stdin: {exc}")
        return EXIT_STUB_FAILURE
    # SIGPIPE stays ignored (Python's default) in the stub itself: a write to a stderr
    # whose reader is gone (qrun killed, its lease running) must not kill it. The job gets
    # the default back (native/_source.c, job_child).
    ctx = zmq.Context()
    state, alive = "", -1
    try:
        from_slurm = cred.rendezvous
        if from_slurm:
            cred = claim(ctx, cred, eprint)
        cred.endpoint = held_ipc(cred.endpoint)
        rpc = Rpc(connect(ctx, cred, "rpc"), timeout=30.0)
        welcome = handshake(rpc, cred, timeout=30.0)
        # Slurm's afterok and sacct read a batch script's status: it is the job's.
        welcome["options"]["exit_with_job"] = from_slurm
        timeout = float(welcome["options"].get("timeout", 30.0))
        rpc.timeout, rpc.lease = timeout, lease_of(welcome)
        ctl = connect(ctx, cred, "ctl")
        if not control_ready(ctl, timeout):
            eprint("the home node did not answer on the control connection")
            return EXIT_STUB_FAILURE
        problem = isolate(opts)
        if problem:
            eprint(problem)
            return EXIT_STUB_FAILURE
        if welcome["options"].get("mode") == "plain":
            return run_plain(ctl, welcome, timeout)
        root = statedir.cache_root(welcome["options"].get("cache"))
        if root is None:
            return EXIT_STUB_FAILURE
        statedir.sweep(root)
        state, alive = statedir.make(root)
        return run_job(ctl, rpc, welcome, state, timeout)
    except HomeLost as exc:
        eprint(str(exc))
        return EXIT_STUB_FAILURE
    finally:
        if state:
            shutil.rmtree(state, ignore_errors=True)
            os.close(alive)
        ctx.destroy(linger=0)


def lease_of(welcome: dict[str, Any]) -> float:
    """How long the job outlives contact with home, past the silence timeout."""
    lease = welcome["options"].get("lease", LEASE)
    return float(lease) if isinstance(lease, (int, float)) and 0 <= lease < 1e8 else LEASE


def control_ready(ctl: zmq.Socket, timeout: float) -> bool:
    """Signals and stdin from home travel on the control connection: it must be up (and
    known to home) before the job starts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ctl.poll(100, zmq.POLLOUT) or not try_send(ctl, wire.encode("ping")):
            continue  # (connecting: a ping sent now would be dropped, and waited for)
        if ctl.poll(100):
            while ctl.poll(0):
                if wire.decode(ctl.recv())["t"] == "pong":
                    return True
    return False


def run_job(ctl: zmq.Socket, rpc: Rpc, welcome: dict[str, Any], state: str, timeout: float) -> int:
    cache = welcome["options"].get("cache")
    limit = cache.get("limit", 0) if isinstance(cache, dict) else 0
    space = CacheSpace(state, limit if isinstance(limit, int) and limit > 0 else 0, eprint)
    low = space.check()
    if low:
        eprint(low)
    fds = FdSpace(state, space)
    policy = PathPolicy.from_wire(welcome["policy"])
    env = {str(k): str(v) for k, v in welcome["env"].items()}
    argv = [str(a) for a in welcome["argv"]]
    cwd = str(welcome["cwd"])
    real_cwd = fds.empty_dir if policy.routes_home(cwd) else cwd
    os.umask(int(welcome["umask"]))

    def warn(msg: str) -> None:
        eprint(msg)

    job = Job.build(rpc, fds, policy, welcome["identity"], ARCH, warn, debug=DEBUG)
    trace_spec = welcome["options"].get("trace")
    trace = None
    if isinstance(trace_spec, str):
        mark = "\x1eqrun-trace " if welcome["options"].get("trace_marked") else ""
        trace = CallTrace(select(trace_spec), sys.stderr, job.pids.to_home, lambda: rpc.seq, mark)
    tracer = Tracer(job, trace)
    pty = welcome["options"].get("pty")
    pump, stdio = start_stdio(ctl, timeout, tracer, pty, lease_of(welcome))
    tracer.on_stop_change = pump.wake
    try:
        tracer.spawn(argv, env, cwd, real_cwd, stdio, terminal=pty is not None)
        pump.job_started()
    finally:
        for fd in stdio:
            os.close(fd)
    try:
        status = tracer.run()
    except HomeLost as exc:
        eprint(f"{exc}; killing the job")
        tracer.kill_all()
        while tracer.threads or tracer.early:
            tracer.dispatch(*tracer.next_event(ffi.new("int *")))
        return EXIT_STUB_FAILURE
    if pump.home_lost.is_set():
        return EXIT_STUB_FAILURE
    for path, err in job.live.sync_all():  # (files still mapped when the job ended)
        eprint(f"{path}: writing the job's changes back failed ({err}); they are not at home")
    result = wait_status_to_wire(status) | tracer.start_failure()
    cached = job.meta.hits + (job.loop.hits if job.loop else 0)
    data = {"calls": rpc.seq, "cached": cached, "listed": job.meta.derived, "reopened": job.kept.reused,
            "fetched": job.fetched, "written_back": job.live.bytes_sent, "evicted": space.evicted}
    return report_exit(pump, result, socket.gethostname(), data, welcome["options"]["exit_with_job"])


def entry(argv: list[str] | None = None) -> NoReturn:
    """The stub's whole life, started (`python -m qrun.remote.stub`) or forked by qrun on
    this machine (homenode/forkedstub.py)."""
    try:
        with open("/proc/self/comm", "w") as f:   # (what ps and pgrep show: not just "python")
            f.write("qrun-stub")
    except OSError:
        pass
    # Started with SIGCHLD ignored (a launcher's or qrun's caller's doing), the kernel
    # would reap the job itself, and its status would be lost.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        code = main(argv)
    except SystemExit as exc:   # (as the interpreter would: a message means status 1)
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            sys.stderr.write(f"{exc.code}\n")
            code = 1
    # The job is reaped and reported, the state directory gone, the sockets closed: no
    # need for the interpreter's teardown, which qrun would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
