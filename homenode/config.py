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

import errno
import math
import os
import shlex
import stat
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
    max_load: float = 0.0            # a host whose load average is at or above this takes no job (0: none)
    resources: dict[str, float] = field(default_factory=dict)
    stub: str = ""                   # how to run the stub there (default: this Python's)
    partition: str = ""              # slurm: partition to ask for
    home_roots: list[str] = field(default_factory=list)  # what its jobs may reach at home
    cache_dir: str = ""              # where its jobs keep local copies (default: its $TMPDIR)
    cache_limit: int = 0             # bytes those copies may take (0: what the disk has)

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
    home_roots: list[str] = field(default_factory=list)  # for every host (added to the host's)
    source: str = ""


def config_path(cli: str | None = None) -> Path | None:
    """The cluster file to use. A file named by --config or $QRUN_CONF must exist; one of
    the default places that is missing is skipped, but one that exists and cannot be
    read (a directory, no permission, a loop of symlinks) is an error rather than a
    silent fall-through to the next place."""
    named = [c for c in (cli, os.environ.get("QRUN_CONF")) if c]
    defaults = [str(_home() / ".config" / "qrun" / "config.toml"), str(SYSTEM_FILE)]
    for candidate in named[:1] or defaults:
        try:
            st = os.stat(candidate)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not named:
                continue
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise ConfigError(f"cluster file {candidate} does not exist") from None
            raise ConfigError(f"cannot read the cluster file {candidate}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise ConfigError(f"cannot read the cluster file {candidate}: it is {what}")
        return Path(candidate)
    return None


def _home() -> Path:
    try:
        return Path.home()
    except (KeyError, RuntimeError):  # no $HOME and no password entry
        return Path("/nonexistent")


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str) -> int:
    """A size in bytes: an integer, or a number with K, M, G or T (binary units, an
    optional trailing B or iB: "512M", "2.5GiB")."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512M or 20G")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in _UNITS and text[-1:] else ""
    try:
        number = float(text[:-1] if unit else text)
    except ValueError:
        raise ValueError(f"{value!r} is not a size such as 512M or 20G") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{value!r} is not a size such as 512M or 20G")
    return int(number * _UNITS[unit])


def env_seconds(name: str, default: float, zero_ok: bool = False) -> float:
    """A number of seconds from the environment; unset or empty means `default`. Anything
    else that is not a finite, positive (or, with `zero_ok`, non-negative) number is a
    ConfigError naming the variable."""
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        kind = "a number of seconds >= 0" if zero_ok else "a number of seconds > 0"
        raise ConfigError(f"${name}={raw!r}: expected {kind}")
    return value


_HOST_KEYS: dict[str, type | tuple[type, ...]] = {
    "launcher": str, "address": str, "user": str, "speed": (int, float), "memory": (int, float),
    "max_jobs": int, "max_load": (int, float), "resources": dict, "stub": str, "partition": str,
    "home_roots": list, "cache_dir": str, "cache_limit": (int, str)}


_TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "home_addr": str, "max_jobs_per_user": int, "agent_port": int, "agent_public_key": str,
    "agent_secret_key": str, "ssh_command": str, "srun_command": str, "home_roots": list,
    "hosts": dict}


def _check_types(items: dict[str, Any], allowed: dict[str, type | tuple[type, ...]], where: str) -> None:
    for key, value in items.items():
        want = allowed.get(key)
        if want is None:
            raise ConfigError(f"{where} unknown setting {key!r}")
        if not isinstance(value, want) or isinstance(value, bool):
            raise ConfigError(f"{where} {key} has the wrong type")


def parse(data: dict[str, Any], source: str = "") -> ClusterConfig:
    cfg = ClusterConfig(source=source)
    where = f"bad cluster file {source}" if source else "bad cluster file"
    _check_types(data, _TOP_KEYS, f"{where}:")
    for key, value in data.items():
        if key != "hosts":
            setattr(cfg, key, value)
    _check_top(cfg, where)
    _check_roots(cfg.home_roots, f"{where}: home_roots")
    for name, h in data.get("hosts", {}).items():
        cfg.hosts[name] = _host(name, h, f"{where}: [hosts.{name}]")
    return cfg


def _host(name: str, h: object, where: str) -> HostConfig:
    if not isinstance(h, dict):
        raise ConfigError(f"{where} must be a table")
    _check_types(h, _HOST_KEYS, where)
    hc = HostConfig(name=name, **{k: v for k, v in h.items() if k not in ("resources", "cache_limit")})
    try:
        hc.cache_limit = parse_size(h.get("cache_limit", 0))
    except ValueError as exc:
        raise ConfigError(f"{where} cache_limit: {exc}") from None
    hc.resources = {}
    for k, v in h.get("resources", {}).items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ConfigError(f"{where} resource {k} must be a number")
        hc.resources[str(k)] = float(v)
    if hc.launcher not in ("ssh", "slurm"):
        raise ConfigError(f"{where} launcher must be ssh or slurm")
    if not (0 < hc.speed < math.inf and 0 < hc.memory < math.inf):
        raise ConfigError(f"{where} speed and memory must be positive")
    if hc.max_jobs < 0:
        raise ConfigError(f"{where} max_jobs must be 0 (no limit) or more")
    if not 0 <= hc.max_load < math.inf:
        raise ConfigError(f"{where} max_load must be 0 (no threshold) or more")
    _check_roots(hc.home_roots, f"{where} home_roots")
    if hc.cache_dir and not hc.cache_dir.startswith("/"):
        raise ConfigError(f"{where} cache_dir must be an absolute path on that host")
    if hc.stub and not hc.stub.split():
        raise ConfigError(f"{where} stub is blank (leave it out for the default)")
    return hc


# CURVE keys as `qrun agent --keygen` prints them: 32 bytes in Z85, i.e. 40 characters.
_Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


def is_curve_key(text: str) -> bool:
    return len(text) == 40 and set(text) <= _Z85


def _check_roots(roots: list[str], where: str) -> None:
    if not all(isinstance(r, str) and r.startswith("/") for r in roots):
        raise ConfigError(f"{where} must be a list of absolute paths")


def _check_top(cfg: ClusterConfig, where: str) -> None:
    """Values of the right type that still cannot work: caught here, with the file's name,
    instead of as a traceback when a host is contacted."""
    for key in ("agent_public_key", "agent_secret_key"):
        value = getattr(cfg, key)
        if value and not is_curve_key(value):
            raise ConfigError(f"{where}: {key} is not a CURVE key (40 characters, as printed by "
                              "`qrun agent --keygen`)")
    if not 0 < cfg.agent_port < 65536:
        raise ConfigError(f"{where}: agent_port must be a TCP port (1-65535)")
    if cfg.max_jobs_per_user < 0:
        raise ConfigError(f"{where}: max_jobs_per_user must be 0 (no limit) or more")
    for key in ("ssh_command", "srun_command"):
        try:
            words = shlex.split(getattr(cfg, key))
        except ValueError as exc:
            raise ConfigError(f"{where}: {key} cannot be split like a command line ({exc})") from None
        if not words:
            raise ConfigError(f"{where}: {key} is empty")


def load(cli: str | None = None) -> ClusterConfig:
    path = config_path(cli)
    if path is None:
        return ClusterConfig()
    import tomllib  # (here: a job without a cluster file does not wait for it to load)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"bad cluster file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"bad cluster file {path}: {exc}") from None
    return parse(data, str(path))
