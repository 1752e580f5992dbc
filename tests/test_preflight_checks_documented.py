"""docs/troubleshooting.md documents every check made before a change, and quotes each refusal as the tree words it."""

import re
import string

from autopack.migrations.build144.preflight_checks import CHECKS
from support import ROOT

TROUBLESHOOTING = (ROOT / "docs" / "troubleshooting.md").read_text()


def table_after(heading_cell: str) -> list[list[str]]:
    """The rows (cells) of the troubleshooting page's table whose header row starts with ``heading_cell``."""
    lines = TROUBLESHOOTING.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {heading_cell}"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


# what the checks' finders return, as an operator's database would make them
SAMPLES = {
    "table": "llm_usage_events",
    "holdover": "llm_usage_events_build144_holdover",
    "ids": "3, 7, 9, 12, 15 and more",
    "limit": "2,147,483,647",
    "checks": "ck_prompt_set (prompt_tokens IS NOT NULL)",
    "publication": "usage_pub",
    "why": "REPLICA IDENTITY NOTHING",
    "readers": "view v_usage_totals; trigger audit_usage",
    "s": "",
    "them": "them",
    "splits": "prompt_tokens",
    "type": "BIGINT",
    "versions": "12",
    "columns": "created_at",
    "triggers": "zz_policy_cap_prompt",
    "fill": "zz_llm_usage_events_build144_fill_total",
    "what": "on llm_usage_events: CREATE INDEX ix_llm_usage_events_is_doctor_call ON llm_usage_events (provider)",
    "index": "ix_llm_usage_events_is_doctor_call",
    "column": "is_doctor_call",
    "publications": "usage_pub (logical replication slot usage_sub)",
    "subscriptions": "usage_sub",
}


def rendered(refusal: str) -> str:
    """A refusal as an operator would read it, with a sample value for each field."""
    fields = {name for _, name, _, _ in string.Formatter().parse(refusal) if name}
    assert fields <= SAMPLES.keys(), f"a sample for {fields - SAMPLES.keys()}"
    return refusal.format(**SAMPLES)


def quoted_starts() -> list[re.Pattern]:
    """The troubleshooting table's 'message starts with' cells, '…' matching anything."""
    patterns = []
    for cells in table_after("message starts with"):
        for quoted in re.findall(r"`([^`]+)`", cells[0]):
            patterns.append(re.compile(".*?".join(re.escape(part) for part in quoted.split("…")), re.DOTALL))
    return patterns


def test_every_check_is_a_row_of_the_checks_table():
    names = [cells[0] for cells in table_after("checked before any change")]
    assert [c.name for c in CHECKS if c.name not in names] == []


def test_every_refusal_is_quoted_in_the_troubleshooting_table():
    patterns = quoted_starts()
    unquoted = [c.name for c in CHECKS if not any(p.match(rendered(c.refusal)) for p in patterns)]
    assert unquoted == []


def test_every_refusal_is_one_sentence_that_says_nothing_was_changed():
    for check in CHECKS:
        text = rendered(check.refusal)
        assert "\n" not in text and text.endswith("; nothing was changed."), check.name
