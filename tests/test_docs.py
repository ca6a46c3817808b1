"""The documentation stays in step with the code: the generated syscall page matches the
table, and the user guide documents every exit status and every allowed divergence."""

from __future__ import annotations

import re
from pathlib import Path

import divergences

from homenode import exitcodes
from syscalls import docs
from syscalls.model import Level, Route, Syscall
from syscalls.table import TABLE

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "syscalls.md"
GUIDE = REPO / "docs" / "guide.md"
REGENERATE = ".venv/bin/python -m syscalls.docs > docs/syscalls.md"


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
        Syscall("beta", 3, None, route=Route.BY_FD, tags=frozenset({"desc", "file"}), idempotent=False),
        Syscall("gamma", 5, 6, route=Route.DENY, tags=frozenset({"system"}), errno="EPERM",
                level=Level.DENIED, note="a | note"),
        Syscall("delta", 7, 8, route=Route.LOCAL, tags=frozenset({"memory"}), level=Level.LOCAL),
    ]
    page = docs.render(fake)
    assert "| `alpha` | 1 | 2 | by-path | full | yes |" in page
    # listed once, under its most specific tag
    assert page.count("`beta`") == 1
    assert "`beta`" in section(page, docs.SECTION_TITLES["desc"])
    assert "| `gamma` | 5 | 6 | deny (EPERM) | denied | — | a \\| note |" in page
    assert section(page, "Untrapped (local)").strip().endswith("`delta`")
    assert "| `beta` | 3 | — | by-fd | full | no |" in page
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
