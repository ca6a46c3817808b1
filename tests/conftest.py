# ---- BEGIN qrun test hosts (fixtures for tests/hosts.py) -------------------------------------
# Self-contained section: other sections may be appended below, keep this one independent.
import os as _hosts_os
from collections.abc import Iterator as _HostsIterator

import pytest as _hosts_pytest
from hosts import Host as _Host
from hosts import HostCluster as _HostCluster
from hosts import can_make_hosts as _can_make_hosts


@_hosts_pytest.fixture(scope="session")
def hosts() -> _HostsIterator[_HostCluster]:
    """Three namespace test hosts h1..h3 (tests/hosts.py); skips where they cannot be built."""
    ok, reason = _can_make_hosts()
    if not ok:
        _hosts_pytest.skip(reason)
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
    out = []
    for p in (repo, _hosts_os.path.realpath(sys.prefix)):
        if p.startswith("/tmp/") and not any(p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return out


@_hosts_pytest.fixture
def host(hosts: _HostCluster) -> _Host:
    """h1 of the session's test hosts."""
    return hosts[0]


# ---- END qrun test hosts ----------------------------------------------------------------------


# ---- BEGIN qrun runtime fixtures ----------------------------------------------------------------
import sys as _qr_sys  # noqa: E402


@_hosts_pytest.fixture(scope="session")
def qrun_cmd() -> list[str]:
    """The qrun command line as a user would type it, run by this interpreter."""
    return [_qr_sys.executable, "-m", "homenode.cli"]


@_hosts_pytest.fixture(scope="session")
def qrun_prefix(hosts: _HostCluster, qrun_cmd: list[str]) -> list[str]:
    """`qrun --transparent` onto test host h1 through the generic launcher (nsenter)."""
    h = hosts[0]
    return qrun_cmd + ["--transparent", "--timeout", "10", "--via", " ".join(h.nsenter_prefix()),
                       "--home-addr", h.home_ip, "--"]
# ---- END qrun runtime fixtures ------------------------------------------------------------------
