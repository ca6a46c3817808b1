"""The cluster file: which hosts exist, how to reach them and how to weigh them.

Looked up, first found wins: `--config FILE`, $QRUN_CONF, ~/.config/qrun/config.toml,
/etc/qrun/qrun.toml. Example:

    home_addr = "10.0.0.1"          # where stubs connect back to (default: guessed per host)
    ssh_command = "ssh"             # how to run ssh (e.g. "ssh -F /path/config")
    srun_command = "srun"
    max_jobs_per_user = 8           # cluster-wide cap on one user's running jobs
    agent_port = 7781

    [hosts.node1]
    launcher = "ssh"                # ssh | slurm
    address = "10.0.0.11"           # ssh: what to connect to (default: the name)
    speed = 2.0                     # relative CPU speed (dsh's weight)
    memory = 1.0                    # relative memory weight
    max_jobs = 4
    resources = { scratch_gb = 500, gpu = 0 }
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEM_FILE = Path("/etc/qrun/qrun.toml")


class ConfigError(ValueError):
    pass


@dataclass
class HostConfig:
    name: str
    launcher: str = "ssh"
    address: str = ""
    user: str = ""
    speed: float = 1.0
    memory: float = 1.0
    max_jobs: int = 0                # 0: no per-host limit
    resources: dict[str, float] = field(default_factory=dict)
    stub: str = ""                   # how to run the stub there (default: this Python's)
    partition: str = ""              # slurm: partition to ask for

    @property
    def target(self) -> str:
        addr = self.address or self.name
        return f"{self.user}@{addr}" if self.user else addr


@dataclass
class ClusterConfig:
    hosts: dict[str, HostConfig] = field(default_factory=dict)
    home_addr: str = ""
    max_jobs_per_user: int = 0
    agent_port: int = 7781
    agent_public_key: str = ""
    agent_secret_key: str = ""
    ssh_command: str = "ssh"
    srun_command: str = "srun"
    source: str = ""


def config_path(cli: str | None = None) -> Path | None:
    for candidate in (cli, os.environ.get("QRUN_CONF"),
                      str(Path.home() / ".config" / "qrun" / "config.toml"), str(SYSTEM_FILE)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
        if candidate and candidate in (cli, os.environ.get("QRUN_CONF")):
            raise ConfigError(f"cluster file {candidate} does not exist")
    return None


_HOST_KEYS: dict[str, type | tuple[type, ...]] = {
    "launcher": str, "address": str, "user": str, "speed": (int, float), "memory": (int, float),
    "max_jobs": int, "resources": dict, "stub": str, "partition": str}


def parse(data: dict[str, Any], source: str = "") -> ClusterConfig:
    cfg = ClusterConfig(source=source)
    top: dict[str, type | tuple[type, ...]] = {"home_addr": str, "max_jobs_per_user": int, "agent_port": int,
           "agent_public_key": str, "agent_secret_key": str, "ssh_command": str,
           "srun_command": str, "hosts": dict}
    for key, value in data.items():
        if key not in top:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        if not isinstance(value, top[key]) or isinstance(value, bool):
            raise ConfigError(f"{source}: {key} has the wrong type")
        if key != "hosts":
            setattr(cfg, key, value)
    for name, h in data.get("hosts", {}).items():
        if not isinstance(h, dict):
            raise ConfigError(f"{source}: [hosts.{name}] must be a table")
        for key, value in h.items():
            want = _HOST_KEYS.get(key)
            if want is None:
                raise ConfigError(f"{source}: [hosts.{name}] unknown setting {key!r}")
            if not isinstance(value, want) or isinstance(value, bool):
                raise ConfigError(f"{source}: [hosts.{name}] {key} has the wrong type")
        hc = HostConfig(name=name, **{k: v for k, v in h.items() if k != "resources"})
        hc.resources = {}
        for k, v in h.get("resources", {}).items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ConfigError(f"{source}: [hosts.{name}] resource {k} must be a number")
            hc.resources[str(k)] = float(v)
        if hc.launcher not in ("ssh", "slurm"):
            raise ConfigError(f"{source}: [hosts.{name}] launcher must be ssh or slurm")
        if hc.speed <= 0 or hc.memory <= 0:
            raise ConfigError(f"{source}: [hosts.{name}] speed and memory must be positive")
        cfg.hosts[name] = hc
    return cfg


def load(cli: str | None = None) -> ClusterConfig:
    path = config_path(cli)
    if path is None:
        return ClusterConfig()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse(data, str(path))
