"""Conformance: every probe prints the same canonical output natively and under qrun.

* ``test_probe_native``: each probe run twice natively gives identical,
  non-empty, well-formed output and the expected exit status (catches probes
  whose output is not canonical).
* ``test_native_static_dynamic_agree``: the static and dynamic build of a C
  probe print the same thing.
* ``test_probe_under_qrun``: native vs ``[*qrun --transparent ..., *probe]``
  outputs are identical apart from tests/divergences.py, and exit statuses
  match, in both modes of the ``transparent`` fixture (conftest.py): ``local``
  (runs for everyone) and ``h1`` (a namespace test host; needs root).
"""

from __future__ import annotations

import re

import pytest

try:  # tests/ may or may not be a package
    from . import conformance as conf
    from . import divergences
except ImportError:
    import conformance as conf  # type: ignore[no-redef]
    import divergences  # type: ignore[no-redef]


@pytest.fixture(scope="session")
def probe_binaries(tmp_path_factory):
    """Build every C probe (static and dynamic) once per session."""
    try:
        return conf.build_probes(tmp_path_factory.mktemp("probe-bin"))
    except conf.BuildError as exc:
        pytest.fail(f"cannot build the C probes:\n{exc}", pytrace=False)


def _probe_or_skip(probe_id: str, request) -> conf.Probe:
    probe = conf.get_probe(probe_id)
    reason = probe.unavailable()
    if reason:
        pytest.skip(reason)
    if probe.kind == "c":
        request.getfixturevalue("probe_binaries")
    return probe


def _workdir(tmp_path_factory, probe_id: str):
    # one fixed absolute path per test; run_* delete and recreate it per run
    return tmp_path_factory.mktemp(f"conf-{probe_id}") / "work"


@pytest.mark.parametrize("probe_id", conf.PROBE_IDS)
def test_probe_native(probe_id, request, tmp_path_factory):
    probe = _probe_or_skip(probe_id, request)
    workdir = _workdir(tmp_path_factory, probe_id)
    first = conf.run_native(probe_id, workdir)
    second = conf.run_native(probe_id, workdir)
    runs = conf.describe(first, "run 1") + "\n" + conf.describe(second, "run 2")

    for res in (first, second):
        assert res.returncode == probe.expected_rc, f"unexpected exit status\n{runs}"
        assert res.stdout.strip(), f"empty output\n{runs}"
        assert res.stderr == "", f"probe wrote to stderr natively\n{runs}"
    bad = conf.malformed_lines(first)
    assert not bad, "lines not of the form 'name: value':\n" + "\n".join(bad[:20])
    diff = conf.diff_lines(first, second)
    assert first.stdout == second.stdout, (
        "output differs between two native runs (not canonical):\n" + "\n".join(diff[:60]))


@pytest.mark.parametrize("name", conf.C_PROBE_NAMES)
def test_native_static_dynamic_agree(name, request, tmp_path_factory):
    request.getfixturevalue("probe_binaries")
    workdir = _workdir(tmp_path_factory, name)
    static = conf.run_native(f"{name}.static", workdir)
    dynamic = conf.run_native(f"{name}.dynamic", workdir)
    assert static.returncode == dynamic.returncode, (
        conf.describe(static, "static") + "\n" + conf.describe(dynamic, "dynamic"))
    diff = conf.diff_lines(static, dynamic)
    assert not diff, "static and dynamic builds disagree:\n" + "\n".join(diff[:60])


@pytest.mark.parametrize("probe_id", conf.PROBE_IDS)
def test_probe_under_qrun(probe_id, transparent, request, tmp_path_factory):
    qrun_prefix = transparent
    probe = _probe_or_skip(probe_id, request)
    workdir = _workdir(tmp_path_factory, probe_id)
    native = conf.run_native(probe_id, workdir)
    assert native.returncode == probe.expected_rc, conf.describe(native, "native")
    under = conf.run_under(qrun_prefix, probe_id, workdir)

    result = conf.compare_detailed(native, under, probe_id)
    conf.DIVERGENCE_COUNTS.update(result.applied)
    applied = "".join(f"\n  allowed: {d.line_regex!r} ({d.why})" for d in result.applied)
    runs = conf.describe(native, "native", 0) + "\n" + conf.describe(under, "qrun", 0)
    assert not result.diff, (
        f"qrun output differs from native ({len(result.applied)} allowed divergences "
        f"applied){applied}\n" + "\n".join(result.diff[:80]) + "\n\n" + runs)
    assert under.returncode == native.returncode, (
        "exit status differs\n" + conf.describe(native, "native", 10) + "\n"
        + conf.describe(under, "qrun", 10))


def test_divergences_well_formed():
    for div in divergences.ALLOWED:
        assert isinstance(div, divergences.Divergence)
        re.compile(div.line_regex)
        assert div.why.strip().endswith("."), f"explain {div} in one sentence"
        assert "\n" not in div.why.strip(), f"one sentence only: {div}"
        matching = [p for p in conf.PROBE_IDS if div in conf.divergences_for(p)]
        assert matching, f"{div.probe_glob!r} matches no probe id"


def test_compare_applies_divergences(monkeypatch):
    div = conf.Divergence("files.*", r"^host: ", "Example only.")
    monkeypatch.setattr(conf._divergences, "ALLOWED", [div])
    native = "a: 1\nhost: home\nb: 2\n"
    other = "a: 1\nhost: away\nb: 3\n"
    result = conf.compare_detailed(native, other, "files.static")
    assert result.applied == [div]
    assert result.diff == ["-b: 2", "+b: 3"]
    assert conf.compare_detailed(native, other, "stat.static").diff == [
        "-host: home", "-b: 2", "+host: away", "+b: 3"]
