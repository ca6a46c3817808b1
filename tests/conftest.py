# ---- BEGIN qrun test hosts (fixtures for tests/hosts.py) -------------------------------------
# Self-contained section: other sections may be appended below, keep this one independent.
import os as _hosts_os
from collections.abc import Iterator as _HostsIterator

import pytest as _hosts_pytest
from hosts import Host as _Host
from hosts import HostCluster as _HostCluster
from hosts import can_make_hosts as _can_make_hosts


def skip_or_fail(reason: str) -> None:
    """A fixture that cannot be set up skips for a developer, but fails under CI=true:
    there, a missing piece of the test machine must not pass as a green run."""
    if _hosts_os.environ.get("CI") == "true":
        _hosts_pytest.fail(f"CI=true and a fixture cannot be set up: {reason}", pytrace=False)
    _hosts_pytest.skip(reason)


@_hosts_pytest.fixture(scope="session")
def hosts() -> _HostsIterator[_HostCluster]:
    """Three namespace test hosts h1..h3 (tests/hosts.py); skips where they cannot be built."""
    ok, reason = _can_make_hosts()
    if not ok:
        skip_or_fail(reason)
    hide = _hidden_on_hosts()
    with _HostCluster(n=3, hide=hide, share=_shared_with_hosts()) as cluster:
        yield cluster


def _hidden_on_hosts() -> list[str]:
    """The user's home directory is hidden on the test hosts unless the interpreter (which
    also runs the stub there) or this checkout lives below it."""
    import sys

    home = _hosts_os.path.realpath(_hosts_os.path.expanduser("~"))
    needed = [_hosts_os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, __file__)]
    hide = ["/srv/qrun-test-home"]
    if not any(p == home or p.startswith(home + "/") for p in needed):
        hide.insert(0, home)
    return hide


def _shared_with_hosts() -> list[str]:
    """qrun's installation (this checkout and its interpreter) stays visible on the hosts
    when it lives under /tmp, as it would be installed at the same path on cluster nodes."""
    import sys

    repo = _hosts_os.path.dirname(_hosts_os.path.dirname(_hosts_os.path.realpath(__file__)))
    out: list[str] = []
    for p in (repo, _hosts_os.path.realpath(sys.prefix)):
        if p.startswith("/tmp/") and not any(p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return out


@_hosts_pytest.fixture
def host(hosts: _HostCluster) -> _Host:
    """h1 of the session's test hosts."""
    return hosts[0]


# ---- END qrun test hosts ----------------------------------------------------------------------


def pytest_addoption(parser: _hosts_pytest.Parser) -> None:
    parser.addoption("--fuzz-rounds", default="2000",
                     help="requests the home server fuzz test sends (default 2000; try 50000)")


# ---- BEGIN qrun runtime fixtures ----------------------------------------------------------------
import sys as _qr_sys  # noqa: E402


@_hosts_pytest.fixture(scope="session")
def qrun_cmd() -> list[str]:
    """The qrun command as a user runs it: the installed console script of this interpreter's
    environment (not `python -m`, which would put the job's cwd first on sys.path)."""
    script = _hosts_os.path.join(_hosts_os.path.dirname(_qr_sys.executable), "qrun")
    if not _hosts_os.access(script, _hosts_os.X_OK):
        _hosts_pytest.fail(f"{script} is missing: install qrun with ./install.sh", pytrace=False)
    return [script]


@_hosts_pytest.fixture(scope="session")
def qrun_prefix(hosts: _HostCluster, qrun_cmd: list[str]) -> list[str]:
    """`qrun --transparent` onto test host h1 through the generic launcher (nsenter)."""
    h = hosts[0]
    return qrun_cmd + ["--transparent", "--timeout", "10", "--via", " ".join(h.nsenter_prefix()),
                       "--home-addr", h.home_ip, "--"]


@_hosts_pytest.fixture(params=["local", "h1"])
def transparent(request: _hosts_pytest.FixtureRequest, qrun_cmd: list[str]) -> list[str]:
    """`qrun --transparent ... --` in both of the suite's modes: `local` (the stub on this
    machine: every developer runs it, root or not) and `h1` (a namespace test host whose
    host name, /tmp and home directory differ from home's; needs root)."""
    if request.param == "local":
        return qrun_cmd + ["--transparent", "--timeout", "10", "--host", "local", "--"]
    return list(request.getfixturevalue("qrun_prefix"))
# ---- END qrun runtime fixtures ------------------------------------------------------------------


# ---- BEGIN qrun ssh/Slurm cluster fixtures (tests/cluster.py) ---------------------------------
# Self-contained section: a real sshd and a real Slurm on their own three test hosts. Built on
# demand only, so test runs that use neither pay nothing for them.
import shutil as _cl_shutil  # noqa: E402
import tempfile as _cl_tempfile  # noqa: E402
from subprocess import SubprocessError as _ClSubprocessError  # noqa: E402

from cluster import ClusterError as _ClusterError  # noqa: E402
from cluster import SlurmCluster as _SlurmCluster  # noqa: E402
from cluster import SshCluster as _SshCluster  # noqa: E402
from cluster import slurm_missing as _slurm_missing  # noqa: E402
from cluster import ssh_missing as _ssh_missing  # noqa: E402


@_hosts_pytest.fixture(scope="session")
def cluster_state_dir(tmp_path_factory: _hosts_pytest.TempPathFactory) -> _HostsIterator[str]:
    """A short dir under /tmp for the cluster daemons' state, shared into `cluster_hosts`."""
    base = _hosts_os.path.realpath(tmp_path_factory.mktemp("cl"))
    # ssh's control sockets must fit in a unix socket path (108 bytes) and the hosts only see
    # /tmp: pytest's basetemp is kept (logs survive a failed run) when it satisfies both.
    if base.startswith("/tmp/") and len(base) <= 48:
        yield base
        return
    path = _cl_tempfile.mkdtemp(prefix="qrun-cl-", dir="/tmp")
    try:
        yield path
    finally:
        _cl_shutil.rmtree(path, ignore_errors=True)


@_hosts_pytest.fixture(scope="session")
def cluster_hosts(cluster_state_dir: str) -> _HostsIterator[_HostCluster]:
    """Three test hosts h1..h3 for `ssh_cluster` and `slurm_cluster` (separate from `hosts`)."""
    ok, reason = _can_make_hosts()
    if not ok:
        skip_or_fail(reason)
    share = _shared_with_hosts()
    if not any(cluster_state_dir == p or cluster_state_dir.startswith(p + "/") for p in share):
        share.append(cluster_state_dir)
    hide = _hidden_on_hosts() + [_SshCluster.home_only_dir(cluster_state_dir)]
    with _HostCluster(n=3, hide=hide, share=share) as cluster:
        yield cluster


@_hosts_pytest.fixture(scope="session")
def ssh_cluster(request: _hosts_pytest.FixtureRequest,
                cluster_state_dir: str) -> _HostsIterator[_SshCluster]:
    """An sshd on each of `cluster_hosts`; `ssh -F ssh_cluster.ssh_config h1 ...` from home."""
    missing = _ssh_missing()
    if missing:
        skip_or_fail(f"ssh test cluster: {missing}")
    # Requested only now so that a machine without sshd does not even build the hosts.
    cluster = request.getfixturevalue("cluster_hosts")
    ssh = _SshCluster(cluster, cluster_state_dir)
    try:
        ssh.start()
    except (_ClusterError, OSError, _ClSubprocessError) as e:
        skip_or_fail(f"ssh test cluster could not be set up: {e}")
    try:
        yield ssh
    finally:
        ssh.stop()


@_hosts_pytest.fixture(scope="session")
def slurm_cluster(request: _hosts_pytest.FixtureRequest,
                  cluster_state_dir: str) -> _HostsIterator[_SlurmCluster]:
    """munged + slurmctld at home and a slurmd on each of `cluster_hosts`; run the clients
    with `env=slurm_cluster.env`."""
    missing = _slurm_missing()
    if missing:
        skip_or_fail(f"Slurm test cluster: {missing}")
    cluster = request.getfixturevalue("cluster_hosts")
    slurm = _SlurmCluster(cluster, cluster_state_dir)
    try:
        slurm.start()
    except (_ClusterError, OSError, _ClSubprocessError) as e:
        skip_or_fail(f"Slurm test cluster could not be set up: {e}")
    try:
        yield slurm
    finally:
        slurm.stop()
# ---- END qrun ssh/Slurm cluster fixtures ------------------------------------------------------
