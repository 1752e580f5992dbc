"""PostgreSQL's online downgrade (``-x online=true downgrade -1``): NOT VALID CHECKs, VALIDATE while the
application runs, SET NOT NULL without a scan; the same rows as the default downgrade, lossless round trip,
and a failure midway leaves 0002 with no CHECK behind, finished by re-running."""

import signal
import subprocess
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from support import (
    POSTGRES_BACKENDS,
    alembic,
    columns_of,
    event_row,
    execute,
    fails,
    insert_events,
    start_alembic,
    token_rows,
)

pytestmark = pytest.mark.parametrize("backend", POSTGRES_BACKENDS)

SEED = [(12_500, 3_200), (0, 0), (7, 0), (300, 45)]
AT_HEAD = [(None, None, 18_500), (40, None, 40), (10, 5, 100), (None, None, 0), (3, 4, 7)]  # new code's rows


def at_head(url) -> None:
    alembic(url, "upgrade", "0001")
    engine = create_engine(url)
    with engine.begin() as connection:
        insert_events(connection, [event_row(i, prompt_tokens=p, completion_tokens=c) for i, (p, c) in enumerate(SEED)])
    alembic(url, "upgrade", "head")
    with engine.begin() as connection:
        rows = [
            event_row(10 + i, prompt_tokens=p, completion_tokens=c, total_tokens=t)
            for i, (p, c, t) in enumerate(AT_HEAD)
        ]
        insert_events(connection, rows)
    engine.dispose()


def everything(url) -> list[dict]:
    engine = create_engine(url)
    with engine.connect() as connection:
        events = [dict(r._mapping) for r in connection.execute(text("SELECT * FROM llm_usage_events ORDER BY id"))]
        held = connection.execute(
            text(
                "SELECT * FROM llm_usage_events_build144_holdover ORDER BY event_id"
                if "llm_usage_events_build144_holdover" in _tables(connection)
                else "SELECT 1 WHERE false"
            )
        )
        found = events, [dict(r._mapping) for r in held]
    engine.dispose()
    return found


def _tables(connection) -> set[str]:
    return set(connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())


def build144_checks(url) -> list[str]:
    engine = create_engine(url)
    with engine.connect() as connection:
        names = connection.execute(
            text("SELECT conname FROM pg_constraint WHERE conrelid = 'llm_usage_events'::regclass AND contype = 'c'")
        ).scalars()
        found = sorted(names)
    engine.dispose()
    return found


def test_the_online_downgrade_gives_the_default_downgrades_rows_and_round_trips(new_database):
    online, default = new_database(), new_database()
    for url in (online, default):
        at_head(url)
    upgraded = token_rows(online)
    log = alembic(online, "-x", "online=true", "downgrade", "0001").stderr
    alembic(default, "downgrade", "0001")
    assert "NOT VALID CHECKs" in log and "Validated" in log and "the CHECKs prove it: no scan" in log, log
    assert everything(online) == everything(default)
    assert build144_checks(online) == []
    columns = columns_of(online)
    assert "total_tokens" not in columns and not columns["prompt_tokens"]["nullable"]
    assert not columns["completion_tokens"]["nullable"]
    assert alembic(online, "current").stdout.strip() == "0001"
    alembic(online, "-x", "online=true", "upgrade", "head")
    assert token_rows(online) == upgraded  # set-aside rows back exactly


def test_a_table_with_nothing_to_set_aside_leaves_no_set_aside_table(db_url):
    alembic(db_url, "upgrade", "0001")
    execute(
        db_url,
        *[
            f"INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, "
            f"created_at, is_doctor_call) VALUES ('p', 'm', 'r', {i}, 1, now(), false)"
            for i in range(5)
        ],
    )
    alembic(db_url, "upgrade", "head")
    alembic(db_url, "-x", "online=true", "downgrade", "0001")
    assert everything(db_url)[1] == [] and build144_checks(db_url) == []
    assert [r[:2] for r in token_rows(db_url).values()] == [(i, 1) for i in range(5)]


def test_a_failure_midway_drops_the_checks_stays_at_0002_and_a_rerun_finishes(db_url):
    at_head(db_url)
    upgraded = token_rows(db_url)
    execute(
        db_url,
        "CREATE FUNCTION forbid_update() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'usage events are append-only'; END $$",
        "CREATE TRIGGER append_only BEFORE UPDATE ON llm_usage_events FOR EACH ROW EXECUTE FUNCTION forbid_update()",
    )
    message = fails(db_url, "-x", "online=true", "downgrade", "0001")  # the placeholders' UPDATE meets the guard
    assert "usage events are append-only" in message and "re-running the same command finishes" in message, message
    assert build144_checks(db_url) == []  # total-only rows can still be written at 0002
    assert alembic(db_url, "current").stdout.strip() == "0002 (head)"
    assert token_rows(db_url) == upgraded
    execute(db_url, "DROP TRIGGER append_only ON llm_usage_events")
    alembic(db_url, "-x", "online=true", "downgrade", "0001")
    alembic(db_url, "upgrade", "head")
    assert token_rows(db_url) == upgraded


def test_writers_of_old_code_go_on_during_the_online_downgrade_and_keep_their_rows(db_url):
    at_head(db_url)
    stop, written, errors = threading.Event(), [], []

    def old_code() -> None:  # pre-BUILD-144 code: splits always set, no total_tokens
        engine = create_engine(db_url)
        try:
            while not stop.is_set():
                with engine.begin() as connection:
                    connection.execute(
                        text(
                            "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, "
                            "created_at, is_doctor_call) VALUES ('old', 'm', 'r', :p, 1, now(), false)"
                        ),
                        {"p": len(written)},
                    )
                written.append(len(written))
        except Exception as error:
            errors.append(error)
        finally:
            engine.dispose()

    writer = threading.Thread(target=old_code)
    writer.start()
    try:
        alembic(db_url, "-x", "online=true", "-x", "online_lock_timeout=200ms", "downgrade", "0001")
    finally:
        stop.set()
        writer.join(30)
    assert errors == [] and len(written) > 0
    old_rows = [row for row in everything(db_url)[0] if row["provider"] == "old"]
    assert sorted(r["prompt_tokens"] for r in old_rows) == written


def test_a_lock_timeout_after_rows_were_set_aside_says_so_and_a_rerun_finishes(db_url):
    at_head(db_url)
    upgraded = token_rows(db_url)
    execute(  # the set-aside step takes 2 s, long enough to take a lock meanwhile
        db_url,
        "CREATE FUNCTION slow_statement() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(2); "
        "RETURN NULL; END $$",
        "CREATE TRIGGER slow AFTER UPDATE ON llm_usage_events FOR EACH STATEMENT EXECUTE FUNCTION slow_statement()",
    )
    args = ["-x", "online=true", "-x", "lock_timeout=1s", "-x", "online_retries=2", "downgrade", "0001"]
    process = start_alembic(db_url, *args, stdout=subprocess.PIPE)
    for line in process.stderr:
        if "[1/3]" in line:
            break
    engine = create_engine(db_url)
    with engine.begin() as connection:  # a manual VACUUM or CREATE INDEX CONCURRENTLY holds this lock
        connection.execute(text("LOCK TABLE llm_usage_events IN SHARE UPDATE EXCLUSIVE MODE"))
        output = process.communicate(timeout=120)[0]
    engine.dispose()
    failed = [line for line in output.splitlines() if line.startswith("FAILED: ")]
    assert process.returncode != 0 and len(failed) == 1, output
    assert "re-running the same command finishes" in failed[0] and "nothing was changed" not in failed[0]
    assert alembic(db_url, "current").stdout.strip() == "0002 (head)"
    alembic(db_url, "-x", "online=true", "downgrade", "0001")
    assert alembic(db_url, "current").stdout.strip() == "0001" and build144_checks(db_url) == []
    alembic(db_url, "upgrade", "head")
    assert token_rows(db_url) == upgraded


SLOW_SET_ASIDE = [
    "CREATE FUNCTION slow_statement() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); "
    "RETURN NULL; END $$",
    "CREATE TRIGGER slow AFTER UPDATE ON llm_usage_events FOR EACH STATEMENT EXECUTE FUNCTION slow_statement()",
]


def test_ctrl_c_midway_leaves_no_check_behind_and_a_rerun_finishes(db_url):
    at_head(db_url)
    upgraded = token_rows(db_url)
    execute(db_url, *SLOW_SET_ASIDE)
    process = start_alembic(db_url, "-x", "online=true", "downgrade", "0001")
    for line in process.stderr:
        if "[1/3]" in line:
            break
    time.sleep(1)  # inside the set-aside step's 3 s statement
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert build144_checks(db_url) == []  # BUILD-144 code can still write total-only rows
    assert alembic(db_url, "current").stdout.strip() == "0002 (head)"
    alembic(db_url, "-x", "online=true", "downgrade", "0001")
    alembic(db_url, "upgrade", "head")
    assert token_rows(db_url) == upgraded


@pytest.mark.parametrize("mode", [[], ["-x", "online=true"]], ids=["default", "online"])
def test_the_upgrade_removes_checks_an_interrupted_online_downgrade_left(db_url, mode):
    at_head(db_url)
    upgraded = token_rows(db_url)
    alembic(db_url, "downgrade", "0001")  # the set-aside rows' NULL splits read 0 at 0001
    execute(  # what a killed online downgrade leaves once a default downgrade finished the job
        db_url,
        "ALTER TABLE llm_usage_events ADD CONSTRAINT build144_prompt_tokens_not_null CHECK (prompt_tokens IS NOT NULL)",
        "ALTER TABLE llm_usage_events ADD CONSTRAINT build144_completion_tokens_not_null "
        "CHECK (completion_tokens IS NOT NULL)",
    )
    alembic(db_url, *mode, "upgrade", "head")
    assert build144_checks(db_url) == [] and token_rows(db_url) == upgraded  # NULL splits back
