"""SQLite's in-place edit checks what it claims on the table itself, and a rebuild never drops what it cannot
carry over (CHECK constraints, AUTOINCREMENT, COLLATE) without saying so."""

import sqlite3

import pytest

from support import alembic, columns_of, token_rows

COLUMNS = """
    provider VARCHAR NOT NULL, model VARCHAR NOT NULL, run_id VARCHAR, phase_id VARCHAR, role VARCHAR NOT NULL,
    {splits},
    created_at DATETIME NOT NULL, is_doctor_call BOOLEAN NOT NULL, doctor_model VARCHAR, doctor_action VARCHAR
"""


def make(path, splits: str, id_column: str = "id INTEGER NOT NULL PRIMARY KEY", extra: str = "") -> dict:
    connection = sqlite3.connect(path)
    connection.execute(f"CREATE TABLE llm_usage_events ({id_column}, {COLUMNS.format(splits=splits)}{extra})")
    connection.executemany(
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at,"
        " is_doctor_call) VALUES ('p', 'm', 'builder', ?, ?, '2025-11-01 12:00:00.000000', 0)",
        [(10, 5), (7, 0)],
    )
    connection.commit()
    connection.close()
    return token_rows(f"sqlite:///{path}")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_comment_that_repeats_a_column_definition_does_not_fool_the_edit(db_url):
    before = make(
        db_url.database,
        "prompt_tokens INTEGER DEFAULT 0 NOT NULL, -- was: prompt_tokens INTEGER NOT NULL\n"
        "    completion_tokens INTEGER DEFAULT 0 NOT NULL -- was: completion_tokens INTEGER NOT NULL\n",
    )
    up = alembic(db_url, "upgrade", "head")
    assert "llm_usage_events is rebuilt" in up.stderr
    columns = columns_of(db_url)
    assert columns["prompt_tokens"]["nullable"] and columns["completion_tokens"]["nullable"]
    assert token_rows(db_url) == {i: (p, c, p + c) for i, (p, c) in before.items()}
    connection = sqlite3.connect(db_url.database)  # a total-only row is accepted now
    connection.execute(
        "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at, is_doctor_call)"
        " VALUES ('p', 'm', 'builder', 18500, '2025-11-02 00:00:00', 0)"
    )
    connection.commit()
    connection.close()


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "id_column, extra, lost",
    [
        ("id INTEGER NOT NULL PRIMARY KEY", ", CHECK (provider <> '')", "a CHECK constraint"),
        ("id INTEGER PRIMARY KEY AUTOINCREMENT", "", "AUTOINCREMENT"),
        ("id INTEGER NOT NULL PRIMARY KEY", ", UNIQUE (run_id COLLATE NOCASE)", "a COLLATE clause"),
    ],
)
def test_a_rebuild_that_would_lose_part_of_the_definition_is_refused_naming_it(db_url, id_column, extra, lost):
    # comments that repeat the definitions force the rebuild path
    before = make(
        db_url.database,
        "prompt_tokens INTEGER DEFAULT 0 NOT NULL, -- prompt_tokens INTEGER NOT NULL\n"
        "    completion_tokens INTEGER NOT NULL",
        id_column,
        extra,
    )
    result = alembic(db_url, "upgrade", "head", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    (message,) = [line for line in result.stdout.splitlines() if line.startswith("FAILED: ")]
    assert "rebuilding it would lose" in message and lost in message and message.endswith("nothing was changed.")
    assert "total_tokens" not in columns_of(db_url)
    assert token_rows(db_url) == before
