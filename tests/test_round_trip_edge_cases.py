"""Round trips on tables operators widened or changed between migrations: what the downgrade, or the upgrade
after it, could not give back is refused before any change; odd ids, locks and roles end in one sentence."""

import uuid

import pytest
from sqlalchemy import create_engine, text

from legacy import build
from support import (
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    ROOT,
    alembic,
    columns_of,
    current,
    event_row,
    execute,
    fails,
    insert_events,
    token_rows,
    verify,
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
    message = fails(db_url, "downgrade", "0001")
    assert "(ids 1000)" in message and "the round trip would not be lossless" in message
    assert current(db_url) == "0002 (head)" and token_rows(db_url) == at_head


def test_a_held_row_whose_event_changed_again_stops_the_next_downgrade(db_url, backend):
    alembic(db_url, "upgrade", "head")
    execute(db_url, INSERT.format(id=3, p="NULL", c="NULL", t=700))
    alembic(db_url, "downgrade", "0001")
    execute(db_url, "UPDATE llm_usage_events SET prompt_tokens = 100 WHERE id = 3")  # old code changes it
    up = alembic(db_url, "upgrade", "head")
    assert "stay in llm_usage_events_build144_holdover" in up.stderr
    execute(
        db_url,
        "UPDATE llm_usage_events SET prompt_tokens = NULL, completion_tokens = NULL, total_tokens = 5000 WHERE id = 3",
    )
    message = fails(db_url, "downgrade", "0001")
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
    holder = create_engine(db_url).connect()
    holder.execute(text("SELECT COUNT(*) FROM llm_usage_events"))  # an open transaction holds a metadata lock
    try:
        message = fails(db_url, "-x", "lock_timeout=2s", "downgrade", "0001")
    finally:
        holder.rollback()
        holder.close()
    assert message.startswith("Could not lock llm_usage_events") and "lock_timeout=2s" in message
    alembic(db_url, "downgrade", "0001")  # once the transaction ends, the same command finishes
    assert token_rows(db_url) == {1: (10, 5)}


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_a_system_versioned_mariadb_table_downgrade_is_refused_while_history_holds_null_splits(db_url):
    alembic(db_url, "upgrade", "head")
    execute(db_url, "ALTER TABLE llm_usage_events ADD SYSTEM VERSIONING")
    execute(db_url, INSERT.format(id=1, p="NULL", c="NULL", t=18500), INSERT.format(id=2, p=10, c=5, t=15))
    before = token_rows(db_url)
    message = fails(db_url, "downgrade", "0001")
    assert "is system-versioned and 1 row versions (history included) hold NULL splits" in message
    assert token_rows(db_url) == before and current(db_url) == "0002 (head)"
    execute(db_url, "DELETE FROM llm_usage_events WHERE id = 1", "DELETE HISTORY FROM llm_usage_events")
    alembic(db_url, "downgrade", "0001")  # without NULL splits anywhere, it goes down and up
    alembic(db_url, "upgrade", "head")
    assert token_rows(db_url) == {2: (10, 5, 15)}


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_online_mode_behind_a_lock_says_what_it_changed(db_url):
    build(db_url, "pre_build144")  # unversioned: the adoption stamps 0001 before the online step
    holder = create_engine(db_url).connect()
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
    alembic(db_url, "downgrade", "0001")
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
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "All checks passed." in result.stdout
    finally:
        execute(db_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_a_set_aside_row_with_a_null_role_comes_back(db_url, backend):
    alembic(db_url, "upgrade", "head")
    nullable = {
        "sqlite": None,  # SQLite: made nullable below by the table's own definition
        **{b: "ALTER TABLE llm_usage_events ALTER COLUMN role DROP NOT NULL" for b in POSTGRES_BACKENDS},
        **{b: "ALTER TABLE llm_usage_events MODIFY role VARCHAR(255) NULL" for b in MYSQL_BACKENDS},
    }[backend]
    if nullable:
        execute(db_url, nullable)
    else:
        execute(
            db_url,
            "PRAGMA writable_schema = ON",
            "UPDATE sqlite_master SET sql = replace(sql, 'role VARCHAR NOT NULL', 'role VARCHAR') "
            "WHERE name = 'llm_usage_events'",
        )
    execute(
        db_url,
        "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, total_tokens,"
        " created_at, is_doctor_call) VALUES (1, 'google', 'gemini', NULL, NULL, NULL, 18500, '2025-11-01', false)",
    )
    alembic(db_url, "downgrade", "0001")
    up = alembic(db_url, "upgrade", "head")
    assert "Restored 1 of 1" in up.stderr, up.stderr
    assert token_rows(db_url) == {1: (None, None, 18500)}


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_a_created_at_that_mariadb_rewrites_on_update_is_refused_before_any_change(db_url):
    alembic(db_url, "upgrade", "0001")
    execute(
        db_url,
        "ALTER TABLE llm_usage_events MODIFY created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP "
        "ON UPDATE CURRENT_TIMESTAMP",
        INSERT.format(id=2, p=100, c=50, t="NULL").replace(", total_tokens", "").replace(", NULL, '2025", ", '2025"),
    )
    message = fails(db_url, "upgrade", "head")
    assert "created_at has ON UPDATE CURRENT_TIMESTAMP" in message and message.endswith("nothing was changed.")
    engine = create_engine(db_url)
    with engine.connect() as connection:
        assert (
            str(connection.execute(text("SELECT created_at FROM llm_usage_events")).scalar()) == "2025-11-01 10:00:00"
        )
    engine.dispose()
    assert "total_tokens" not in columns_of(db_url)


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_postgresql_downgrade_stopped_by_a_guard_is_one_sentence_and_big_splits_are_refused(db_url):
    alembic(db_url, "upgrade", "head")
    execute(db_url, INSERT.format(id=2, p="NULL", c="NULL", t=18500))
    before = token_rows(db_url)
    execute(
        db_url,
        "CREATE FUNCTION forbid() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'append-only'; END $$",
        "CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON llm_usage_events FOR EACH ROW EXECUTE FUNCTION forbid()",
    )
    message = fails(db_url, "downgrade", "0001")
    assert "append-only" in message and "trigger append_only" in message and message.endswith("nothing was changed.")
    assert token_rows(db_url) == before and current(db_url) == "0002 (head)"
    execute(db_url, "DROP TRIGGER append_only ON llm_usage_events")
    execute(db_url, INSERT.format(id=1, p=2_000_000_000, c=2_000_000_000, t=7))
    before = token_rows(db_url)
    # a 4,000,000,000 split sum (compared in 64 bits) the next upgrade could not take: refused, not half done
    message = fails(db_url, "downgrade", "0001")
    assert "exceed what an INTEGER total can hold (ids 1) would stop the next upgrade" in message
    assert token_rows(db_url) == before and current(db_url) == "0002 (head)"


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_trigger_on_a_partition_that_reads_total_tokens_stops_the_downgrade(db_url):
    execute(
        db_url,
        "CREATE TABLE llm_usage_events (id INTEGER NOT NULL, provider VARCHAR NOT NULL, model VARCHAR NOT NULL, "
        "run_id VARCHAR, phase_id VARCHAR, role VARCHAR NOT NULL, prompt_tokens INTEGER NOT NULL, "
        "completion_tokens INTEGER NOT NULL, created_at TIMESTAMP NOT NULL, is_doctor_call BOOLEAN NOT NULL, "
        "doctor_model VARCHAR, doctor_action VARCHAR, PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at)",
        "CREATE TABLE llm_usage_events_2025 PARTITION OF llm_usage_events FOR VALUES FROM ('2025-01-01') TO "
        "('2026-01-01')",
        "INSERT INTO llm_usage_events VALUES (1, 'p', 'm', NULL, NULL, 'b', 10, 5, '2025-11-01', false, NULL, NULL)",
    )
    alembic(db_url, "upgrade", "head")
    execute(
        db_url,
        "CREATE FUNCTION alert_big() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.total_tokens > 100000 THEN "
        "RAISE NOTICE 'big'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER alert_big_calls AFTER INSERT ON llm_usage_events_2025 FOR EACH ROW EXECUTE FUNCTION "
        "alert_big()",
    )
    message = fails(db_url, "downgrade", "0001")
    assert "trigger alert_big_calls on llm_usage_events_2025" in message
    assert current(db_url) == "0002 (head)"


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
@pytest.mark.parametrize("option", ["ssl_ca=/nonexistent/ca.pem", "charset=bogus", "connect_timeout=abc"])
def test_a_driver_option_typo_in_a_mariadb_url_is_one_sentence(db_url, option):
    import os
    import subprocess
    import sys

    url = f"{db_url.render_as_string(False)}?{option}"
    message = fails(url, "current")
    assert "DATABASE_URL" in message or message.startswith("Cannot connect to")
    result = subprocess.run(
        [sys.executable, "-m", "autopack", "verify"],
        env={**os.environ, "DATABASE_URL": url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_check_constraint_with_a_percent_sign_is_evaluated_not_a_traceback(db_url):
    """A split CHECK using modulo or LIKE (``%``) is evaluated on the probe row like any other: the driver's
    placeholder syntax must not take it for a parameter (PostgreSQL raised "incomplete placeholder")."""
    alembic(db_url, "upgrade", "0001")
    check = "CHECK (prompt_tokens % 2 = 0 OR provider LIKE '%a%')"  # % is modulo on every engine
    if db_url.get_backend_name() == "sqlite":  # SQLite takes no ADD CONSTRAINT: the table made with it
        execute(db_url, "DROP TABLE llm_usage_events")
        execute(
            db_url,
            "CREATE TABLE llm_usage_events (id INTEGER PRIMARY KEY, provider VARCHAR NOT NULL, model VARCHAR NOT NULL, "
            "run_id VARCHAR, phase_id VARCHAR, role VARCHAR NOT NULL, prompt_tokens INTEGER NOT NULL, "
            "completion_tokens INTEGER NOT NULL, created_at DATETIME NOT NULL, is_doctor_call BOOLEAN NOT NULL, "
            f"doctor_model VARCHAR, doctor_action VARCHAR, CONSTRAINT ck_even {check})",
        )
    else:
        execute(db_url, f"ALTER TABLE llm_usage_events ADD CONSTRAINT ck_even {check}")
    engine = create_engine(db_url)
    with engine.begin() as connection:
        insert_events(connection, [event_row(1, provider="anthropic", prompt_tokens=3, completion_tokens=4)])
    engine.dispose()
    alembic(db_url, "upgrade", "head")
    assert list(token_rows(db_url).values()) == [(3, 4, 7)]
    assert verify(db_url).returncode == 0
    alembic(db_url, "downgrade", "-1")
    assert list(token_rows(db_url).values()) == [(3, 4)]
