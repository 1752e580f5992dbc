"""Every relative link in README.md and docs/*.md reaches a file that exists, and a heading that exists in it."""

import re
from pathlib import Path

import pytest

from support import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^ *```.*?^ *```", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)\)")


def prose(markdown: str) -> str:
    """The text outside fenced blocks, with code spans blanked: a link or heading there is only an example."""
    return FENCE.sub("", markdown)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text as shown, lowercased, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading shows its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of a page's headings, a repeated one suffixed -1, -2, … as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(markdown).splitlines():
        heading = re.match(r"#{1,6} +(.*?) *#* *$", line)
        if not heading:
            continue
        base = slug(heading.group(1))
        found.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    """Each relative link of ``page`` whose file, or whose #heading in that file, does not exist."""
    broken = []
    for target in LINK.findall(CODE_SPAN.sub("", prose(page.read_text()))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …: not this repository's to check
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no file {linked})")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            broken.append(f"{target} (no heading #{anchor} in {linked.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading_that_exist(page):
    assert broken_links(page) == []


def test_the_readme_points_to_every_docs_page():
    linked = {Path(target.partition("#")[0]) for target in LINK.findall(prose((ROOT / "README.md").read_text()))}
    assert [page.name for page in PAGES[1:] if Path("docs", page.name) not in linked] == []


def test_a_missing_file_and_a_missing_heading_are_both_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Where the `is_doctor_call` index is made, and why\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/guide.md#where-the-is_doctor_call-index-is-made-and-why) [gone](docs/gone.md)\n"
        "[bad anchor](docs/guide.md#no-such-heading) [site](https://example.com/x#y) `[code](nope.md)`\n"
        "```\n[in a block](nope.md)\n# not a heading\n```\n[here](#not-a-heading)\n"
    )
    assert [b.split(" ")[0] for b in broken_links(page)] == [
        "docs/gone.md",
        "docs/guide.md#no-such-heading",
        "#not-a-heading",
    ]


def test_slugs_follow_github():
    assert slug("Upgrade runbook (operators)") == "upgrade-runbook-operators"
    assert slug("4. Roll back") == "4-roll-back"
    assert slug("Through a connection pooler (PgBouncer)") == "through-a-connection-pooler-pgbouncer"
    assert anchors("## Notes\n\n## Notes\n") == {"notes", "notes-1"}


def test_the_quick_start_is_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme[readme.index("## Quick start") : readme.index("\n## ", readme.index("## Quick start") + 1)]
    blocks = re.findall(r"```bash\n(.*?)```", quick_start, re.S)
    commands = [[line for line in block.splitlines() if not line.startswith("#")] for block in blocks]
    assert [len(lines) for lines in commands] == [1, 1]
    assert commands[1][0] in (ROOT / ".ci" / "run").read_text().splitlines()
