"""Defaults an operator sets on a role or database, a version table shared with another Alembic tree, keys and
encodings: each works as on a plain database or ends in one true sentence before any change."""

import os
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from sqlalchemy.engine import URL

from legacy import ROWS, build, expected_total
from support import (
    POSTGRES_BACKENDS,
    ROOT,
    alembic,
    columns_of,
    current,
    execute,
    fails,
    scalar,
    seed_large,
    token_rows,
    verify,
)


def set_default(url: URL, setting: str, value: str) -> None:
    """``ALTER DATABASE … SET``: every later session of the database starts with it, as a role default would."""
    value = value if setting == "search_path" else f"'{value}'"  # a list of names, each its own
    execute(url, f"ALTER DATABASE {url.database} SET {setting} = {value}")


def libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
@pytest.mark.parametrize("isolation", ["serializable", "repeatable read"])
def test_an_online_upgrade_finishes_in_one_run_while_the_application_writes_under_a_stricter_isolation(
    db_url, isolation
):
    """A 'serializable' default made the first concurrent write kill the backfill (40001), one batch per run."""
    seed_large(db_url, rows=60_000)
    set_default(db_url, "default_transaction_isolation", isolation)
    stop = threading.Event()
    written = []

    def application() -> None:  # an old writer updating splits of rows all over the table, in its own transactions
        with psycopg.connect(libpq(db_url), autocommit=True) as connection:
            i = 0
            while not stop.is_set():
                i += 1
                update = "UPDATE llm_usage_events SET prompt_tokens = prompt_tokens + 1 WHERE id = %s"
                try:  # under the stricter isolation the application itself retries, as such applications must
                    connection.execute(update, ((i * 7919) % 60_000 + 1,))
                except psycopg.errors.SerializationFailure:
                    continue
                written.append(i)

    writer = threading.Thread(target=application)
    writer.start()
    try:
        result = alembic(db_url, "-x", "online=true", "-x", "batch_rows=2000", "upgrade", "head", check=False)
    finally:
        stop.set()
        writer.join()
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert written and current(db_url) == "0002 (head)"
    rows = token_rows(db_url)
    assert all(t == p + c for p, c, t in rows.values())  # the fill trigger kept the writer's updates right


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("TimeZone", "Asia/Kolkata"),
        ("lock_timeout", "1ms"),
        ("idle_in_transaction_session_timeout", "50ms"),
        ("search_path", "usage_reports, public"),  # the table made in usage_reports, the first schema
    ],
)
def test_a_round_trip_works_under_a_database_default(db_url, setting, value):
    execute(db_url, "CREATE SCHEMA usage_reports")
    if setting == "search_path":
        set_default(db_url, setting, value)
    seed_large(db_url, rows=3_000)
    execute(db_url, "UPDATE llm_usage_events SET created_at = created_at + (id || ' minutes')::interval")
    set_default(db_url, setting, value)
    before = token_rows(db_url, ("prompt_tokens", "completion_tokens", "created_at"))
    alembic(db_url, "upgrade", "head")
    execute(
        db_url,
        "UPDATE llm_usage_events SET prompt_tokens = NULL, completion_tokens = NULL, total_tokens = 999 "
        "WHERE id % 10 = 0",
    )
    at_head = token_rows(db_url, ("prompt_tokens", "completion_tokens", "total_tokens", "created_at"))
    alembic(db_url, "downgrade", "-1")
    assert current(db_url) == "0001" and "total_tokens" not in columns_of(db_url)
    alembic(db_url, "upgrade", "head")
    assert token_rows(db_url, ("prompt_tokens", "completion_tokens", "total_tokens", "created_at")) == at_head
    tables = "SELECT count(*) FROM information_schema.tables WHERE table_name = 'llm_usage_events'"
    assert scalar(db_url, tables) == 1  # one table: never a second, empty one in another schema
    assert len(before) == len(at_head) and verify(db_url).returncode == 0


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_search_path_whose_first_schema_lacks_the_table_is_refused_never_a_second_table(db_url):
    """The table in public, the role's search_path starting with an empty schema: SQLAlchemy looks, and would create,
    in that first schema, while PostgreSQL resolves the name to public's table for the application."""
    seed_large(db_url, rows=100)
    execute(db_url, "CREATE SCHEMA usage_reports")
    set_default(db_url, "search_path", "usage_reports, public")
    for command in (["upgrade", "head"], ["downgrade", "-1"]):
        message = fails(db_url, *command)
        assert message.startswith("llm_usage_events is in schema public, but this connection's first schema"), message
        assert "usage_reports" in message and message.endswith("nothing was changed.")
    tables = "SELECT count(*) FROM information_schema.tables WHERE table_name = 'llm_usage_events'"
    total = "SELECT count(*) FROM information_schema.columns WHERE column_name = 'total_tokens'"
    assert scalar(db_url, tables) == 1 and scalar(db_url, total) == 0


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_statement_timeout_default_ends_in_one_sentence_and_changes_nothing(db_url):
    seed_large(db_url, rows=200_000)
    set_default(db_url, "statement_timeout", "100ms")
    result = alembic(db_url, "upgrade", "head", check=False)
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED: ")]
    assert result.returncode != 0 and len(failed) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "statement_timeout" in failed[0] and failed[0].endswith("nothing was changed."), failed[0]
    assert current(db_url) in ("", "0001") and "total_tokens" not in columns_of(db_url)
    alembic(db_url, "-x", "statement_timeout=0", "upgrade", "head")  # the option the sentence names
    assert current(db_url) == "0002 (head)"


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
@pytest.mark.parametrize(
    ("setting", "value", "starts"),
    [
        ("default_transaction_read_only", "on", "postgresql+psycopg://"),
        ("session_replication_role", "replica", "session_replication_role is 'replica' on "),
    ],
)
def test_a_default_the_migration_cannot_run_under_is_refused_before_any_change(db_url, setting, value, starts):
    seed_large(db_url, rows=100)
    set_default(db_url, setting, value)
    message = fails(db_url, "upgrade", "head")
    assert message.startswith(starts) and message.endswith("nothing was changed."), message
    with psycopg.connect(libpq(db_url), autocommit=True) as admin:
        admin.execute("SET default_transaction_read_only = off")
        admin.execute(f"ALTER DATABASE {db_url.database} RESET {setting}")
    assert current(db_url) == "0001" and "total_tokens" not in columns_of(db_url)


UPSTREAM = "001_initial_schema"  # upstream Autopack's own Alembic tree's first revision


@pytest.mark.parametrize("backend", ["sqlite", *POSTGRES_BACKENDS])
def test_the_tree_lives_beside_another_alembic_tree_with_a_version_table_of_its_own(db_url):
    build(db_url, "pre_build144")  # made by create_all(); upstream's own Alembic tree then stamped its revision
    execute(db_url, "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    execute(db_url, f"INSERT INTO alembic_version VALUES ('{UPSTREAM}')")
    message = fails(db_url, "upgrade", "head")
    assert f"The database is at revision '{UPSTREAM}'" in message and "AUTOPACK_VERSION_TABLE" in message, message
    checked = verify(db_url)
    fix = "export AUTOPACK_VERSION_TABLE=build144_alembic_version, then run 'alembic upgrade head'"
    assert fix in checked.stdout, checked.stdout

    own = {"AUTOPACK_VERSION_TABLE": "build144_alembic_version"}  # the fix, as printed
    alembic(db_url, "upgrade", "head", **own)
    assert alembic(db_url, "current", **own).stdout.strip() == "0002 (head)"
    assert scalar(db_url, "SELECT version_num FROM alembic_version") == UPSTREAM  # the other tree's, untouched
    assert scalar(db_url, "SELECT version_num FROM build144_alembic_version") == "0002"
    assert [r[2] for r in token_rows(db_url).values()] == [expected_total(*r) for r in ROWS["pre_build144"]]
    checked = verify_with(db_url, own)
    assert checked.returncode == 0 and "revision is 0002 or later" in checked.stdout, checked.stdout
    alembic(db_url, "downgrade", "-1", **own)
    assert alembic(db_url, "current", **own).stdout.strip() == "0001"
    assert scalar(db_url, "SELECT version_num FROM alembic_version") == UPSTREAM


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_version_table_name_that_is_not_a_name_is_one_sentence(db_url):
    alembic(db_url, "upgrade", "head")
    result = alembic(db_url, "current", check=False, AUTOPACK_VERSION_TABLE="x; DROP TABLE y")
    assert result.returncode != 0 and result.stdout.startswith("FAILED: AUTOPACK_VERSION_TABLE='x; DROP TABLE y'")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
@pytest.mark.parametrize("key", ["uuid DEFAULT gen_random_uuid()", "text"])
def test_a_table_whose_id_is_not_an_integer_is_refused_before_any_change(db_url, key):
    execute(
        db_url,
        f"CREATE TABLE llm_usage_events (id {key} PRIMARY KEY, provider VARCHAR NOT NULL, model VARCHAR NOT NULL, "
        "run_id VARCHAR, phase_id VARCHAR, role VARCHAR NOT NULL, prompt_tokens INTEGER NOT NULL, "
        "completion_tokens INTEGER NOT NULL, created_at TIMESTAMP NOT NULL, is_doctor_call BOOLEAN NOT NULL, "
        "doctor_model VARCHAR, doctor_action VARCHAR)",
    )
    if key == "text":
        execute(db_url, "ALTER TABLE llm_usage_events ALTER COLUMN id SET DEFAULT md5(random()::text)")
    execute(
        db_url,
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at, "
        "is_doctor_call) VALUES ('p', 'm', 'r', 3, 4, now(), false)",
    )
    message = fails(db_url, "upgrade", "head")
    assert message.startswith("llm_usage_events.id is ") and "not an integer" in message, message
    assert message.endswith("nothing was changed.") and "total_tokens" not in columns_of(db_url)


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_sql_ascii_database_is_named_and_the_named_fix_works(db_url):
    name = f"{db_url.database}_ascii"
    with psycopg.connect(libpq(db_url), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    ascii_url = db_url.set(database=name)
    try:
        message = fails(ascii_url, "upgrade", "head")
        assert "has the SQL_ASCII encoding" in message and "client_encoding=utf8" in message, message
        assert "check DATABASE_URL and that the server is up" not in message
        fixed = ascii_url.update_query_dict({"client_encoding": "utf8"})
        alembic(fixed, "upgrade", "head")
        assert alembic(fixed, "current").stdout.strip() == "0002 (head)"
    finally:
        time.sleep(0.2)
        with psycopg.connect(libpq(db_url), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def verify_with(url: URL, env: dict[str, str]) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DATABASE_URL": url.render_as_string(False), **env}
    return subprocess.run(
        [sys.executable, "-m", "autopack", "verify"], env=environment, cwd=ROOT, capture_output=True, text=True
    )


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_search_path_naming_no_existing_schema_is_one_sentence(db_url):
    execute(db_url, f"ALTER DATABASE {db_url.database} SET search_path = no_such_schema")
    message = fails(db_url, "upgrade", "head")
    assert message.startswith("No schema of this connection's search_path"), message
    assert message.endswith("nothing was changed.")


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_verify_names_its_own_cure_for_a_statement_timeout_and_a_missing_search_path(db_url):
    seed_large(db_url, rows=200_000)
    alembic(db_url, "upgrade", "head")
    set_default(db_url, "statement_timeout", "1ms")
    checked = verify(db_url)
    assert checked.returncode == 3 and "statement_timeout cancelled" in checked.stderr, checked.stderr
    assert "-x" not in checked.stderr and "raise the role's or the database's setting" in checked.stderr
    with psycopg.connect(libpq(db_url), autocommit=True) as admin:  # its own statements under 1ms no longer
        admin.execute("SET statement_timeout = 0")
        admin.execute(f"ALTER DATABASE {db_url.database} RESET statement_timeout")
    execute(db_url, f"ALTER DATABASE {db_url.database} SET search_path = no_such_schema")
    checked = verify(db_url)
    assert checked.returncode == 3 and "No schema of this connection's search_path" in checked.stderr, checked.stderr
