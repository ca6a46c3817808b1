"""The stub: started by a launcher on the execution host, it phones home, runs the job under
the tracer, streams stdio, relays signals and reports the exit status.

Bootstrap: one JSON line on stdin carries the endpoint and the per-job CURVE keys, so no
secret ever appears on a command line. Everything after that line is not read.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import struct
import sys
import tempfile
import termios
import threading
import time
from typing import Any

import zmq
from qrun.native import ffi, lib
from qrun.remote.channel import Credentials, HomeLost, Rpc, connect, try_send
from qrun.remote.fds import FdSpace
from qrun.remote.job import Job
from qrun.remote.spawn import spawn, start_failure
from qrun.remote.trace import CallTrace, select
from qrun.remote.tracer import ARCH, DEBUG, Tracer
from qrun.syscalls import wire
from qrun.syscalls.paths import PathPolicy
from zmq.utils.monitor import recv_monitor_message

EXIT_STUB_FAILURE = 125
STOPPED_GRACE = 300.0   # seconds a stopped job waits for a home node that closed its connection
EXIT_RESEND = 0.3   # seconds between resends of the job's exit report until home acknowledges


def eprint(msg: str) -> None:
    sys.stderr.write(f"qrun-stub: {msg}\n")
    sys.stderr.flush()


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
    return Credentials(endpoint=d["endpoint"], server_key=d["server_key"].encode(),
                       public=d["public"].encode(), secret=d["secret"].encode(), job=d["job"])


class StdioPump(threading.Thread):
    """Moves the job's stdio and home's signals over the control connection."""

    def __init__(self, sock: zmq.Socket, timeout: float, out_fds: dict[int, int], in_fd: int,
                 tracer: Tracer) -> None:
        super().__init__(daemon=True, name="qrun-stdio")
        self.sock = sock
        self.timeout = timeout
        self.out_fds = dict(out_fds)  # pipe read end -> stream number
        self.in_fd: int | None = in_fd
        self.in_buf = bytearray()
        self.in_eof = False
        self.tracer = tracer
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.final: dict[str, Any] | None = None
        self.home_lost = threading.Event()
        self.told_stopped = False
        self.pty: int | None = None   # the pty master, when the job has a terminal
        self.ctl_seen = 0   # home's control messages handled, in order (acknowledged in pings)
        self.last_heard = time.monotonic()
        self.done = threading.Event()

    def wake(self) -> None:
        os.write(self.wake_w, b"x")

    def finish(self, exit_msg: dict[str, Any]) -> None:
        self.final = exit_msg
        os.write(self.wake_w, b"x")

    def run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # never die silently: the job would hang on a full pipe
            eprint(f"stdio relay failed: {exc}")
            self.home_lost.set()
            self.tracer.kill_all()
        finally:
            self.done.set()

    def _loop(self) -> None:
        self.last_heard = time.monotonic()
        last_ping = 0.0
        bye_deadline: float | None = None
        last_exit = 0.0
        # A home node that dies closes its connection: notice that within seconds rather
        # than after the silence timeout (which still covers a network that drops packets).
        monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED)
        disconnected_at: float | None = None
        grace = min(3.0, self.timeout)
        try_send(self.sock, wire.encode("ping", ack=self.ctl_seen))
        for fd in self.out_fds:
            os.set_blocking(fd, False)
        while True:
            poller = zmq.Poller()
            poller.register(self.sock, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            poller.register(self.wake_r, zmq.POLLIN)
            for fd in self.out_fds:
                poller.register(fd, zmq.POLLIN)
            if self.in_fd is not None and (self.in_buf or self.in_eof):
                poller.register(self.in_fd, zmq.POLLOUT)
            events = dict(poller.poll(500 if self.final is None else int(EXIT_RESEND * 1000)))
            now = time.monotonic()
            if monitor in events:
                while monitor.poll(0):
                    event = recv_monitor_message(monitor)["event"]
                    if event == zmq.EVENT_DISCONNECTED:
                        disconnected_at = disconnected_at or now
                    elif event == zmq.EVENT_CONNECTED:
                        disconnected_at = None
            # A stopped job's home node may be stopped too (qrun stops with its job): give it
            # long enough to be resumed before counting it as gone.
            allowed = STOPPED_GRACE if self.told_stopped else grace
            if disconnected_at is not None and now - disconnected_at > allowed and bye_deadline is None:
                eprint(f"the home node closed the connection ({grace:.0f} s ago); killing the job")
                self.home_lost.set()
                self.tracer.kill_all()
                return
            if self.sock in events:
                seen = self.ctl_seen
                while self.sock.poll(0):
                    msg = wire.decode(self.sock.recv())
                    self.last_heard = now
                    self._control(msg)
                    if msg["t"] == "bye":
                        return
                if self.ctl_seen != seen:  # acknowledge at once: home holds them until then
                    try_send(self.sock, wire.encode("ping", ack=self.ctl_seen))
            for fd in list(self.out_fds):
                if fd in events:
                    self._drain(fd)
            if self.in_fd is not None and self.in_fd in events:
                self._feed()
            if self.wake_r in events:
                os.read(self.wake_r, 64)
            if self.final is not None and not self.out_fds:
                # Resent until home says bye: one lost message must not change the outcome.
                if bye_deadline is None:
                    bye_deadline, last_exit = now + 10, 0.0
                if now - last_exit >= EXIT_RESEND:
                    try_send(self.sock, wire.encode("exit", **self.final))
                    last_exit = now
            if bye_deadline is not None and now > bye_deadline:
                return
            if now - last_ping >= 1.0:
                try_send(self.sock, wire.encode("ping", ack=self.ctl_seen))
                last_ping = now
            stopped = self.tracer.job_stopped
            if stopped != self.told_stopped:
                # Home stops too (its shell gets the prompt back) and says nothing meanwhile.
                try_send(self.sock, wire.encode("state", stopped=stopped))
                self.told_stopped = stopped
            if stopped:
                self.last_heard = now  # a stopped job does not miss its stopped home node
            if now - self.last_heard > self.timeout:
                eprint(f"lost contact with the home node (silent for {self.timeout:.0f} s); "
                       "killing the job")
                self.home_lost.set()
                self.tracer.kill_all()
                return

    def _control(self, msg: dict[str, Any]) -> None:
        t = msg["t"]
        n = msg.get("n")
        if isinstance(n, int):
            if n != self.ctl_seen + 1:
                return  # a resend of one we had, or one after a lost one: it comes again
            self.ctl_seen = n
        if t == "in":
            if msg["d"]:
                self.in_buf += msg["d"]
            else:
                self.in_eof = True
        elif t == "sig":
            self._signal(msg["pid"], msg["sig"])
        elif t == "winch" and self.pty is not None:
            set_winsize(self.pty, msg["rows"], msg["cols"])  # the kernel tells the job (SIGWINCH)
        elif t == "closed":
            # Home's reader of this stream has gone: close our end of the job's pipe, so
            # its next write fails with EPIPE (SIGPIPE) as it would at home.
            for fd, stream in list(self.out_fds.items()):
                if stream == msg["fd"]:
                    os.close(fd)
                    del self.out_fds[fd]

    def _signal(self, home_pid: int, sig: int) -> None:
        try:
            if home_pid == 0:
                os.killpg(self.tracer.main_pid, sig)
            else:
                remote = self.tracer.remote_pid(home_pid)
                if remote is not None:
                    os.kill(remote, sig)
        except (ProcessLookupError, PermissionError, ValueError):
            pass

    def _drain(self, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:  # EIO: a pty whose every slave end is closed (the job is gone)
            data = b""
        if data:
            # Blocking here is flow control (the home node is slow); a dead home node is
            # caught by the silence timer, which the send timeout lets run.
            while not try_send(self.sock, wire.encode("out", fd=self.out_fds[fd], d=data)):
                if time.monotonic() - self.last_heard > self.timeout:
                    return
        else:
            os.close(fd)
            del self.out_fds[fd]

    def _feed(self) -> None:
        fd = self.in_fd
        assert fd is not None
        try:
            if self.in_buf:
                n = os.write(fd, self.in_buf[:1 << 16])
                del self.in_buf[:n]
            if not self.in_buf and self.in_eof:
                os.close(fd)
                self.in_fd = None
        except BrokenPipeError:  # the job closed its stdin: drop the rest, as a pipe would
            os.close(fd)
            self.in_fd = None
        except BlockingIOError:
            pass


def handshake(rpc: Rpc, cred: Credentials, timeout: float) -> dict[str, Any]:
    hello = wire.encode("hello", job=cred.job, arch=ARCH, digest=wire.table_digest(),
                        version=wire.PROTOCOL_VERSION, host=socket.gethostname(), pid=os.getpid())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not try_send(rpc.sock, hello):
            time.sleep(0.2)  # not connected (yet): the home node may still be coming up
            continue
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
        self.remote_of: dict[int, int] = {}

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


def start_stdio(ctl: zmq.Socket, timeout: float, job: Tracer | PlainJob,
                pty: dict[str, Any] | None = None) -> tuple[StdioPump, tuple[int, int, int]]:
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
        pump = StdioPump(ctl, timeout, {master: 1}, writer, job)  # type: ignore[arg-type]
        pump.pty = master
        pump.start()
        return pump, (slave, os.dup(slave), os.dup(slave))
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(in_w, False)
    pump = StdioPump(ctl, timeout, {out_r: 1, err_r: 2}, in_w, job)  # type: ignore[arg-type]
    pump.start()
    return pump, (in_r, out_w, err_w)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", max(0, min(rows, 65535)),
                                                     max(0, min(cols, 65535)), 0, 0))


def report_exit(pump: StdioPump, status: dict[str, Any], host: str) -> int:
    """Send how the job ended (with its resource usage) and wait for home's goodbye."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    pump.finish({"status": status, "usage": {"utime": ru.ru_utime, "stime": ru.ru_stime,
                                             "maxrss_kb": ru.ru_maxrss}, "host": host})
    pump.done.wait(15)
    return 0


def run_plain(ctl: zmq.Socket, welcome: dict[str, Any], timeout: float) -> int:
    """Plain remote execution (rsh/GNU Queue style): no tracing, the host's own files."""
    argv = [str(a) for a in welcome["argv"]]
    cwd = str(welcome["cwd"])
    host = socket.gethostname()
    os.umask(int(welcome["umask"]))
    job = PlainJob()
    pty = welcome["options"].get("pty")
    pump, stdio = start_stdio(ctl, timeout, job, pty)
    try:
        # (closed before any report: the pump sends the exit once the job's ends are shut)
        missing_cwd = not os.path.isdir(cwd)
        if not missing_cwd:
            job.main_pid, wait_pid, err_fd = spawn(argv, plain_env(welcome, pty), cwd, stdio, None,
                                                   terminal=pty is not None)
    except OSError as exc:
        eprint(f"cannot fork: {exc.strerror}")
        return EXIT_STUB_FAILURE
    finally:
        for fd in stdio:
            os.close(fd)
    if missing_cwd:
        return report_exit(pump, {"code": 1, "error_kind": "remote_cwd",
                                  "error": f"the working directory {cwd} does not exist on {host}"}, host)
    while True:
        try:
            _, status = os.waitpid(wait_pid, 0)
            break
        except InterruptedError:
            continue
    job.kill_all()  # nothing the job left behind outlives it
    result = wait_status_to_wire(status) | start_failure(err_fd)
    return report_exit(pump, result, host)


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
    covers += [(p, "size=64k,mode=0755", True) for p in opts.hide if os.path.isdir(p)]
    for path, options, readonly in covers:
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
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ctx = zmq.Context()
    rpc = Rpc(connect(ctx, cred, "rpc"), timeout=30.0)
    state = ""
    try:
        welcome = handshake(rpc, cred, timeout=30.0)
        timeout = float(welcome["options"].get("timeout", 30.0))
        rpc.timeout = timeout
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
        sweep_stale_state()
        state = tempfile.mkdtemp(prefix=f"qrun-stub-{os.getpid()}-")
        return run_job(ctl, rpc, welcome, state, timeout)
    except HomeLost as exc:
        eprint(str(exc))
        return EXIT_STUB_FAILURE
    finally:
        if state:
            shutil.rmtree(state, ignore_errors=True)
        ctx.destroy(linger=0)


def sweep_stale_state() -> None:
    """Remove state directories of stubs that were killed (SIGKILL leaves no chance to
    clean up): `qrun-stub-<pid>-*` of ours whose pid is gone."""
    tmp = tempfile.gettempdir()
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) < 4 or parts[:2] != ["qrun", "stub"] or not parts[2].isdigit():
            continue
        path = os.path.join(tmp, name)
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def control_ready(ctl: zmq.Socket, timeout: float) -> bool:
    """Signals and stdin from home travel on the control connection: it must be up (and
    known to home) before the job starts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try_send(ctl, wire.encode("ping"))
        if ctl.poll(100):
            while ctl.poll(0):
                if wire.decode(ctl.recv())["t"] == "pong":
                    return True
    return False


def run_job(ctl: zmq.Socket, rpc: Rpc, welcome: dict[str, Any], state: str, timeout: float) -> int:
    fds = FdSpace(state)
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
    pump, stdio = start_stdio(ctl, timeout, tracer, pty)
    tracer.on_stop_change = pump.wake
    try:
        tracer.spawn(argv, env, cwd, real_cwd, stdio, terminal=pty is not None)
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
    result = wait_status_to_wire(status) | tracer.start_failure()
    return report_exit(pump, result, socket.gethostname())


if __name__ == "__main__":
    sys.exit(main())
