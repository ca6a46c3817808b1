"""The syscall table and what is derived from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from qrun.homenode.executor import ARCH as HOME_ARCH
from qrun.homenode.executor import FORWARDABLE
from qrun.homenode.server_ops import HomeOps
from qrun.remote.calls import HANDLERS
from qrun.syscalls import bpf, flags, structs, wire
from qrun.syscalls.model import Route
from qrun.syscalls.table import BY_NAME, TABLE

REPO = Path(__file__).resolve().parent.parent


def test_one_line_per_syscall_with_unique_numbers() -> None:
    names = [s.name for s in TABLE]
    assert len(names) == len(set(names))
    for arch in ("x86_64", "aarch64"):
        nums = [s.number(arch) for s in TABLE if s.number(arch) is not None]
        assert len(nums) == len(set(nums)), f"duplicate {arch} numbers"


def test_numbers_match_the_kernel_headers() -> None:
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not header.exists():
        pytest.skip("kernel headers (linux-libc-dev) not installed")
    known = {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", header.read_text())}
    wrong = [s.name for s in TABLE if s.name in known and s.x86_64 != known[s.name]]
    assert wrong == []
    missing = sorted(set(known) - set(BY_NAME))
    assert missing == [], f"syscalls the headers know but the table does not: {missing}"


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_filter_traps_exactly_the_non_local_entries(arch: str) -> None:
    prog = bpf.program(arch)
    assert len(prog) < 4096
    audit = bpf.AUDIT_ARCH[arch]
    for s in TABLE:
        nr = s.number(arch)
        if nr is None:
            continue
        want = bpf.RET_ALLOW if s.route is Route.LOCAL else bpf.RET_TRACE
        assert bpf.evaluate(prog, audit, nr) == want, s.name
    # numbers newer than the table are trapped (and refused by the tracer)
    assert bpf.evaluate(prog, audit, 1000) == bpf.RET_TRACE
    # another ABI on the same kernel is refused outright
    assert bpf.evaluate(prog, 0x40000003, 3) == bpf.RET_ERRNO | bpf.ENOSYS
    if arch == "x86_64":
        assert bpf.evaluate(prog, audit, bpf.X32_SYSCALL_BIT | 2) == bpf.RET_ERRNO | bpf.ENOSYS


def test_every_handler_named_by_the_table_exists() -> None:
    named = {s.handler for s in TABLE if s.route in (Route.IRREGULAR, Route.IDENTITY)}
    assert named - HANDLERS.keys() == set()
    assert HANDLERS.keys() - named == set(), "handlers no table entry uses"


def test_every_forwarded_entry_has_a_home_executor() -> None:
    for s in TABLE:
        if s.route not in (Route.BY_PATH, Route.BY_FD):
            continue
        assert s.name in FORWARDABLE, s.name
        assert s.number(HOME_ARCH) is not None, f"{s.name} cannot run on a {HOME_ARCH} home"
    ops = {name[3:] for name in dir(HomeOps) if name.startswith("op_")}
    assert {"open", "fetch", "writeback", "chdir", "deputy", "kill", "fcntl", "flock", "fcntl_lock"} <= ops


def test_the_data_calls_are_never_trapped() -> None:
    """read, write and their forms run untrapped: home regular files are local files."""
    from qrun.syscalls import bpf
    from qrun.syscalls.bpf import AUDIT_ARCH, RET_ALLOW
    for arch in ("x86_64", "aarch64"):
        prog = bpf.program(arch)
        for name in ("read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev"):
            nr = BY_NAME[name].number(arch)
            assert nr is not None and bpf.evaluate(prog, AUDIT_ARCH[arch], nr) == RET_ALLOW, (arch, name)


def test_deny_entries_name_a_real_errno() -> None:
    import errno
    for s in TABLE:
        if s.route is Route.DENY or s.errno:
            assert isinstance(getattr(errno, s.errno, None), int), s.name


@pytest.mark.parametrize("value", [0o2 | 0o100 | 0o200000 | 0o400000, 0o40000 | 0o100000, 0])
def test_open_flags_round_trip_between_architectures(value: int) -> None:
    for arch in ("x86_64", "aarch64"):
        assert flags.open_from_wire(arch, flags.open_to_wire(arch, value)) == value
    # O_DIRECTORY on aarch64 is O_DIRECT's bit on x86_64: the wire must tell them apart
    assert flags.open_to_wire("aarch64", 0o40000) == 0o200000


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_stat_converts_through_the_portable_form(arch: str) -> None:
    v = list(range(1, 17))
    raw = structs.stat_from_wire(arch, v)
    assert len(raw) == structs.SIZES[arch]["stat"]
    assert structs.stat_to_wire(arch, raw) == v


def test_wire_rejects_malformed_messages() -> None:
    assert wire.decode(wire.encode("ping"))["t"] == "ping"
    for bad in (b"\xc1", wire.encode("nonsense"), b"\x93\x01\x02\x03",
                wire.encode("req", seq="x", tid=1, op="read", a=[], umask=0),
                wire.encode("req", tid=1, op="read", a=[], umask=0)):
        with pytest.raises(wire.ProtocolError):
            wire.decode(bad)


def test_digest_is_stable_and_covers_routes() -> None:
    assert wire.table_digest() == wire.table_digest()
    assert re.fullmatch(r"[0-9a-f]{16}", wire.table_digest())
