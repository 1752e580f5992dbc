"""A failed or refused upgrade leaves a database whose every downgrade is lossless, and says so in one sentence."""

import time

import pytest
from sqlalchemy import create_engine, text

from legacy import build
from support import (
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    alembic,
    columns_of,
    current,
    event_row,
    fails,
    insert_events,
    table_names,
    token_rows,
)


def huge_split(backend: str) -> int:
    """A split whose sum with 1 does not fit total_tokens: INTEGER is 64-bit on SQLite, 32-bit elsewhere."""
    return 2**63 - 1 if backend == "sqlite" else 2**31 - 1


def test_an_overflowing_total_is_refused_before_any_change_and_rollback_keeps_the_rows(db_url, backend):
    build(db_url, "pre_build144")  # create_all() at the old model, as operators made theirs
    engine = create_engine(db_url)
    with engine.begin() as connection:
        insert_events(connection, [event_row(900, id=900, prompt_tokens=huge_split(backend), completion_tokens=1)])
    engine.dispose()
    before = token_rows(db_url)

    message = fails(db_url, "upgrade", "head")
    assert "exceed what total_tokens INTEGER can hold" in message and "ids 900" in message
    assert message.endswith("nothing was changed.")
    assert "total_tokens" not in columns_of(db_url)
    assert token_rows(db_url) == before
    # wherever the failure left the revision, rolling back never deletes the rows
    if current(db_url).startswith("0001"):
        refused = fails(db_url, "downgrade", "-1")
        assert refused.startswith("llm_usage_events holds") and "refuses" in refused
    assert token_rows(db_url) == before


def test_the_baseline_downgrade_refuses_to_drop_rows_but_drops_an_empty_table(db_url):
    alembic(db_url, "upgrade", "0001")
    engine = create_engine(db_url)
    with engine.begin() as connection:
        insert_events(connection, [event_row(1, prompt_tokens=10, completion_tokens=5)])
    message = fails(db_url, "downgrade", "-1")
    assert message.startswith("llm_usage_events holds 1 rows and the baseline's downgrade would delete them all")
    assert current(db_url).startswith("0001")
    assert token_rows(db_url) == {1: (10, 5)}

    with engine.begin() as connection:
        connection.execute(text("DELETE FROM llm_usage_events"))
    engine.dispose()
    alembic(db_url, "downgrade", "-1")
    assert "llm_usage_events" not in table_names(db_url)


def test_sparse_and_negative_ids_backfill_in_work_proportional_to_rows(db_url, backend):
    top = 2**62 if backend == "sqlite" else 2**31 - 1
    alembic(db_url, "upgrade", "0001")
    engine = create_engine(db_url)
    with engine.begin() as connection:
        insert_events(
            connection,
            [
                event_row(1, id=-5, prompt_tokens=3, completion_tokens=4),
                event_row(2, id=1, prompt_tokens=10, completion_tokens=0),
                event_row(3, id=top, prompt_tokens=100, completion_tokens=23),
            ],
        )
    engine.dispose()
    started = time.monotonic()
    # batch_rows=1 walked the id span in steps of 1 before: 2^62 steps, holding the write lock forever
    alembic(db_url, "-x", "batch_rows=1", "upgrade", "head", timeout=120)
    assert time.monotonic() - started < 120
    assert token_rows(db_url) == {-5: (3, 4, 7), 1: (10, 0, 10), top: (100, 23, 123)}


@pytest.mark.parametrize(
    "option, expected",
    [
        ("batch_rows=0", "-x batch_rows=0 is not valid: expected a whole number of rows from 1"),
        ("batch_rows=99999999999999999999999", "-x batch_rows=99999999999999999999999 is not valid"),
        ("batch_rows=-3", "-x batch_rows=-3 is not valid"),
        ("busy_timeout=abc", "-x busy_timeout=abc is not valid: expected seconds > 0"),
        ("lock_timeout=soon", "-x lock_timeout=soon is not valid"),
        ("lock_timeout=100us", "-x lock_timeout=100us is not valid: expected a duration from 1ms"),  # PostgreSQL: 0
        ("online_lock_timeout=0.4ms", "-x online_lock_timeout=0.4ms is not valid: expected a duration from 1ms"),
        ("statement_timeout=3000000000s", "-x statement_timeout=3000000000s is not valid"),  # past 2^31-1 ms
        ("statement_timeout=-1s", "-x statement_timeout=-1s is not valid"),
        ("online=ture", "-x online=ture is not valid: expected true or false"),
        ("onlne=true", "Unknown option -x onlne: this tree accepts -x busy_timeout, -x lock_timeout, -x online"),
        ("progress_every=-1", "-x progress_every=-1 is not valid"),
    ],
)
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_bad_option_is_refused_before_anything_runs(db_url, option, expected):
    alembic(db_url, "upgrade", "0001")
    message = fails(db_url, "-x", option, "upgrade", "head")
    assert message.startswith(expected) and message.endswith("nothing was changed.")
    assert current(db_url).startswith("0001")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_online_mode_on_an_engine_without_it_is_refused(db_url, backend):
    alembic(db_url, "upgrade", "0001")
    message = fails(db_url, "-x", "online=true", "upgrade", "head")
    assert message.startswith("-x online=true is the PostgreSQL and MariaDB online mode and does not apply to sqlite")
    assert current(db_url).startswith("0001")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_driver_that_is_not_installed_is_one_sentence(db_url):
    message = fails("postgresql+psycopg2://app:secret@127.0.0.1:5432/x", "upgrade", "head")
    assert "psycopg2 is not installed" in message and "secret" not in message


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_mariadb_wrong_password_and_unknown_database_are_one_sentence(db_url):
    wrong = db_url.set(password="not-the-password-123")
    message = fails(wrong, "current")
    assert message.startswith("Cannot connect to") and "Access denied" in message
    assert "not-the-password-123" not in message
    message = fails(db_url.set(database="no_such_database_here"), "upgrade", "head")
    assert message.startswith("Cannot connect to") and "Unknown database" in message


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_the_url_search_path_is_the_schema_migrated(db_url):
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE SCHEMA autopack"))
    engine.dispose()
    in_schema = db_url.update_query_dict({"options": "-csearch_path=autopack"})
    build(in_schema, "create_all_build144")
    before = token_rows(in_schema)

    up = alembic(in_schema, "upgrade", "head")
    assert "Adopting existing llm_usage_events" in up.stderr
    assert "llm_usage_events" not in table_names(db_url)  # nothing made in public
    assert token_rows(in_schema).keys() == before.keys()
    assert columns_of(in_schema)["total_tokens"]["default"] is not None  # the DEFAULT 0 went where the rows are


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_new_table_says_which_schema_it_is_created_in(db_url):
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE SCHEMA reporting"))
    engine.dispose()
    up = alembic(db_url.update_query_dict({"options": "-csearch_path=reporting"}), "upgrade", "head")
    assert "No llm_usage_events found: creating it in schema reporting" in up.stderr


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_mariadb_keeps_a_bigint_split_its_default_and_comment_and_runs_strict(db_url):
    from autopack.migrations.runtime.connection import migration_engine

    build(db_url, "pre_build144")
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(
            text("ALTER TABLE llm_usage_events MODIFY prompt_tokens BIGINT NOT NULL DEFAULT 7 COMMENT 'input side'")
        )
        insert_events(connection, [event_row(1, id=1000, prompt_tokens=2_000_000_000, completion_tokens=5)])
    engine.dispose()
    alembic(db_url, "upgrade", "head")
    column = columns_of(db_url)["prompt_tokens"]
    assert type(column["type"]).__name__ == "BIGINT" and column["nullable"]
    assert column["default"] == "7" and column["comment"] == "input side"
    assert token_rows(db_url)[1000] == (2_000_000_000, 5, 2_000_000_005)

    engine = migration_engine(db_url, busy_timeout_s=1, lock_timeout="3s")
    with engine.connect() as connection:
        mode, wait, row_wait = connection.execute(
            text("SELECT @@SESSION.sql_mode, @@SESSION.lock_wait_timeout, @@SESSION.innodb_lock_wait_timeout")
        ).one()
    engine.dispose()
    assert "STRICT_ALL_TABLES" in mode and int(wait) == 3 and int(row_wait) == 3


def test_a_check_that_still_forbids_null_splits_is_refused_naming_it(db_url):
    build(db_url, "pre_build144")
    engine = create_engine(db_url)
    if engine.dialect.name == "sqlite":  # SQLite cannot add a constraint to a table: make the table with it
        with engine.begin() as connection:
            sql = connection.execute(text("SELECT sql FROM sqlite_master WHERE name = 'llm_usage_events'")).scalar()
            connection.execute(text("PRAGMA writable_schema = ON"))
            connection.execute(
                text("UPDATE sqlite_master SET sql = :sql WHERE name = 'llm_usage_events'"),
                {"sql": sql.rstrip().removesuffix(")") + ", CONSTRAINT splits_set CHECK (prompt_tokens IS NOT NULL))"},
            )
        engine.dispose()
        engine = create_engine(db_url)
    else:
        with engine.begin() as connection:
            connection.execute(
                text("ALTER TABLE llm_usage_events ADD CONSTRAINT splits_set CHECK (prompt_tokens IS NOT NULL)")
            )
    with engine.begin() as connection:
        insert_events(connection, [event_row(1, id=1000, prompt_tokens=4, completion_tokens=5)])
    engine.dispose()
    message = fails(db_url, "upgrade", "head")
    assert message.startswith("llm_usage_events has CHECK constraint splits_set (")
    assert "forbids total-only rows" in message and message.endswith("nothing was changed.")
    assert "total_tokens" not in columns_of(db_url)
