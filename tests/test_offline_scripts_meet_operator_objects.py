"""Offline scripts against what operators hang on the table: a trigger that rolls back, a column whose name ends
like a split, readers of total_tokens, row-level security, wider split columns. Each script ends migrated or
leaves the database as it was."""

import sqlite3
import subprocess
import uuid

import pytest

from support import (
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    alembic,
    apply_script,
    columns_of,
    current,
    execute,
    forced_row_security,
    token_rows,
)

SQLITE_ROWS = """
INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at, is_doctor_call)
VALUES ('p', 'm', 'builder', 100, 50, '2025-11-01', 0), ('q', 'm', 'builder', 7, 3, '2025-11-02', 0);
"""


def script(url, *args) -> str:
    return alembic(url, *args, "--sql").stdout


def sqlite_shell(path, sql: str) -> str:
    return subprocess.run(["sqlite3", str(path)], input=sql, capture_output=True, text=True, timeout=60).stderr


def integrity(path) -> str:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("raise_", ["ROLLBACK", "ABORT"])
def test_a_trigger_that_rolls_back_leaves_either_script_without_effect(db_url, raise_):
    alembic(db_url, "upgrade", "0001")
    connection = sqlite3.connect(db_url.database)
    connection.executescript(SQLITE_ROWS)
    connection.close()
    guard = (
        f"CREATE TRIGGER append_only BEFORE UPDATE ON llm_usage_events BEGIN SELECT RAISE({raise_}, 'append-only'); END"
    )
    sqlite_shell(db_url.database, guard + ";")
    before = token_rows(db_url)
    printed = sqlite_shell(db_url.database, script(db_url, "upgrade", "0001:0002"))
    assert "append-only" in printed
    assert current(db_url) == "0001" and token_rows(db_url) == before and "total_tokens" not in columns_of(db_url)
    assert integrity(db_url.database) == "ok"

    sqlite_shell(db_url.database, "DROP TRIGGER append_only;")
    alembic(db_url, "upgrade", "head")
    sqlite_shell(
        db_url.database,
        "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at, is_doctor_call)"
        " VALUES ('p', 'm', 'builder', 18500, '2025-11-03', 0);" + guard + ";",
    )
    at_head = token_rows(db_url)
    printed = sqlite_shell(db_url.database, script(db_url, "downgrade", "0002:0001"))
    assert "append-only" in printed
    assert current(db_url) == "0002 (head)" and token_rows(db_url) == at_head
    assert integrity(db_url.database) == "ok"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_column_whose_name_ends_like_a_split_is_never_edited(db_url):
    alembic(db_url, "upgrade", "0001")
    connection = sqlite3.connect(db_url.database)
    connection.executescript(SQLITE_ROWS)
    connection.execute("ALTER TABLE llm_usage_events ADD COLUMN cached_prompt_tokens INTEGER NOT NULL DEFAULT 0")
    connection.commit()
    connection.close()
    assert not sqlite_shell(db_url.database, script(db_url, "upgrade", "0001:0002"))
    assert current(db_url) == "0002 (head)"
    columns = columns_of(db_url)
    assert columns["prompt_tokens"]["nullable"] and not columns["cached_prompt_tokens"]["nullable"]
    assert not sqlite_shell(db_url.database, script(db_url, "downgrade", "0002:0001"))
    assert current(db_url) == "0001" and not columns_of(db_url)["cached_prompt_tokens"]["nullable"]
    assert integrity(db_url.database) == "ok"


READER = {
    **{
        b: [
            "CREATE FUNCTION alert_big() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.total_tokens > 100000 "
            "THEN RAISE NOTICE 'big'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER alert_big_calls AFTER INSERT ON llm_usage_events FOR EACH ROW EXECUTE FUNCTION alert_big()",
        ]
        for b in POSTGRES_BACKENDS
    },
    **{
        b: [
            "CREATE TRIGGER alert_big_calls AFTER INSERT ON llm_usage_events FOR EACH ROW "
            "SET @big = NEW.total_tokens > 100000"
        ]
        for b in MYSQL_BACKENDS
    },
}


def seeded_at_head(url):
    alembic(url, "upgrade", "head")
    execute(
        url,
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, total_tokens,"
        " created_at, is_doctor_call) VALUES ('p', 'm', 'b', 100, 50, 150, '2025-11-01', false),"
        " ('tenant2', 'm', 'b', 100, 50, 999, '2025-11-02', false),"
        " ('p', 'm', 'b', NULL, NULL, 18500, '2025-11-03', false)",
    )
    return token_rows(url)


@pytest.mark.parametrize("backend", [*POSTGRES_BACKENDS, *MYSQL_BACKENDS])
def test_a_server_downgrade_script_refuses_while_a_trigger_reads_total_tokens(db_url, backend):
    before = seeded_at_head(db_url)
    execute(db_url, *READER[backend])
    with pytest.raises(Exception, match=r"total_tokens|more than 1 row"):
        apply_script(db_url, script(db_url, "downgrade", "0002:0001"))
    assert current(db_url) == "0002 (head)" and token_rows(db_url) == before


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_postgresql_scripts_never_work_on_a_view_filtered_by_row_level_security(db_url):
    before = seeded_at_head(db_url)
    owner = f"owner_{uuid.uuid4().hex[:8]}"
    execute(db_url, *forced_row_security(owner, "provider <> 'tenant2'"))
    try:
        with pytest.raises(Exception, match="row-level security"):
            apply_script(db_url.set(username=owner), script(db_url, "downgrade", "0002:0001"))
        assert current(db_url) == "0002 (head)" and token_rows(db_url) == before
    finally:
        execute(
            db_url,
            "DROP POLICY tenant ON llm_usage_events",
            "ALTER TABLE llm_usage_events OWNER TO CURRENT_USER",
            "ALTER TABLE alembic_version OWNER TO CURRENT_USER",
            f"DROP OWNED BY {owner}",
            f"DROP ROLE {owner}",
        )


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_postgresql_upgrade_script_whose_backfill_is_skipped_by_a_trigger_is_refused(db_url):
    alembic(db_url, "upgrade", "0001")
    execute(
        db_url,
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at,"
        " is_doctor_call) VALUES ('p', 'm', 'b', 100, 50, '2025-11-01', false)",
        "CREATE FUNCTION skip() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
        "CREATE TRIGGER skip_updates BEFORE UPDATE ON llm_usage_events FOR EACH ROW EXECUTE FUNCTION skip()",
    )
    with pytest.raises(Exception, match="rows still need a total"):
        apply_script(db_url, script(db_url, "upgrade", "0001:0002"))
    assert current(db_url) == "0001" and "total_tokens" not in columns_of(db_url)


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_a_mariadb_upgrade_script_never_narrows_a_bigint_split(db_url):
    alembic(db_url, "upgrade", "0001")
    execute(
        db_url,
        "ALTER TABLE llm_usage_events MODIFY prompt_tokens BIGINT NOT NULL COMMENT 'tokens in'",
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at,"
        " is_doctor_call) VALUES ('p', 'm', 'b', 3000000000, 5, '2025-11-01', false)",
    )
    before = token_rows(db_url)
    with pytest.raises(Exception, match="more than 1 row"):
        apply_script(db_url, "SET SESSION sql_mode = '';\n" + script(db_url, "upgrade", "0001:0002"))
    assert token_rows(db_url) == before and current(db_url) == "0001"
    assert type(columns_of(db_url)["prompt_tokens"]["type"]).__name__ == "BIGINT"
