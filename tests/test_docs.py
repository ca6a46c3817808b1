"""The documentation stays in step with the code: the generated syscall page matches the
table, and the user guide documents every exit status and every allowed divergence."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import divergences
import pytest
from qrun.homenode import cli, config, exitcodes
from qrun.syscalls import docs
from qrun.syscalls.model import Level, Route, Syscall
from qrun.syscalls.table import TABLE

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "syscalls.md"
GUIDE = REPO / "docs" / "guide.md"
REGENERATE = ".venv/bin/python -m qrun.syscalls.docs > docs/syscalls.md"


def section(text: str, heading: str) -> str:
    """The body of the Markdown section titled `heading`, up to the next heading of the
    same or a higher level."""
    m = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert m, f"docs/guide.md has no section {heading!r}"
    level = len(m.group(1))
    rest = text[m.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[:end.start()] if end else rest


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in `text`, header and separator rows excluded."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        rows.append(cells)
    return rows[1:] if rows else rows  # drop the header row


def test_syscall_page_is_generated_from_the_table() -> None:
    assert PAGE.exists(), f"docs/syscalls.md is missing; generate it with `{REGENERATE}`"
    assert PAGE.read_text() == docs.render(), (
        f"docs/syscalls.md is out of date with syscalls/table.py; regenerate it with `{REGENERATE}`")


def test_render_is_deterministic() -> None:
    assert docs.render() == docs.render()


def test_every_trapped_entry_is_in_the_page() -> None:
    page = PAGE.read_text()
    rows = {cells[0].strip("`"): cells for cells in table_rows(page) if cells[0].startswith("`")}
    for sc in TABLE:
        if not sc.trapped:
            continue
        assert sc.name in rows, f"{sc.name} is trapped but not listed in docs/syscalls.md"
        cells = rows[sc.name]
        assert cells[1] == ("—" if sc.x86_64 is None else str(sc.x86_64)), sc.name
        assert cells[2] == ("—" if sc.aarch64 is None else str(sc.aarch64)), sc.name
        assert cells[4] == sc.level.value, sc.name
    local = section(page, "Untrapped (local)")
    for sc in TABLE:
        if not sc.trapped:
            assert f"`{sc.name}`" in local, f"{sc.name} is missing from the untrapped list"
            assert sc.name not in rows, f"{sc.name} is untrapped but has a row of its own"


def test_render_groups_by_tag_and_counts() -> None:
    fake = [
        Syscall("alpha", 1, 2, route=Route.BY_PATH, tags=frozenset({"file"})),
        Syscall("beta", 3, None, route=Route.BY_FD, tags=frozenset({"desc", "file"})),
        Syscall("gamma", 5, 6, route=Route.DENY, tags=frozenset({"system"}), errno="EPERM",
                level=Level.DENIED, note="a | note"),
        Syscall("delta", 7, 8, route=Route.LOCAL, tags=frozenset({"memory"}), level=Level.LOCAL),
    ]
    page = docs.render(fake)
    assert "| `alpha` | 1 | 2 | by-path | full |  |" in page
    # listed once, under its most specific tag
    assert page.count("`beta`") == 1
    assert "`beta`" in section(page, docs.SECTION_TITLES["desc"])
    assert "| `gamma` | 5 | 6 | deny (EPERM) | denied | a \\| note |" in page
    assert section(page, "Untrapped (local)").strip().endswith("`delta`")
    assert "| `beta` | 3 | — | by-fd | full |  |" in page
    for row in ("| full | 2 |", "| denied | 1 |", "| local | 1 |", "| by-path | 1 |", "| by-fd | 1 |",
                "| deny | 1 |"):
        assert row in page, row


def test_every_exit_status_is_in_the_guide() -> None:
    guide = GUIDE.read_text()
    codes = {cells[0]: cells[1] for cells in table_rows(section(guide, "Exit status"))}
    for code, meaning in sorted(exitcodes.DOC.items()):
        assert str(code) in codes, f"exit status {code} ({meaning}) is not documented in docs/guide.md"
    extra = set(codes) - {str(c) for c in exitcodes.DOC}
    assert not extra, f"docs/guide.md documents exit statuses qrun does not have: {sorted(extra)}"


def test_every_allowed_divergence_is_explained_in_the_guide() -> None:
    listed = section(GUIDE.read_text(), "Known divergences")
    rows = table_rows(listed)
    for div in divergences.ALLOWED:
        assert any(cells[0] == f"`{div.probe_glob}`" for cells in rows), (
            f"the divergence for {div.probe_glob!r} ({div.why}) is not listed under "
            "'Known divergences' in docs/guide.md")
    assert len(rows) == len(divergences.ALLOWED), (
        "docs/guide.md lists a different number of divergences than tests/divergences.py")


# ---- cluster.md and habits.md ---------------------------------------------------------------

CLUSTER = REPO / "docs" / "cluster.md"
HABITS = REPO / "docs" / "habits.md"

# How docs/cluster.md names the type each validator in homenode/config.py accepts.
_TYPE_WORDS = {"str": "string", "int": "integer", "int|float": "number", "dict": "table", "list": "list",
               "int|str": "integer or string"}


def doc_section(path: Path, heading: str) -> str:
    """Like `section`, for any page of docs/, and not fooled by `# comment` lines inside
    fenced code blocks."""
    out: list[str] = []
    level = 0
    fenced = False
    for line in path.read_text().splitlines(keepends=True):
        m = None if fenced else re.match(r"^(#+) (.*?)\s*$", line)
        if line.startswith("```"):
            fenced = not fenced
        if m and level and len(m.group(1)) <= level:
            break
        if level:
            out.append(line)
        elif m and m.group(2) == heading:
            level = len(m.group(1))
    assert level, f"docs/{path.name} has no section {heading!r}"
    return "".join(out)


def long_options(ap: argparse.ArgumentParser) -> set[str]:
    """Every long option string `ap --help` prints."""
    return {s for a in ap._actions if a.help != argparse.SUPPRESS
            for s in a.option_strings if s.startswith("--")}


def mentions(text: str, option: str) -> bool:
    """`option` appears as a whole word: `--home` is not found inside `--home-addr`."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def config_keys() -> tuple[dict[str, str], dict[str, str]]:
    """The top-level and per-host keys homenode/config.py accepts, each with its type
    (`str`, `int`, `int|float`, `dict`)."""
    def names(keys: dict[str, type | tuple[type, ...]]) -> dict[str, str]:
        return {k: "|".join(t.__name__ for t in v) if isinstance(v, tuple) else v.__name__
                for k, v in keys.items()}
    top = names(config._TOP_KEYS)
    assert "hosts" in top
    return top, names(config._HOST_KEYS)


def test_config_keys_are_the_ones_parse_accepts() -> None:
    top, host = config_keys()
    for key in top:  # a known key with a bad value is a type error, not an unknown setting
        with pytest.raises(config.ConfigError, match="wrong type"):
            config.parse({key: object()})
    for key in host:
        with pytest.raises(config.ConfigError, match="wrong type"):
            config.parse({"hosts": {"h": {key: object()}}})
    with pytest.raises(config.ConfigError, match="unknown setting"):
        config.parse({"no_such_key_anywhere": 1})


def test_every_qrun_option_is_documented() -> None:
    options = long_options(cli.parser())
    help_text = cli.parser().format_help()
    assert "--transparent" in options and "--help" in options
    for opt in options:
        assert opt in help_text, f"{opt} is not in `qrun --help`"
    pages = [GUIDE, CLUSTER, HABITS]
    texts = [p.read_text() for p in pages]
    missing = sorted(o for o in options if not any(mentions(t, o) for t in texts))
    assert not missing, (f"options of `qrun --help` documented in none of "
                         f"{', '.join('docs/' + p.name for p in pages)}: {missing}")


@pytest.mark.parametrize("heading, which", [("Top-level settings", 0), ("Per-host settings", 1)])
def test_every_config_key_is_documented(heading: str, which: int) -> None:
    keys = config_keys()[which]
    rows = {cells[0].strip("`"): cells for cells in table_rows(doc_section(CLUSTER, heading))}
    missing = sorted(set(keys) - set(rows))
    assert not missing, f"keys accepted by homenode/config.py missing from '{heading}' in docs/cluster.md: {missing}"
    extra = sorted(set(rows) - set(keys))
    assert not extra, f"docs/cluster.md '{heading}' documents keys homenode/config.py rejects: {extra}"
    for key, kind in keys.items():
        cells = rows[key]
        assert len(cells) == 4 and all(cells), f"{key}: expected | key | type | default | meaning |"
        assert cells[1].startswith(_TYPE_WORDS[kind]), (
            f"docs/cluster.md gives {key} the type {cells[1]!r}; homenode/config.py wants {kind}")


def test_the_complete_example_parses_and_shows_every_key() -> None:
    body = doc_section(CLUSTER, "A complete example")
    blocks = re.findall(r"^```toml\n(.*?)^```", body, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "expected one ```toml block under 'A complete example'"
    example = blocks[0]
    cfg = config.parse(tomllib.loads(example), "docs/cluster.md")
    assert cfg.hosts
    # keys that belong in another copy of the file (agent_secret_key) may be shown commented out
    shown = set(re.findall(r"^\s*#?\s*([a-z_]+)\s*=", example, re.MULTILINE))
    shown |= {"hosts"}
    top, host = config_keys()
    assert not set(top) - shown, f"the example in docs/cluster.md lacks {sorted(set(top) - shown)}"
    assert not set(host) - shown, f"the example in docs/cluster.md lacks {sorted(set(host) - shown)}"


def test_exit_statuses_in_cluster_guide_exist() -> None:
    rows = table_rows(doc_section(CLUSTER, "Failure modes and exit statuses"))
    listed = {int(cells[0]) for cells in rows}
    assert listed <= set(exitcodes.DOC), f"docs/cluster.md lists unknown statuses {sorted(listed - set(exitcodes.DOC))}"
    for code in (exitcodes.UNREACHABLE, exitcodes.REFUSED, exitcodes.SCHEDULER, exitcodes.NO_HOST,
                 exitcodes.REMOTE_CWD, exitcodes.LAUNCH):
        assert code in listed, f"exit status {code} is missing from docs/cluster.md's failure table"


def test_new_pages_are_linked() -> None:
    readme = (REPO / "README.md").read_text()
    guide = GUIDE.read_text()
    for page in ("cluster.md", "habits.md"):
        assert f"(docs/{page})" in readme, f"README.md does not link docs/{page}"
        assert f"({page})" in guide, f"docs/guide.md does not link {page}"
