"""`qrun hosts`: the cluster's hosts, their load and whether a job could go there."""

from __future__ import annotations

import json

from qrun.homenode import config, exitcodes, hostlist
from qrun.homenode.cli_options import Parser
from qrun.homenode.cli_report import fail
from qrun.homenode.cli_where import assume_idle
from qrun.homenode.placement import HostView, Ledger, PlacementError, Requirement, choose, views_for


def hosts_command(args: list[str]) -> int:
    ap = Parser(prog="qrun hosts", description="Show the cluster's hosts and their load.")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("-w", "--host", metavar="HOSTS", help="only these hosts (host list syntax)")
    ap.add_argument("--config", metavar="FILE", help="cluster file")
    ap.add_argument("--require", action="append", default=[], metavar="EXPR",
                    help="mark hosts failing this requirement as not eligible")
    opts = ap.parse_args(args)
    try:
        cfg = config.load(opts.config)
        names = hostlist.expand(opts.host) if opts.host else list(cfg.hosts)
        requirements = [Requirement.parse(r) for r in opts.require]
        ledger = Ledger()
    except (ValueError, PlacementError, config.ConfigError) as exc:
        return fail(str(exc), exitcodes.USAGE)
    try:
        views = views_for(cfg, names)
    except PlacementError as exc:  # an unknown name: the same status as for a job
        return fail(str(exc), exitcodes.NO_HOST)
    if cfg.agent_public_key:
        from qrun.homenode import agent
        agent.query(cfg, views)
    else:
        assume_idle(views)  # as a job would: spread round-robin by recent dispatches
    try:
        ledger.annotate(views)
    except config.ConfigError as exc:
        return fail(str(exc), exitcodes.USAGE)
    try:
        choose(views, requirements)
    except PlacementError:
        pass
    if opts.json:
        print(json.dumps([v.to_json() for v in views], indent=2))
    else:
        _print_table(cfg, views)
    return 0


def _print_table(cfg: config.ClusterConfig, views: list[HostView]) -> None:
    rows = [("HOST", "STATE", "LOAD", "CPUS", "SPEED", "MEM", "RUNNING", "MAX", "SCORE", "LAUNCHER",
             "RESOURCES", "NOTE")]
    for v in views:
        c = v.config
        rows.append((c.name, v.state, "-" if v.load is None else f"{v.load:.2f}", str(v.cpus or "-"),
                     f"{c.speed:g}", f"{c.memory:g}", str(v.running), str(c.max_jobs or "-"),
                     "-" if v.load is None else f"{v.score:.3f}", c.launcher,
                     ",".join(f"{k}={val:g}" for k, val in sorted(c.resources.items())) or "-",
                     v.why_not))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if not views:
        print("(no hosts: add [hosts.NAME] tables to the cluster file)")
    elif not cfg.agent_public_key:
        print("(no agents configured: load is not measured, jobs are spread round-robin)")
