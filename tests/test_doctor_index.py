"""Revision 0003: the is_doctor_call index upstream Autopack's model declares, on every engine and mode.

Built (concurrently on PostgreSQL online), adopted when there, rebuilt when an interrupted concurrent build left
it INVALID, refused when the name is taken by an index on other columns; the downgrade drops it, rows untouched.
(The legacy-state tests adopt it from a later Autopack's create_all(); pytest-alembic walks 0003 both ways.)
"""

import pytest
from sqlalchemy import create_engine, inspect

from support import (
    BACKENDS,
    POSTGRES_BACKENDS,
    alembic,
    current,
    execute,
    fails,
    scalar,
    seed_large,
    token_rows,
)

INDEX = "ix_llm_usage_events_is_doctor_call"
ROWS = 3_000
MODES = {"default": [], "online": ["-x", "online=true"]}


def indexes(url) -> dict[str, list[str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {i["name"]: i["column_names"] for i in inspect(connection).get_indexes("llm_usage_events")}
    finally:
        engine.dispose()


def pg_valid(url) -> bool | None:
    return scalar(url, f"SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('{INDEX}')")


# SQLite has no online mode (refused in one sentence: test_operator_errors)
@pytest.mark.parametrize(
    ("backend", "mode"), [(b, m) for b in BACKENDS for m in MODES if not (b == "sqlite" and m == "online")]
)
def test_the_index_is_built_dropped_and_built_again_with_every_row_kept(db_url, backend, mode):
    seed_large(db_url, rows=ROWS)
    before = token_rows(db_url)
    up = alembic(db_url, *MODES[mode], "upgrade", "head")
    how = {"online": " concurrently" if backend.startswith("postgresql") else " in place, writers going on"}
    assert f"Index: built {INDEX} on llm_usage_events (is_doctor_call){how.get(mode, '')}" in up.stderr
    assert indexes(db_url)[INDEX] == ["is_doctor_call"] and current(db_url) == "0003 (head)"
    if backend.startswith("postgresql"):
        assert pg_valid(db_url) is True
    at_head = token_rows(db_url)
    assert all(at_head[i] == (p, c, p + c) for i, (p, c) in before.items())
    assert "No new upgrade operations detected." in alembic(db_url, "check").stdout

    down = alembic(db_url, "downgrade", "-1")  # -1 at head: only the index
    assert f"Index: dropped {INDEX}" in down.stderr
    assert INDEX not in indexes(db_url) and current(db_url) == "0002"
    assert token_rows(db_url) == at_head
    alembic(db_url, *MODES[mode], "upgrade", "head")
    assert indexes(db_url)[INDEX] == ["is_doctor_call"] and token_rows(db_url) == at_head


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_an_invalid_index_an_interrupted_concurrent_build_left_is_built_again(db_url):
    seed_large(db_url, rows=ROWS)
    alembic(db_url, "upgrade", "0002")
    # a concurrent build that fails leaves its index INVALID under the name: a UNIQUE one over duplicates does
    result = alembic_free_sql(db_url, f"CREATE UNIQUE INDEX CONCURRENTLY {INDEX} ON llm_usage_events (is_doctor_call)")
    assert "could not create unique index" in result
    assert pg_valid(db_url) is False
    up = alembic(db_url, "-x", "online=true", "upgrade", "head")
    assert f"dropping the INVALID {INDEX} an interrupted concurrent build left" in up.stderr
    assert pg_valid(db_url) is True and current(db_url) == "0003 (head)"
    assert scalar(db_url, f"SELECT indisunique FROM pg_index WHERE indexrelid = to_regclass('{INDEX}')") is False


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_the_default_mode_rebuilds_an_invalid_index_in_its_transaction(db_url):
    seed_large(db_url, rows=100)
    alembic(db_url, "upgrade", "0002")
    alembic_free_sql(db_url, f"CREATE UNIQUE INDEX CONCURRENTLY {INDEX} ON llm_usage_events (is_doctor_call)")
    assert pg_valid(db_url) is False
    alembic(db_url, "upgrade", "head")
    assert pg_valid(db_url) is True


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_index_of_that_name_on_other_columns_is_refused_and_nothing_changes(db_url):
    seed_large(db_url, rows=100)
    alembic(db_url, "upgrade", "0002")
    execute(db_url, f"CREATE INDEX {INDEX} ON llm_usage_events (provider)")
    before = token_rows(db_url)
    message = fails(db_url, "upgrade", "head")
    assert message == (
        f"llm_usage_events already has an index named {INDEX} on (provider), not on (is_doctor_call): rename or "
        "drop it, then re-run the same command; nothing was changed."
    )
    assert indexes(db_url)[INDEX] == ["provider"] and current(db_url) == "0002" and token_rows(db_url) == before


def alembic_free_sql(url, sql: str) -> str:
    """Run one statement outside a transaction (CONCURRENTLY needs it); the error text, or '' when it worked."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(sql)
        return ""
    except Exception as error:  # the test reads the server's message
        return str(error)
    finally:
        engine.dispose()
