"""Round trips on tables operators widened or changed between migrations: what the downgrade, or the upgrade
after it, could not give back is refused before any change; odd ids, locks and roles end in one sentence."""

import uuid

import pytest
from sqlalchemy import text

from legacy import build
from support import (
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    ROOT,
    alembic,
    columns_of,
    current,
    engine_for,
    execute,
    fails,
    token_rows,
)

INSERT = (
    "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, total_tokens,"
    " created_at, is_doctor_call) VALUES ({id}, 'p', 'm', 'b', {p}, {c}, {t}, '2025-11-01 10:00:00', false)"
)


@pytest.mark.parametrize("backend", [*POSTGRES_BACKENDS, *MYSQL_BACKENDS])
def test_a_downgrade_refuses_totals_the_recreated_integer_column_could_not_hold(db_url, backend):
    build(db_url, "old_script")
    execute(db_url, "DROP VIEW v_usage_by_provider")  # it would pin the split columns' type on PostgreSQL
    widen = "ALTER COLUMN {c} TYPE BIGINT" if backend in POSTGRES_BACKENDS else "MODIFY {c} BIGINT NOT NULL"
    execute(
        db_url,
        "ALTER TABLE llm_usage_events " + ", ".join(widen.format(c=c) for c in ("prompt_tokens", "completion_tokens")),
        "ALTER TABLE llm_usage_events " + widen.format(c="total_tokens"),
        INSERT.format(id=1000, p=4_000_000_000, c=1_000_000_000, t=5_000_000_000),
    )
    alembic(db_url, "upgrade", "head")
    at_head = token_rows(db_url)
    message = fails(db_url, "downgrade", "-1")
    assert "rows hold totals the INTEGER column the next upgrade re-creates cannot (ids 1000)" in message
    assert current(db_url) == "0002 (head)" and token_rows(db_url) == at_head


def test_a_held_row_whose_event_changed_again_stops_the_next_downgrade(db_url, backend):
    alembic(db_url, "upgrade", "head")
    execute(db_url, INSERT.format(id=3, p="NULL", c="NULL", t=700))
    alembic(db_url, "downgrade", "-1")
    execute(db_url, "UPDATE llm_usage_events SET prompt_tokens = 100 WHERE id = 3")  # old code changes it
    up = alembic(db_url, "upgrade", "head")
    assert "stay in llm_usage_events_build144_holdover" in up.stderr
    execute(
        db_url,
        "UPDATE llm_usage_events SET prompt_tokens = NULL, completion_tokens = NULL, total_tokens = 5000 WHERE id = 3",
    )
    message = fails(db_url, "downgrade", "-1")
    assert "still holds rows an earlier upgrade kept (ids 3) whose events have changed again" in message
    assert token_rows(db_url)[3] == (None, None, 5000) and current(db_url) == "0002 (head)"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_check_written_in_mixed_case_is_still_found(db_url):
    import sqlite3

    path = db_url.database
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE llm_usage_events (id INTEGER NOT NULL PRIMARY KEY, provider VARCHAR NOT NULL, model VARCHAR "
        "NOT NULL, run_id VARCHAR, phase_id VARCHAR, role VARCHAR NOT NULL, prompt_tokens INTEGER NOT NULL, "
        "completion_tokens INTEGER NOT NULL, created_at DATETIME NOT NULL, is_doctor_call BOOLEAN NOT NULL, "
        "doctor_model VARCHAR, doctor_action VARCHAR, CONSTRAINT ck_pt CHECK (Prompt_Tokens IS NOT NULL))"
    )
    connection.commit()
    connection.close()
    message = fails(db_url, "upgrade", "head")
    assert message.startswith("llm_usage_events has CHECK constraint ck_pt")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_rebuild_that_would_drop_foreign_key_actions_or_conflict_clauses_is_refused(db_url):
    import sqlite3

    connection = sqlite3.connect(db_url.database)
    connection.executescript(
        "CREATE TABLE runs (run_id VARCHAR PRIMARY KEY);"
        "CREATE TABLE llm_usage_events (id INTEGER NOT NULL PRIMARY KEY, provider VARCHAR NOT NULL, model VARCHAR "
        "NOT NULL, run_id VARCHAR REFERENCES runs (run_id) ON DELETE SET NULL, phase_id VARCHAR, role VARCHAR NOT "
        "NULL, prompt_tokens INTEGER NOT NULL, -- prompt_tokens INTEGER NOT NULL\n completion_tokens INTEGER NOT "
        "NULL, created_at DATETIME NOT NULL, is_doctor_call BOOLEAN NOT NULL, doctor_model VARCHAR, "
        "doctor_action VARCHAR);"
    )
    connection.close()
    message = fails(db_url, "upgrade", "head")
    assert "rebuilding it would lose a foreign key action" in message
    assert "total_tokens" not in columns_of(db_url)


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
@pytest.mark.parametrize("online", [False, True])
def test_a_bigint_id_past_2_31_migrates_on_postgresql(db_url, online):
    build(db_url, "pre_build144")
    execute(
        db_url,
        "ALTER TABLE usage_annotations ALTER COLUMN event_id TYPE BIGINT",
        "ALTER TABLE llm_usage_events ALTER COLUMN id TYPE BIGINT",
        "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, created_at,"
        " is_doctor_call) VALUES (3000000000, 'p', 'm', 'b', 30, 12, '2025-11-01', false)",
    )
    alembic(db_url, *(["-x", "online=true"] if online else []), "-x", "batch_rows=2", "upgrade", "head")
    assert token_rows(db_url)[3_000_000_000] == (30, 12, 42)


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_a_mariadb_downgrade_behind_a_long_transaction_is_one_sentence(db_url):
    alembic(db_url, "upgrade", "head")
    execute(db_url, INSERT.format(id=1, p=10, c=5, t=15))
    holder = engine_for(db_url).connect()
    holder.execute(text("SELECT COUNT(*) FROM llm_usage_events"))  # an open transaction holds a metadata lock
    try:
        message = fails(db_url, "-x", "lock_timeout=2s", "downgrade", "-1")
    finally:
        holder.rollback()
        holder.close()
    assert message.startswith("Could not lock llm_usage_events") and "lock_timeout=2s" in message
    alembic(db_url, "downgrade", "-1")  # once the transaction ends, the same command finishes
    assert token_rows(db_url) == {1: (10, 5)}


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_a_system_versioned_mariadb_table_downgrade_is_refused_while_history_holds_null_splits(db_url):
    alembic(db_url, "upgrade", "head")
    execute(db_url, "ALTER TABLE llm_usage_events ADD SYSTEM VERSIONING")
    execute(db_url, INSERT.format(id=1, p="NULL", c="NULL", t=18500), INSERT.format(id=2, p=10, c=5, t=15))
    before = token_rows(db_url)
    message = fails(db_url, "downgrade", "-1")
    assert "is system-versioned and 1 row versions (history included) hold NULL splits" in message
    assert token_rows(db_url) == before and current(db_url) == "0002 (head)"
    execute(db_url, "DELETE FROM llm_usage_events WHERE id = 1", "DELETE HISTORY FROM llm_usage_events")
    alembic(db_url, "downgrade", "-1")  # without NULL splits anywhere, it goes down and up
    alembic(db_url, "upgrade", "head")
    assert token_rows(db_url) == {2: (10, 5, 15)}


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_online_mode_behind_a_lock_says_what_it_changed(db_url):
    build(db_url, "pre_build144")  # unversioned: the adoption stamps 0001 before the online step
    holder = engine_for(db_url).connect()
    holder.execute(text("LOCK TABLE llm_usage_events IN ACCESS SHARE MODE"))
    try:
        message = fails(db_url, "-x", "online=true", "-x", "online_retries=2", "upgrade", "head")
    finally:
        holder.rollback()
        holder.close()
    assert "llm_usage_events was not changed" in message and "nothing was changed" not in message
    assert "total_tokens" not in columns_of(db_url)


def test_a_row_left_at_zero_by_old_code_comes_back_filled(db_url, backend):
    alembic(db_url, "upgrade", "head")
    execute(db_url, INSERT.format(id=1, p=5, c="NULL", t=0), INSERT.format(id=2, p=5, c=7, t=0))
    alembic(db_url, "downgrade", "-1")
    alembic(db_url, "upgrade", "head")
    assert token_rows(db_url) == {1: (5, None, 5), 2: (5, 7, 12)}


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_verify_runs_for_a_role_that_may_only_read_the_usage_table(db_url):
    import os
    import subprocess
    import sys

    alembic(db_url, "upgrade", "head")
    role = f"reader_{uuid.uuid4().hex[:8]}"
    execute(db_url, f"CREATE ROLE {role} LOGIN", f"GRANT SELECT ON llm_usage_events TO {role}")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "autopack", "verify"],
            env={**os.environ, "DATABASE_URL": db_url.set(username=role).render_as_string(False)},
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "All checks passed." in result.stdout
    finally:
        execute(db_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")
