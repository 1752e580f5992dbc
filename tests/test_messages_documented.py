"""docs/troubleshooting.md has an entry for every sentence in the catalogue of operator messages, and every message
it quotes is one the catalogue holds: one entry per message, as squawk gives each rule a page."""

import re

from autopack.migrations.build144.messages import MESSAGES
from support import ROOT

TROUBLESHOOTING = (ROOT / "docs" / "troubleshooting.md").read_text()

# what the fields hold where the page quotes a value rather than '…'
SAMPLES = {
    "table": "llm_usage_events",
    "holdover": "llm_usage_events_build144_holdover",
    "index": "ix_llm_usage_events_is_doctor_call",
    "dialect": "mysql",
    "step": "upgrade",
    "named": "LLM_Usage_Events (… rows)",
    "hooks": "trigger …",
    "readers": "view …; trigger …",
    "s": "",
    "columns": "created_at",
    "type": "BIGINT",
    "bare": "0003",
    "value_error": "AUTOPACK_VERSION_TABLE=… is not a table name",  # the ValueError version_table() words
}


class Sampled(dict):
    def __missing__(self, key: str) -> str:
        return "…"


def rendered(name: str) -> str:
    """A message as an operator reads it, '…' standing for each value the page does not quote."""
    return MESSAGES[name].template().format_map(Sampled(SAMPLES))


def quoted_messages() -> list[tuple[str, re.Pattern]]:
    """Each message quoted in the 'message starts with' column of the messages table, '…' matching anything."""
    lines = TROUBLESHOOTING.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| message starts with"))
    quoted = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        first_cell = line.strip("|").split(" | ")[0]
        for text in re.findall(r"`([^`]+)`", first_cell):
            pattern = ".*?".join(re.escape(part) for part in text.split("…"))
            quoted.append((text, re.compile(pattern, re.DOTALL)))
    return quoted


def test_every_message_has_an_entry_on_the_troubleshooting_page():
    quoted = quoted_messages()
    undocumented = [name for name in MESSAGES if not any(p.match(rendered(name)) for _, p in quoted)]
    assert undocumented == []


def test_every_message_the_page_quotes_is_in_the_catalogue():
    sentences = [rendered(name) for name in MESSAGES]
    unknown = [text for text, p in quoted_messages() if not any(p.match(s) for s in sentences)]
    assert unknown == []


def test_every_message_is_one_sentence_ending_in_a_full_stop():
    for name in MESSAGES:
        text = rendered(name)
        assert "\n" not in text and text.endswith(".") and text[0] != " ", name


def detailed_quotes() -> list[tuple[str, re.Pattern]]:
    """The messages each entry of 'Messages in detail' quotes under its heading (before its first bullet)."""
    section = TROUBLESHOOTING.split("## Messages in detail", 1)[1].split("\n## ", 1)[0]
    quoted = []
    for entry in section.split("\n### ")[1:]:
        head = entry.split("\n- ", 1)[0].split("\n", 1)[1]  # the lines between the heading and the first bullet
        for text in re.findall(r"`([^`]+)`", head.replace("\n", " ")):
            if len(text) < 20:  # a command named beside the quote (`verify`)
                continue
            pattern = ".*?".join(re.escape(part.strip()) for part in text.split("…"))  # '…' elides with its spaces
            quoted.append((text, re.compile(pattern, re.DOTALL)))
    return quoted


def test_every_message_the_detailed_entries_quote_is_in_the_catalogue():
    sentences = [rendered(name) for name in MESSAGES]
    quoted = detailed_quotes()
    assert len(quoted) >= 5
    unknown = [text for text, p in quoted if not any(p.match(s) for s in sentences)]
    assert unknown == []
