"""Where a job runs: the host, from the options and the cluster file, and its launcher."""

from __future__ import annotations

import argparse
import sys
import time

from qrun.homenode import config, exitcodes, hostlist, launchers
from qrun.homenode.cli_options import BUILTIN_HOSTS
from qrun.homenode.placement import HostView, Ledger, PlacementError, Requirement, choose, views_for


def where_to_run(opts: argparse.Namespace, cfg: config.ClusterConfig, job: str, stub: list[str],
                 cwd: str, requirements: list[Requirement],
                 patient: bool = False) -> tuple[launchers.Launch, Ledger | None]:
    """Pick the host and its launcher: "where" is decided here, the stub is always the same.
    `patient` (a batch job): while every fitting host is full, wait for one to free up."""
    if opts.via:
        _no_requirements(requirements, "--via")
        addr = opts.home_addr or cfg.home_addr
        if not addr:
            raise launchers.LaunchError("--via needs --home-addr ADDR (or home_addr in the cluster "
                                        "file): where the stub can reach this machine", exitcodes.USAGE)
        return launchers.via(job, stub, opts.via, addr), None
    wanted = hostlist.expand(opts.host) if opts.host else []
    excluded = hostlist.expand(opts.exclude) if opts.exclude else []
    launch = _builtin_host(opts, cfg, job, stub, cwd, requirements, wanted, excluded)
    if launch is not None:
        return launch, None
    return _cluster_host(opts, cfg, job, stub, requirements, wanted, excluded, patient)


def _builtin_host(opts: argparse.Namespace, cfg: config.ClusterConfig, job: str, stub: list[str],
                  cwd: str, requirements: list[Requirement], wanted: list[str],
                  excluded: list[str]) -> launchers.Launch | None:
    """The launch for a host not of the cluster file (local, sandbox, a node Slurm chooses
    or names), if that is where the job goes."""
    if wanted == ["local"]:
        _no_requirements(requirements, "the local host")
        return launchers.local(job, stub)
    if wanted == ["sandbox"] or (not wanted and not cfg.hosts and opts.launcher != "slurm"):
        _no_requirements(requirements, "the sandbox host" if wanted else
                         "the sandbox host (no cluster file defines hosts)")
        return launchers.sandbox(job, stub, launchers.hidden_paths(cwd))
    if opts.launcher == "slurm" and not any(n in cfg.hosts for n in wanted):
        _no_requirements(requirements, "a node Slurm chooses" if not wanted else
                         f"{wanted[0]}, which is not in the cluster file")
        if len(wanted) > 1:
            raise launchers.LaunchError("with --launcher slurm, name one node with -w "
                                        "(or none, and Slurm chooses)", exitcodes.USAGE)
        return launchers.slurm(job, stub, wanted[0] if wanted else None, opts.home_addr or cfg.home_addr,
                               srun_command=cfg.srun_command, exclude=sorted(excluded))
    return None


def _cluster_host(opts: argparse.Namespace, cfg: config.ClusterConfig, job: str, stub: list[str],
                  requirements: list[Requirement], wanted: list[str],
                  excluded: list[str], patient: bool) -> tuple[launchers.Launch, Ledger]:
    """A host of the cluster file, chosen by load and counted as running the job."""
    if not cfg.hosts:
        raise launchers.LaunchError(f"unknown host '{opts.host}' (known: {', '.join(BUILTIN_HOSTS)}; "
                                    "or use --via PREFIX)", exitcodes.NO_HOST)
    views_for(cfg, wanted + [n for n in excluded if n not in wanted])  # every name must be known
    names = [n for n in (wanted or list(cfg.hosts)) if n not in excluded]
    if not names:
        raise PlacementError(f"the host list {opts.host or '(all)'} minus {opts.exclude} matches "
                             "no host")
    views = views_for(cfg, names)
    ledger = Ledger()
    if (len(views) > 1 or requirements) and cfg.agent_public_key:
        from qrun.homenode import agent  # psutil and friends: only when loads are asked for
        agent.query(cfg, views)
    else:
        assume_idle(views)  # one host named explicitly: just go there
    chosen = _claim(cfg, ledger, views, requirements, patient)
    try:
        return _launch_on(chosen.config, opts, cfg, job, stub), ledger
    except launchers.LaunchError:
        ledger.release()
        raise


def _launch_on(h: config.HostConfig, opts: argparse.Namespace, cfg: config.ClusterConfig, job: str,
               stub: list[str]) -> launchers.Launch:
    launcher = opts.launcher or h.launcher
    host_stub = h.stub.split() if h.stub else stub
    home_addr = opts.home_addr or cfg.home_addr
    if launcher == "slurm":
        launch = launchers.slurm(job, host_stub, h.address or h.name, home_addr, h.partition,
                                 srun_command=cfg.srun_command)
    else:
        launch = launchers.ssh(job, host_stub, h.name, h.target, home_addr, cfg.ssh_command)
    launch.home_roots = list(h.home_roots)
    launch.cache_dir, launch.cache_limit = h.cache_dir, h.cache_limit
    return launch


def _no_requirements(requirements: list[Requirement], where: str) -> None:
    if requirements:
        raise launchers.LaunchError(f"--require applies only to the hosts of the cluster file, not to "
                                    f"{where}", exitcodes.USAGE)


def assume_idle(views: list[HostView]) -> None:
    """Without agents every host counts as idle, so only the virtual load of recent
    dispatches separates them: jobs are spread round-robin."""
    for v in views:
        v.load, v.cpus = 0.0, 1


def _claim(cfg: config.ClusterConfig, ledger: Ledger, views: list[HostView],
           requirements: list[Requirement], patient: bool) -> HostView:
    """Choose a host and count this job as running there, waiting (with a message) while
    the user's cluster-wide cap on running jobs is reached, and, if `patient`, while every
    host that would do is full (its max_jobs) or busy (its max_load, as GNU Queue's
    load threshold). (The loads are those obtained when it started.)"""
    announced = ""
    while True:
        ledger.annotate(views)
        try:
            chosen = choose(views, requirements)
        except PlacementError as exc:
            if not patient or not any(v.why_not.startswith(("full", "busy")) for v in views):
                raise
            why = f"every host that fits is full or busy ({exc})"
        else:
            if ledger.claim(chosen.name, cfg.max_jobs_per_user):
                return chosen
            why = f"{cfg.max_jobs_per_user} of your jobs are running (max_jobs_per_user)"
        if why != announced:
            sys.stderr.write(f"qrun: waiting: {why}\n")
            announced = why
        time.sleep(0.5)
        for v in views:
            v.why_not = ""
