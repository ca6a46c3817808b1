"""`qrun agent`: a small per-host daemon that reports the host's load to qrun.

It answers on a CURVE-encrypted ZeroMQ REP socket; clients must know the cluster's agent
public key (from the cluster file), so a load report cannot be forged or read in transit.
The figures come from psutil, or from --load-file, a JSON file read at every request
({"load1": 3.5, "cpus": 8}): load averages are global across namespaces on one machine,
so test clusters and what-if experiments inject their own.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil
import zmq
from qrun.homenode.config import ClusterConfig, ConfigError, load
from qrun.homenode.placement import HostView
from qrun.syscalls import wire

STOP_CHECK_MS = 200   # how often the agent looks for a SIGTERM while no request comes


def figures(load_file: str | None) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    out: dict[str, Any] = {"host": socket.gethostname(), "load1": float(psutil.getloadavg()[0]),
                           "cpus": int(psutil.cpu_count() or 1), "mem_total": int(vm.total),
                           "mem_avail": int(vm.available)}
    if load_file:
        try:
            with open(load_file) as f:
                injected = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {load_file}: {exc}") from None
        if not isinstance(injected, dict):
            raise ValueError(f"cannot read {load_file}: expected a JSON object")
        for key in ("load1", "cpus", "mem_total", "mem_avail"):
            if key in injected:
                try:
                    out[key] = float(injected[key]) if key == "load1" else int(injected[key])
                except (TypeError, ValueError):
                    raise ValueError(f"cannot read {load_file}: {key} is not a number") from None
    return out


def serve(cfg: ClusterConfig, bind: str, load_file: str | None, max_requests: int = 0) -> int:
    if not cfg.agent_secret_key or not cfg.agent_public_key:
        sys.stderr.write("qrun agent: the cluster file has no agent key pair "
                         "(generate one with `qrun agent --keygen`)\n")
        return 2
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.curve_server = True
    sock.curve_secretkey = cfg.agent_secret_key.encode()
    sock.curve_publickey = cfg.agent_public_key.encode()
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(bind)
    except zmq.ZMQError as exc:
        sys.stderr.write(f"qrun agent: cannot listen on {bind}: {exc}\n")
        return 2
    # (a flag the loop looks at, not an exception raised into a blocking recv: libzmq may
    # retry a recv that a signal interrupted, and the agent would not stop)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        _answer(sock, load_file, max_requests, lambda: bool(stop))
    finally:
        # Closed here, not left to the garbage collector at exit: a context terminated
        # while its socket is still open waits for it forever (a SIGTERM would hang).
        sock.close(linger=0)
        ctx.term()
    return 0


def _answer(sock: zmq.Socket, load_file: str | None, max_requests: int,
            stopping: Callable[[], bool]) -> None:
    served = 0
    while (not max_requests or served < max_requests) and not stopping():
        if not sock.poll(STOP_CHECK_MS):
            continue
        try:
            msg = wire.decode(sock.recv())
        except wire.ProtocolError as exc:
            sock.send(wire.encode("error", msg=str(exc), code=2))
            continue
        if msg["t"] != "load?":
            sock.send(wire.encode("error", msg="expected load?", code=2))
            continue
        try:
            sock.send(wire.encode("load", **figures(load_file)))
        except ValueError as exc:
            sock.send(wire.encode("error", msg=str(exc), code=2))
        served += 1


def agent_address(cfg: ClusterConfig, view: HostView) -> str:
    return f"tcp://{view.config.address or view.name}:{cfg.agent_port}"


def query(cfg: ClusterConfig, views: list[HostView], timeout: float = 0.8) -> None:
    """Ask every host's agent at once; fill in what answered within `timeout`."""
    if not cfg.agent_public_key:
        return
    ctx: zmq.Context = zmq.Context.instance()
    pending: dict[zmq.Socket, HostView] = {}
    for v in views:
        s = ctx.socket(zmq.REQ)
        s.curve_serverkey = cfg.agent_public_key.encode()
        pub, sec = zmq.curve_keypair()
        s.curve_publickey, s.curve_secretkey = pub, sec
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.connect(agent_address(cfg, v))
            s.send(wire.encode("load?"))
        except zmq.ZMQError:
            s.close()
            continue
        pending[s] = v
    deadline = time.monotonic() + timeout
    poller = zmq.Poller()
    for s in pending:
        poller.register(s, zmq.POLLIN)
    while pending and time.monotonic() < deadline:
        for s, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            v = pending.pop(s)
            poller.unregister(s)
            try:
                msg = wire.decode(s.recv())
            except wire.ProtocolError:
                msg = {"t": "error"}
            if msg["t"] == "load":
                v.load, v.cpus = float(msg["load1"]), int(msg["cpus"])
                v.mem_total, v.mem_avail = int(msg["mem_total"]), int(msg["mem_avail"])
            s.close()
    for s in pending:
        s.close()


def main(argv: list[str]) -> int:
    from qrun.homenode.cli import Parser  # one-line usage errors, as for qrun itself
    ap = Parser(prog="qrun agent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="cluster file (default: $QRUN_CONF, ~/.config/qrun/config.toml, "
                                     "/etc/qrun/qrun.toml)")
    ap.add_argument("--bind", help="address to listen on (default: tcp://*:<agent_port>)")
    ap.add_argument("--load-file", help="report the figures in this JSON file instead of measuring")
    ap.add_argument("--keygen", action="store_true",
                    help="print a new agent key pair for the cluster file and exit")
    opts = ap.parse_args(argv)
    if opts.keygen:
        pub, sec = zmq.curve_keypair()
        print(f'agent_public_key = "{pub.decode()}"\nagent_secret_key = "{sec.decode()}"')
        return 0
    try:
        cfg = load(opts.config)
    except ConfigError as exc:
        sys.stderr.write(f"qrun agent: {exc}\n")
        return 2
    bind = opts.bind or f"tcp://*:{cfg.agent_port}"
    return serve(cfg, bind, opts.load_file)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
