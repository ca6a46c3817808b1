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
    hide = [_hosts_os.path.expanduser("~"), "/srv/qrun-test-home"]
    with _HostCluster(n=3, hide=hide) as cluster:
        yield cluster


@_hosts_pytest.fixture
def host(hosts: _HostCluster) -> _Host:
    """h1 of the session's test hosts."""
    return hosts[0]


# ---- END qrun test hosts ----------------------------------------------------------------------
