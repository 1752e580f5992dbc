"""What operators hang on the table — guards, audit triggers, publications, system versioning, timeouts — is
met before any change or named in one sentence, and never leaves a half state."""

import pytest
from sqlalchemy import create_engine, text

from support import (
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    alembic,
    columns_of,
    event_row,
    execute,
    fails,
    insert_events,
    token_rows,
)


def seeded(url, rows=5):
    alembic(url, "upgrade", "0001")
    engine = create_engine(url)
    with engine.begin() as connection:
        insert_events(connection, [event_row(i, prompt_tokens=10 * i + 1, completion_tokens=i) for i in range(rows)])
    engine.dispose()
    return token_rows(url)


def own_trigger_left(url) -> int:
    engine = create_engine(url)
    with engine.connect() as connection:
        count = connection.execute(text("SELECT COUNT(*) FROM pg_trigger WHERE tgname LIKE '%build144%'")).scalar()
    engine.dispose()
    return count


APPEND_ONLY = {
    **{
        b: [
            "CREATE FUNCTION forbid_update() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'usage events are append-only'; END $$",
            "CREATE TRIGGER append_only BEFORE UPDATE ON llm_usage_events FOR EACH ROW "
            "EXECUTE FUNCTION forbid_update()",
        ]
        for b in POSTGRES_BACKENDS
    },
    "sqlite": [
        "CREATE TRIGGER append_only BEFORE UPDATE ON llm_usage_events "
        "BEGIN SELECT RAISE(ABORT, 'usage events are append-only'); END"
    ],
    **{
        b: [
            "CREATE TRIGGER append_only BEFORE UPDATE ON llm_usage_events FOR EACH ROW "
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'usage events are append-only'"
        ]
        for b in MYSQL_BACKENDS
    },
}


def test_a_guard_trigger_that_forbids_updates_is_named_in_one_sentence(db_url, backend):
    before = seeded(db_url)
    execute(db_url, *APPEND_ONLY[backend])
    message = fails(db_url, "upgrade", "head")
    assert "usage events are append-only" in message and "trigger append_only" in message, message
    assert token_rows(db_url, ("prompt_tokens", "completion_tokens")) == before
    if backend in MYSQL_BACKENDS:  # DDL committed on its own: a re-run finishes once the guard is gone
        assert "re-running the same command finishes" in message
    else:
        assert message.endswith("nothing was changed.") and "total_tokens" not in columns_of(db_url)
    assert alembic(db_url, "current").stdout.strip() == "0001"


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_online_mode_keeps_its_fill_trigger_when_the_backfill_fails_and_the_re_run_finishes(db_url):
    seeded(db_url)
    execute(db_url, *APPEND_ONLY[POSTGRES_BACKENDS[0]])
    message = fails(db_url, "-x", "online=true", "upgrade", "head")
    assert "trigger append_only" in message and "the revision stays 0001 and re-running" in message
    assert "the fill trigger stays meanwhile" in message
    assert own_trigger_left(db_url) == 1  # old writers' rows keep getting their totals until the re-run
    assert alembic(db_url, "current").stdout.strip() == "0001"
    execute(db_url, "DROP TRIGGER append_only ON llm_usage_events")
    alembic(db_url, "-x", "online=true", "upgrade", "head")  # resumes
    assert all(t == p + c for p, c, t in token_rows(db_url).values())


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_an_audit_trigger_copying_new_rows_is_named_when_the_new_column_breaks_it(db_url):
    seeded(db_url)
    execute(
        db_url,
        "CREATE TABLE audit (LIKE llm_usage_events)",
        "CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO audit SELECT NEW.*; RETURN NEW; END $$",
        "CREATE TRIGGER audit_changes AFTER UPDATE ON llm_usage_events FOR EACH ROW EXECUTE FUNCTION audit_row()",
    )
    message = fails(db_url, "upgrade", "head")
    assert "trigger audit_changes" in message and message.endswith("nothing was changed.")
    assert "total_tokens" not in columns_of(db_url)


@pytest.mark.parametrize("backend", ["sqlite", *POSTGRES_BACKENDS])
def test_a_working_audit_trigger_is_reported_with_its_firings(db_url, backend):
    before = seeded(db_url, rows=4)
    if backend == "sqlite":
        execute(
            db_url,
            "CREATE TABLE audit (event_id INTEGER)",
            "CREATE TRIGGER audit_changes AFTER UPDATE ON llm_usage_events "
            "BEGIN INSERT INTO audit VALUES (NEW.id); END",
        )
    else:
        execute(
            db_url,
            "CREATE TABLE audit (event_id INTEGER)",
            "CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO audit VALUES (NEW.id); RETURN NEW; END $$",
            "CREATE TRIGGER audit_changes AFTER UPDATE ON llm_usage_events FOR EACH ROW EXECUTE FUNCTION audit_row()",
        )
    up = alembic(db_url, "upgrade", "head")
    assert f"fired trigger audit_changes {len(before)} times each ({len(before)} firings)" in up.stderr
    engine = create_engine(db_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM audit")).scalar() == len(before)
    engine.dispose()


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
@pytest.mark.parametrize(
    "setup, why",
    [
        (
            [
                "ALTER TABLE llm_usage_events REPLICA IDENTITY NOTHING",
                "CREATE PUBLICATION usage_feed FOR TABLE llm_usage_events",
            ],
            "REPLICA IDENTITY NOTHING",
        ),
        (["CREATE PUBLICATION usage_feed FOR TABLE llm_usage_events WHERE (provider <> 'internal')"], "a row filter"),
    ],
)
def test_a_publication_that_cannot_carry_updates_is_refused_before_any_change(db_url, setup, why):
    seeded(db_url)
    execute(db_url, *setup)
    try:
        message = fails(db_url, "upgrade", "head")
        assert message.startswith("llm_usage_events is in publication usage_feed, which publishes UPDATEs")
        assert why in message and message.endswith("nothing was changed.")
        assert "total_tokens" not in columns_of(db_url)
    finally:
        execute(db_url, "DROP PUBLICATION usage_feed")


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_statement_timeout_on_the_database_is_named(db_url):
    seeded(db_url, rows=3)
    execute(
        db_url,
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$",
        "CREATE TRIGGER slow_update BEFORE UPDATE ON llm_usage_events FOR EACH ROW EXECUTE FUNCTION slow()",
        f"ALTER DATABASE {db_url.database} SET statement_timeout = '300ms'",
    )
    message = fails(db_url, "upgrade", "head")
    assert "statement_timeout" in message and "-x batch_rows" in message and message.endswith("nothing was changed.")


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_a_system_versioned_mariadb_table_migrates_and_keeps_its_history(db_url):
    before = seeded(db_url, rows=3)
    execute(db_url, "ALTER TABLE llm_usage_events ADD SYSTEM VERSIONING")
    up = alembic(db_url, "upgrade", "head")
    assert "is system-versioned" in up.stderr
    assert token_rows(db_url) == {i: (p, c, p + c) for i, (p, c) in before.items()}
    engine = create_engine(db_url)
    with engine.connect() as connection:
        history = connection.execute(text("SELECT COUNT(*) FROM llm_usage_events FOR SYSTEM_TIME ALL")).scalar()
    engine.dispose()
    assert history >= 2 * len(before)  # each filled row kept its old version
