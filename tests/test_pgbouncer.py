"""Through a real PgBouncer: the connection is not the migration's own.

In transaction pooling each transaction may run on another server connection, so nothing may rely on session state:
settings are set inside each transaction, the default mode's migration lock is a transaction lock, no statement is
prepared, and the commands that span many transactions (online mode, finish-online) refuse before any change. In
session pooling everything works as on a direct connection. After every run, no advisory lock, setting or prepared
statement is left on the pooler's server connections.
"""

import os
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from conftest import IN_CI
from pgbouncer import libpq, pgbouncer, unavailable

from support import (
    PG_SERVERS,
    POSTGRES_BACKENDS,
    ROOT,
    alembic,
    columns_of,
    current,
    execute,
    fails,
    forced_row_security,
    scalar,
    seed_large,
    token_rows,
    verify,
)

IGNORING = "extra_float_digits,options"  # the setting made so that clients like ours connect
# PgBouncer runs as the postgres OS user and reaches the server over TCP: a server named by URL (CI's on 5432), not
# pgserver's private socket
PG_TCP = [b for b, spec in zip(POSTGRES_BACKENDS, PG_SERVERS, strict=True) if spec != "pgserver"]
PG_TCP = PG_TCP or ["no-tcp-server"]


@pytest.fixture(autouse=True)
def _pgbouncer_available(backend):
    reason = unavailable() or (backend == "no-tcp-server" and "no PostgreSQL server by URL in AUTOPACK_TEST_POSTGRES")
    if reason:
        pytest.fail(f"required in CI: {reason}", pytrace=False) if IN_CI else pytest.skip(reason)


def server_state(url) -> dict:
    """What a later client of the pooler's (single) server connection would inherit, read through the pooler."""
    with psycopg.connect(libpq(url), prepare_threshold=None, autocommit=True) as connection:
        row = connection.execute(
            "SELECT current_setting('lock_timeout'), current_setting('row_security'), "
            "current_setting('statement_timeout'), (SELECT count(*) FROM pg_prepared_statements), "
            "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()))"
        ).fetchone()
    return dict(zip(("lock_timeout", "row_security", "statement_timeout", "prepared", "advisory"), row, strict=True))


CLEAN = {"lock_timeout": "0", "row_security": "on", "statement_timeout": "0", "prepared": 0, "advisory": 0}


@pytest.mark.parametrize("backend", PG_TCP)
@pytest.mark.parametrize("ignore", [None, IGNORING])
def test_a_round_trip_through_a_transaction_pooler_works_and_leaves_nothing_behind(db_url, ignore):
    seed_large(db_url, rows=2_000)
    before = token_rows(db_url, ("prompt_tokens", "completion_tokens"))
    with pgbouncer(db_url, "transaction", ignore=ignore, pool_size=1) as pooled:
        up = alembic(pooled, "upgrade", "head")
        assert "Running upgrade 0001 -> 0002" in up.stderr and current(pooled) == "0002 (head)"
        assert server_state(pooled) == CLEAN
        assert verify(pooled).returncode == 0
        alembic(pooled, "downgrade", "-1")  # many statements, run again and again: never prepared
        assert current(pooled) == "0001" and "total_tokens" not in columns_of(db_url)
        assert token_rows(db_url, ("prompt_tokens", "completion_tokens")) == before
        alembic(pooled, "upgrade", "head")
        assert server_state(pooled) == CLEAN
    assert all(row == (p, c, p + c) for row, (p, c) in zip(token_rows(db_url).values(), before.values(), strict=True))
    assert server_state(db_url)["advisory"] == 0


@pytest.mark.parametrize("backend", PG_TCP)
def test_lock_timeout_applies_through_a_transaction_pooler(db_url):
    """A 30 s report holds the table: the upgrade gives up after lock_timeout, it never queues the table behind it."""
    seed_large(db_url, rows=100)
    with pgbouncer(db_url, "transaction", ignore=IGNORING, pool_size=2) as pooled:
        with psycopg.connect(libpq(db_url)) as report:
            report.execute("SELECT count(*) FROM llm_usage_events").fetchone()  # ACCESS SHARE until rollback
            started = time.monotonic()
            message = fails(pooled, "-x", "lock_timeout=2s", "upgrade", "head")
            waited = time.monotonic() - started
            report.rollback()
        assert message.startswith("Could not lock llm_usage_events on"), message
        assert waited < 15, f"waited {waited:.0f}s: lock_timeout did not apply"
        assert current(pooled) == "0001" and "total_tokens" not in columns_of(db_url)
        assert server_state(pooled)["advisory"] == 0


@pytest.mark.parametrize("backend", PG_TCP)
def test_row_security_is_refused_through_a_transaction_pooler_as_on_a_direct_connection(db_url):
    """row_security = off travels inside the transaction: rows a policy hides are never silently left behind."""
    owner = f"rls_{db_url.database}"[:60]
    seed_large(db_url, rows=10)
    alembic(db_url, "upgrade", "head")
    execute(db_url, "UPDATE llm_usage_events SET prompt_tokens = NULL, total_tokens = 1700 WHERE id <= 2")
    execute(db_url, *forced_row_security(owner, "provider <> 'p1'"))
    at_head = token_rows(db_url)
    try:
        with pgbouncer(db_url, "transaction", ignore=IGNORING, pool_size=1, users=(owner,)) as pooled:
            message = fails(pooled.set(username=owner), "downgrade", "-1")
            assert "has row-level security that would hide rows" in message and message.endswith("nothing was changed.")
            assert current(pooled) == "0002 (head)" and token_rows(db_url) == at_head
            assert server_state(pooled) == CLEAN
    finally:
        execute(db_url, "DROP TABLE llm_usage_events CASCADE", f"DROP OWNED BY {owner}", f"DROP ROLE {owner}")


@pytest.mark.parametrize("backend", PG_TCP)
def test_a_failed_run_through_a_transaction_pooler_leaves_no_lock_for_the_next_migrator(db_url):
    seed_large(db_url, rows=100)
    execute(db_url, "ALTER TABLE llm_usage_events ADD CONSTRAINT ck_prompt CHECK (prompt_tokens IS NOT NULL)")
    with pgbouncer(db_url, "transaction", ignore=IGNORING, pool_size=1) as pooled:
        assert "CHECK constraint ck_prompt" in fails(pooled, "upgrade", "head")
        assert server_state(pooled) == CLEAN
    execute(db_url, "ALTER TABLE llm_usage_events DROP CONSTRAINT ck_prompt")
    started = time.monotonic()
    alembic(db_url, "-x", "migration_lock_wait=5s", "upgrade", "head")  # direct: no lock to wait for
    assert time.monotonic() - started < 30 and current(db_url) == "0002 (head)"


@pytest.mark.parametrize("backend", PG_TCP)
@pytest.mark.parametrize("ignore", [None, IGNORING])
def test_the_online_mode_and_finish_online_refuse_a_transaction_pooler_before_any_change(db_url, ignore):
    seed_large(db_url, rows=100)
    with pgbouncer(db_url, "transaction", ignore=ignore, pool_size=2) as pooled:
        message = fails(pooled, "-x", "online=true", "upgrade", "head")
        assert "through a transaction-pooling connection pooler (PgBouncer pool_mode = transaction" in message
        assert "-x online=true" in message and message.endswith("nothing was changed."), message
        assert current(pooled) == "0001" and "total_tokens" not in columns_of(db_url)
        alembic(pooled, "upgrade", "head")  # the default mode works there
        finished = finish_online(pooled)
        assert finished.returncode == 3 and "transaction-pooling connection pooler" in finished.stderr, finished
        assert server_state(pooled) == CLEAN


@pytest.mark.parametrize("backend", PG_TCP)
def test_the_online_mode_works_through_a_session_pooler_and_leaves_its_settings_on_no_server(db_url):
    seed_large(db_url, rows=3_000)
    before = token_rows(db_url, ("prompt_tokens", "completion_tokens"))
    with pgbouncer(db_url, "session", ignore=IGNORING, pool_size=2) as pooled:
        alembic(pooled, "-x", "online=true", "-x", "batch_rows=500", "upgrade", "head")
        assert finish_online(pooled).returncode == 0
        assert server_state(pooled) == CLEAN  # PgBouncer's DISCARD ALL, and the run's own reset
        alembic(pooled, "-x", "online=true", "downgrade", "-1")
        alembic(pooled, "upgrade", "head")
    after = token_rows(db_url)
    assert all(after[i] == (p, c, p + c) for i, (p, c) in before.items())


@pytest.mark.parametrize("backend", PG_TCP)
def test_init_db_and_the_applications_writes_work_through_a_transaction_pooler(db_url):
    """The application's DATABASE_URL usually points at PgBouncer: init_db() at start-up, then its writes."""
    seed_large(db_url, rows=50)
    with pgbouncer(db_url, "transaction", ignore=IGNORING, pool_size=2) as pooled:
        env = {**os.environ, "DATABASE_URL": pooled.render_as_string(False)}
        code = (
            "from autopack.database import init_db, SessionLocal\n"
            "from autopack.usage_recorder import UsageEventData, record_usage\n"
            "init_db()\n"
            "for i in range(12):\n"
            "    with SessionLocal() as s: record_usage(s, UsageEventData('openai', 'gpt-4o', None, None, 'builder', "
            "15, 10, 5))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert current(pooled) == "0002 (head)"
        assert scalar(db_url, "SELECT count(*) FROM llm_usage_events WHERE provider = 'openai'") == 12


@pytest.mark.parametrize("backend", PG_TCP)
def test_a_pooler_rejecting_the_urls_options_is_named(db_url):
    seed_large(db_url, rows=10)
    with pgbouncer(db_url, "transaction", pool_size=1) as pooled:  # PgBouncer's default: no ignore list
        with_options = pooled.update_query_dict({"options": "-c search_path=public"})
        message = fails(with_options, "current")
        assert "refused the startup parameter 'options'" in message and "ignore_startup_parameters" in message
        assert "check DATABASE_URL and that the server is up" not in message, message


@pytest.mark.parametrize("backend", PG_TCP)
def test_concurrent_migrators_through_a_transaction_pooler_migrate_once(db_url):
    seed_large(db_url, rows=5_000)
    with pgbouncer(db_url, "transaction", ignore=IGNORING, pool_size=4) as pooled:
        results: list[subprocess.CompletedProcess] = []

        def run() -> None:
            results.append(alembic(pooled, "upgrade", "head", check=False))

        threads = [threading.Thread(target=run) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r.returncode for r in results] == [0, 0, 0], [r.stdout + r.stderr for r in results]
        assert sum("Running upgrade 0001 -> 0002" in r.stderr for r in results) == 1
        assert server_state(pooled)["advisory"] == 0


def finish_online(url) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url.render_as_string(False)}
    return subprocess.run(
        [sys.executable, "-m", "autopack", "finish-online"], env=env, cwd=ROOT, capture_output=True, text=True
    )


@pytest.mark.parametrize("backend", PG_TCP)
def test_a_round_robin_transaction_pooler_is_recognised_too(db_url):
    seed_large(db_url, rows=100)
    with pgbouncer(db_url, "transaction", ignore=IGNORING, pool_size=4, extra=("server_round_robin = 1",)) as pooled:
        for _ in range(4):  # warm up several server connections, so that the pooler has some to hand out in turn
            threads = [threading.Thread(target=lambda: alembic(pooled, "current")) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        message = fails(pooled, "-x", "online=true", "upgrade", "head")
        assert "through a transaction-pooling connection pooler" in message, message
        assert current(pooled) == "0001" and server_state(pooled) == CLEAN


@pytest.mark.parametrize("backend", PG_TCP)
def test_a_session_pooler_without_a_reset_query_keeps_nothing_of_an_online_run(db_url):
    seed_large(db_url, rows=1_000)
    with pgbouncer(db_url, "session", ignore=IGNORING, pool_size=2, extra=("server_reset_query =",)) as pooled:
        alembic(pooled, "-x", "online=true", "upgrade", "head")
        assert server_state(pooled) == CLEAN
        assert finish_online(pooled).returncode == 0
        assert server_state(pooled) == CLEAN


@pytest.mark.parametrize("backend", PG_TCP)
def test_url_options_a_pooler_drops_unread_are_refused_never_a_second_table(db_url):
    """The table in schema s1, the URL's search_path naming it: PgBouncer ignoring 'options' drops it silently, and
    the migration would have created an empty table in public."""
    execute(db_url, "CREATE SCHEMA s1")
    in_s1 = db_url.update_query_dict({"options": "-csearch_path=s1"})
    seed_large(in_s1, rows=100)
    with pgbouncer(db_url, "transaction", ignore=IGNORING, pool_size=2) as pooled:
        through = pooled.update_query_dict({"options": "-csearch_path=s1"})
        for command in (["upgrade", "head"], ["current"]):
            message = fails(through, *command)
            assert message.startswith("DATABASE_URL's options set search_path=s1, but the session has"), message
        tables = (
            "SELECT string_agg(table_schema, ',') FROM information_schema.tables WHERE table_name = 'llm_usage_events'"
        )
        assert scalar(db_url, tables) == "s1"
        message = fails(pooled, "upgrade", "head")  # without the options: the table is outside the search_path
        assert message.startswith("llm_usage_events is in schema s1, outside this connection's search_path"), message
        assert scalar(db_url, tables) == "s1"


@pytest.mark.parametrize("backend", PG_TCP)
def test_a_statement_pooler_is_named(db_url):
    seed_large(db_url, rows=10)
    with pgbouncer(db_url, "statement", ignore=IGNORING, pool_size=2) as pooled:
        message = fails(pooled, "upgrade", "head")
        assert "is a statement-pooling connection pooler (PgBouncer pool_mode = statement)" in message, message


@pytest.mark.parametrize("backend", PG_TCP)
def test_a_pooler_whose_server_connections_are_all_busy_is_refused_by_the_online_mode(db_url):
    """A session pool of one: the second connection the probe opens waits, so whether it pools transactions
    cannot be told; the online mode refuses rather than guess."""
    seed_large(db_url, rows=10)
    with pgbouncer(db_url, "session", ignore=IGNORING, pool_size=1) as pooled:
        message = fails(pooled, "-x", "online=true", "upgrade", "head")
        assert message.startswith("Could not tell whether") and message.endswith("nothing was changed."), message
        assert current(pooled) == "0001" and server_state(pooled) == CLEAN
