"""Tables another server or tool made: the usage table named in other letter case, and ids the database does not
generate."""

import sqlite3

import pytest
from sqlalchemy import Column, MetaData, Table, create_engine, insert, text

from legacy import old_model
from support import (
    BACKENDS,
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    alembic,
    columns_of,
    current,
    event_row,
    execute,
    fails,
    line,
    scalar,
    table_names,
    token_rows,
    verify,
)

SERVERS = [*POSTGRES_BACKENDS, *MYSQL_BACKENDS]
OTHER_CASE = "LLM_Usage_Events"  # a dump from a Windows or macOS server (lower_case_table_names 1 or 2 there)
SPLITS = [(12_500, 3_200), (7, 3), (0, 900)]


def table_in_other_case(url, name: str = OTHER_CASE, rows=SPLITS) -> None:
    """The pre-BUILD-144 table as Autopack's model made it, but named ``name`` (quoted: the case is kept)."""
    old = old_model(splits_nullable=False, total_tokens=False).tables["llm_usage_events"]
    table = Table(
        name, MetaData(), *[Column(c.name, c.type, nullable=c.nullable, primary_key=c.primary_key) for c in old.c]
    )
    engine = create_engine(url)
    try:
        table.metadata.create_all(engine)
        with engine.begin() as connection:
            for i, (prompt, completion) in enumerate(rows):
                connection.execute(
                    insert(table).values(event_row(i, prompt_tokens=prompt, completion_tokens=completion))
                )
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", SERVERS)
def test_a_table_named_in_other_letter_case_is_refused_naming_it(db_url):
    if db_url.get_backend_name() != "postgresql":
        assert scalar(db_url, "SELECT @@lower_case_table_names") == 0  # the Linux default: two names, two tables
    table_in_other_case(db_url)
    message = fails(db_url, "upgrade", "head")
    assert f"named {OTHER_CASE} (3 rows), not llm_usage_events" in message, message
    assert "RENAME" in message and message.endswith("nothing was changed."), message
    assert table_names(db_url) == {OTHER_CASE}  # no empty llm_usage_events beside it, no version table
    result = verify(db_url)  # verify does not pass on a new, empty table either
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and f"named {OTHER_CASE} (3 rows)" in result.stderr


@pytest.mark.parametrize("backend", SERVERS)
def test_a_table_beside_one_named_in_other_letter_case_is_refused_naming_both(db_url):
    table_in_other_case(db_url)
    table_in_other_case(db_url, name="llm_usage_events", rows=[])  # what an earlier run or the application made
    message = fails(db_url, "upgrade", "head")
    assert f"holds both llm_usage_events (0 rows) and {OTHER_CASE} (3 rows)" in message, message
    assert message.endswith("nothing was changed.")
    assert table_names(db_url) == {OTHER_CASE, "llm_usage_events"}
    assert "total_tokens" not in columns_of(db_url)


@pytest.mark.parametrize("backend", SERVERS)
def test_a_view_in_our_name_over_the_table_in_other_case_is_named_as_a_view(db_url):
    """Its rows are the table's: "holds both ... drop the other" would invite dropping the real table."""
    table_in_other_case(db_url)
    quote = '"' if db_url.get_backend_name() == "postgresql" else "`"
    execute(db_url, f"CREATE VIEW llm_usage_events AS SELECT * FROM {quote}{OTHER_CASE}{quote}")
    message = fails(db_url, "upgrade", "head")
    assert f"llm_usage_events is a view and the usage table is {OTHER_CASE} (3 rows)" in message, message
    assert "drop the view llm_usage_events, rename the table" in message and "holds both" not in message, message
    assert scalar(db_url, f"SELECT COUNT(*) FROM {quote}{OTHER_CASE}{quote}") == 3


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_migrates_a_table_named_in_other_letter_case_under_its_own_name(db_url):
    table_in_other_case(db_url)
    execute(db_url, f'CREATE VIEW v_prompts AS SELECT provider, prompt_tokens FROM "{OTHER_CASE}"')
    result = alembic(db_url, "upgrade", "head")
    assert f"Renamed {OTHER_CASE} to llm_usage_events" in result.stderr
    assert current(db_url) == "0002 (head)"
    assert table_names(db_url) == {"llm_usage_events", "alembic_version"}
    assert token_rows(db_url) == {1: (12_500, 3_200, 15_700), 2: (7, 3, 10), 3: (0, 900, 900)}
    assert scalar(db_url, "SELECT SUM(prompt_tokens) FROM v_prompts") == 12_507  # the view follows the rename
    checked = verify(db_url)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_refused_sqlite_upgrade_leaves_the_name_as_it_was(db_url):
    table_in_other_case(db_url)
    # someone else's index under the name revision 0002 builds: refused once the rename has begun
    execute(db_url, f'CREATE INDEX ix_llm_usage_events_is_doctor_call ON "{OTHER_CASE}" (provider)')
    message = fails(db_url, "upgrade", "head")
    assert "ix_llm_usage_events_is_doctor_call" in message and message.endswith("nothing was changed."), message
    raw = sqlite3.connect(db_url.database)
    assert [r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == [OTHER_CASE]
    raw.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_verify_of_a_sqlite_table_named_in_other_letter_case_says_how_to_rename_it(db_url):
    table_in_other_case(db_url)
    alembic(db_url, "upgrade", "head")
    raw = sqlite3.connect(db_url.database)  # as a copy from a server that kept the case would have it
    raw.execute('ALTER TABLE llm_usage_events RENAME TO "scratch"')
    raw.execute(f'ALTER TABLE scratch RENAME TO "{OTHER_CASE}"')
    raw.commit()
    raw.close()
    result = verify(db_url)
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [line(result.stderr, f"named {OTHER_CASE} in this file")]
    assert "run 'alembic upgrade head', which renames it to llm_usage_events" in result.stderr


# --- ids the database does not generate ------------------------------------------------------------------------

COLUMNS = (
    "provider VARCHAR(255) NOT NULL, model VARCHAR(255) NOT NULL, run_id VARCHAR(255), phase_id VARCHAR(255), "
    "role VARCHAR(255) NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, "
    "created_at {timestamp} NOT NULL, is_doctor_call BOOLEAN NOT NULL, doctor_model VARCHAR(255), "
    "doctor_action VARCHAR(255)"
)
# (table definition, what the warning says) per engine; {columns} are Autopack's other columns
NOT_GENERATED = {
    "sqlite-without-rowid": (
        "CREATE TABLE llm_usage_events (id INTEGER PRIMARY KEY, {columns}) WITHOUT ROWID",
        "WITHOUT ROWID",
    ),
    "sqlite-int-key": (
        "CREATE TABLE llm_usage_events (id INT NOT NULL PRIMARY KEY, {columns})",
        "not the rowid's alias",
    ),
    "server-no-default": ("CREATE TABLE llm_usage_events (id INTEGER NOT NULL PRIMARY KEY, {columns})", "no "),
    "server-constant-default": (
        "CREATE TABLE llm_usage_events (id INTEGER NOT NULL DEFAULT 0 PRIMARY KEY, {columns})",
        "(only DEFAULT 0)",
    ),
}
CASES = [
    pytest.param("sqlite", "sqlite-without-rowid"),
    pytest.param("sqlite", "sqlite-int-key"),
    *(pytest.param(b, case) for b in SERVERS for case in ("server-no-default", "server-constant-default")),
]


@pytest.mark.parametrize(("backend", "case"), CASES)
def test_an_id_the_database_does_not_generate_is_named_before_the_application_meets_it(db_url, case):
    definition, why = NOT_GENERATED[case]
    timestamp = "DATETIME" if db_url.get_backend_name() in ("mysql", "mariadb") else "TIMESTAMP"
    execute(
        db_url,
        definition.format(columns=COLUMNS.format(timestamp=timestamp)),
        "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, created_at, "
        "is_doctor_call) VALUES (7, 'openai', 'gpt-4o', 'builder', 10, 5, '2025-11-01 12:00:00', false)",
    )
    result = alembic(db_url, "upgrade", "head")  # BUILD-144 itself needs only integer ids: it migrates
    warning = line(result.stderr, "llm_usage_events.id is not generated by the database")
    assert why in warning and "every event the recorder writes fails" in warning, warning
    assert token_rows(db_url) == {7: (10, 5, 15)}
    checked = verify(db_url)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert line(checked.stdout, "id generated by the database").startswith("  FAIL"), checked.stdout
    assert why in line(checked.stdout, "id generated by the database")
    # what the warning and verify foretell: the recorder's INSERT, which leaves id out, fails
    engine = create_engine(db_url)
    try:
        with pytest.raises(Exception, match=r"(?i)null|doesn't have a default|duplicate"), engine.begin() as connection:
            for _ in range(2):  # a constant default takes the first row and collides on the second
                connection.execute(
                    text(
                        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, "
                        "total_tokens, created_at, is_doctor_call) VALUES ('p', 'm', 'r', 1, 2, 3, "
                        "'2025-11-02 00:00:00', false)"
                    )
                )
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_id_the_database_generates_passes_verify_without_a_warning(db_url):
    key = {"sqlite": "id INTEGER PRIMARY KEY", "postgresql": "id SERIAL PRIMARY KEY"}.get(
        db_url.get_backend_name(), "id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY"
    )
    timestamp = "DATETIME" if db_url.get_backend_name() in ("mysql", "mariadb") else "TIMESTAMP"
    execute(db_url, f"CREATE TABLE llm_usage_events ({key}, {COLUMNS.format(timestamp=timestamp)})")
    result = alembic(db_url, "upgrade", "head")
    assert "not generated by the database" not in result.stderr
    checked = verify(db_url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert line(checked.stdout, "id generated by the database").startswith("  ok")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_rows_recorded_with_a_null_id_are_said_truly(db_url):
    """A nullable key that is not the rowid's alias: SQLite stores the recorder's events with a NULL id. verify
    says that (not "fails"), and a downgrade names the NULL ids, not a writer that is not there."""
    execute(
        db_url,
        f"CREATE TABLE llm_usage_events (id INT PRIMARY KEY, {COLUMNS.format(timestamp='DATETIME')})",
        "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, created_at, "
        "is_doctor_call) VALUES (1, 'openai', 'gpt-4o', 'builder', 10, 5, '2025-11-01 12:00:00', 0)",
    )
    alembic(db_url, "upgrade", "head")
    engine = create_engine(db_url)
    with engine.begin() as connection:  # as the recorder writes: id left out
        connection.exec_driver_sql(
            "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at, is_doctor_call) "
            "VALUES ('google', 'gemini', 'builder', 1000, '2025-11-02 00:00:00', 0)"
        )
    engine.dispose()
    assert scalar(db_url, "SELECT COUNT(*) FROM llm_usage_events WHERE id IS NULL") == 1
    check = line(verify(db_url).stdout, "id generated by the database")
    assert "stores every event the recorder writes with a NULL id" in check and "fails" not in check, check
    message = fails(db_url, "downgrade", "-1")
    assert "with a NULL id cannot be set aside" in message and "application still running" not in message, message
    assert token_rows(db_url) == {1: (10, 5, 15), None: (None, None, 1000)}
