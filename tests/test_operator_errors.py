"""Every failure an operator can cause ends in one sentence, a non-zero exit, and an unchanged database."""

import re
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from support import (
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    alembic,
    columns_of,
    event_row,
    fails,
    insert_events,
    table_names,
    token_rows,
)


def seeded_at_baseline(url):
    alembic(url, "upgrade", "0001")
    engine = create_engine(url)
    with engine.begin() as connection:
        insert_events(connection, [event_row(i, prompt_tokens=10 * i, completion_tokens=i) for i in range(5)])
    engine.dispose()
    return token_rows(url)


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "hold",
    [
        "BEGIN IMMEDIATE",  # another process's write transaction, as an executor would hold
        "BEGIN; SELECT count(*) FROM llm_usage_events",  # a reader: a DB viewer, an in-flight API request
    ],
)
def test_locked_sqlite_database_waits_then_names_the_likely_holders(db_url, hold):
    before = seeded_at_baseline(db_url)
    holder = sqlite3.connect(db_url.database, isolation_level=None)
    for statement in hold.split("; "):
        holder.execute(statement)
    try:
        message = fails(db_url, "-x", "busy_timeout=0.5", "upgrade", "head")
        log = alembic(db_url, "-x", "busy_timeout=0.5", "upgrade", "head", check=False).stderr
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "[1/3]" not in log, log  # met before any work, not at the commit after all of it
    waited = re.search(r"is locked by another process \(waited ([\d.]+)s", message)
    assert waited and 0.5 <= float(waited.group(1)) < 5, message  # the time really waited, met before any work
    assert "uvicorn autopack.main:app" in message and "executor" in message and "DB Browser" in message
    assert message.endswith("nothing was changed.")
    assert alembic(db_url, "current").stdout.strip() == "0001"
    assert token_rows(db_url) == before


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "command", [["current"], ["downgrade", "0001"], ["check"], ["stamp", "head"], ["upgrade", "head", "--sql"]]
)
def test_a_missing_sqlite_file_is_only_created_by_upgrade(db_url, command):
    path = Path(db_url.database)
    if command[-1] == "--sql":  # offline mode never touches a database: it prints SQL
        assert "CREATE TABLE llm_usage_events" in alembic(db_url, *command).stdout
    else:
        message = fails(db_url, *command)
        assert (
            message
            == f"No SQLite database at {path}: check DATABASE_URL (only 'alembic upgrade' creates a new database)."
        )
    assert not path.exists()
    alembic(db_url, "upgrade", "head")
    assert path.exists()


def test_upgrade_into_a_missing_directory_says_so(tmp_path):
    url = f"sqlite:///{tmp_path}/no/such/dir/autopack.db"
    message = fails(url, "upgrade", "head")
    assert message == (
        f"Cannot create {tmp_path}/no/such/dir/autopack.db: directory {tmp_path}/no/such/dir does not exist; "
        "check DATABASE_URL."
    )


@pytest.mark.parametrize(
    "content", [b"this is a spreadsheet, not a database" * 200, b"SQLite format 3\x00" + b"\xff" * 4000]
)
def test_a_file_that_is_not_a_database_is_left_untouched(tmp_path, content):
    path = tmp_path / "autopack.db"
    path.write_bytes(content)
    message = fails(f"sqlite:///{path}", "upgrade", "head")
    assert message.startswith(f"sqlite:///{path} is not a SQLite database or is corrupt (")
    assert message.endswith("nothing was changed.")
    assert path.read_bytes() == content


def test_a_database_at_an_unknown_revision_is_refused(db_url):
    before = seeded_at_baseline(db_url)
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    for command in (["upgrade", "head"], ["downgrade", "0001"]):
        message = fails(db_url, *command)
        assert message.startswith("The database is at revision '0099', which this migrations tree does not know")
    assert token_rows(db_url) == before
    assert "total_tokens" not in {c for c in before[1]}  # still the baseline's columns


@pytest.mark.parametrize(
    "url",
    [
        "nonsense",
        "postgresql+psycopg://ops:hunter2@db.internal:notaport/autopack",
        "mysql+nodriver://ops:hunter2@db.internal/autopack",
    ],
)
def test_a_bad_url_is_one_sentence_and_never_shows_the_password(url):
    message = fails(url, "upgrade", "head")
    assert message.startswith("DATABASE_URL is not a usable SQLAlchemy URL")
    assert "hunter2" not in message


def test_an_unreachable_server_is_one_sentence_without_the_password():
    result = alembic("postgresql://ops:hunter2@127.0.0.1:1/autopack", "upgrade", "head", check=False)
    assert result.returncode != 0
    assert "hunter2" not in result.stdout + result.stderr
    assert result.stdout.startswith("FAILED: Cannot connect to postgresql+psycopg://ops:***@127.0.0.1:1/autopack:")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_postgresql_lock_timeout_gives_up_cleanly(db_url):
    before = seeded_at_baseline(db_url)
    conninfo = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    released = threading.Event()
    with psycopg.connect(conninfo) as holder:
        # a long reader: any open transaction that touched the table blocks ALTER TABLE
        holder.execute("SELECT count(*) FROM llm_usage_events").fetchone()
        message = fails(db_url, "-x", "lock_timeout=500ms", "upgrade", "head")
        released.set()
    assert message.startswith("Could not lock llm_usage_events on postgresql+psycopg://")
    assert "lock_timeout=500ms" in message and message.endswith("nothing was changed.")
    assert alembic(db_url, "current").stdout.strip() == "0001"
    assert token_rows(db_url) == before
    assert "alembic_version" in table_names(db_url)


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
@pytest.mark.parametrize(
    "options, expected",
    [
        (["-x", "lock_timeout=2s"], r"Could not lock llm_usage_events on mysql\+pymysql://.* within lock_timeout=2s"),
        (
            ["-x", "online=true", "-x", "online_lock_timeout=1s", "-x", "online_retries=3"],
            r"Could not lock llm_usage_events within online_lock_timeout=1s in 3 attempts",
        ),
    ],
    ids=["default", "online"],
)
def test_mariadb_upgrade_blocked_by_an_open_transaction_gives_up_within_lock_timeout(db_url, options, expected):
    before = seeded_at_baseline(db_url)
    engine = create_engine(db_url)
    with engine.connect() as holder:  # an open transaction that read the table holds its metadata lock
        holder.execute(text("SELECT COUNT(*) FROM llm_usage_events")).scalar()
        started = time.monotonic()
        message = fails(db_url, *options, "upgrade", "head")
        waited = time.monotonic() - started
        holder.rollback()
    engine.dispose()
    assert re.match(expected, message) and "SHOW PROCESSLIST" in message, message
    # the default mode's sentence hedges (MariaDB commits DDL at once); here its one ALTER never ran
    assert message.endswith("re-running finishes the job.") or "llm_usage_events was not changed" in message, message
    assert waited < 30  # MariaDB's own default would wait a day
    assert alembic(db_url, "current").stdout.strip() == "0001"
    assert token_rows(db_url) == before
    assert "total_tokens" not in columns_of(db_url) and not columns_of(db_url)["prompt_tokens"]["nullable"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_long_reader_in_wal_mode_does_not_stop_the_upgrade(db_url):
    before = seeded_at_baseline(db_url)
    setup = sqlite3.connect(db_url.database)
    setup.execute("PRAGMA journal_mode = WAL")
    setup.close()
    reader = sqlite3.connect(db_url.database, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM llm_usage_events").fetchone() == (len(before),)
    try:
        alembic(db_url, "-x", "busy_timeout=0.5", "upgrade", "head")
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    assert {i: r[2] for i, r in token_rows(db_url).items()} == {i: p + c for i, (p, c) in before.items()}


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_read_only_database_file_or_directory_is_one_sentence(db_url, what):
    """Root writes through permission bits, so the file (or its directory) is made immutable instead."""
    before = seeded_at_baseline(db_url)
    target = Path(db_url.database) if what == "file" else Path(db_url.database).parent
    subprocess.run(["chattr", "+i", str(target)], check=True)
    try:
        message = fails(db_url, "upgrade", "head")
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)
    assert (
        ("cannot be written" in message)
        if what == "file"
        else ("permissions of the file and of its directory" in message)
    )
    assert message.endswith("nothing was changed.")
    assert alembic(db_url, "current").stdout.strip() == "0001"
    assert token_rows(db_url) == before
