"""``python -m autopack verify`` on real databases: exit 0 only when every runbook criterion holds."""

import os
import re
import sqlite3
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, exc, text

from autopack.read_only import read_only_connection
from support import (
    APP_INSERT,
    LOCK_HOLDERS,
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    alembic,
    application_committing,
    event_row,
    finish_online,
    insert_events,
    line,
    token_rows,
    verify,
)


def upgraded_with(url, rows):
    alembic(url, "upgrade", "head")
    engine = create_engine(url)
    with engine.begin() as connection:
        insert_events(
            connection,
            [event_row(i, prompt_tokens=p, completion_tokens=c, total_tokens=t) for i, (p, c, t) in enumerate(rows)],
        )
    engine.dispose()


def test_a_migrated_database_with_exact_and_total_only_rows_passes(db_url):
    upgraded_with(db_url, [(12_500, 3_200, 15_700), (8_400, 2_100, 10_500), (None, None, 18_500), (0, 0, 0)])
    result = verify(db_url)
    assert result.returncode == 0, result.stdout + result.stderr
    populated = "ok total_tokens populated 3 of 4 rows have total_tokens > 0 (75.0%); 0 rows with splits still at 0"
    assert line(result.stdout, "total_tokens populated").split() == populated.split()
    assert "1 rows with NULL splits and total_tokens > 0" in line(result.stdout, "total-only rows well-formed")
    assert result.stdout.strip().endswith("All checks passed.")
    assert "warning" not in result.stdout


def test_a_total_that_is_not_the_sum_of_its_splits_fails(db_url):
    upgraded_with(db_url, [(100, 50, 150), (100, 50, 149), (7, None, 8)])
    result = verify(db_url)
    assert result.returncode == 1
    assert line(result.stdout, "totals match their splits").startswith("  FAIL")
    assert "2 rows whose total_tokens is not prompt + completion" in result.stdout


def test_a_split_row_left_at_zero_fails_population(db_url):
    upgraded_with(db_url, [(100, 50, 0), (1, 1, 2)])
    result = verify(db_url)
    assert result.returncode == 1
    assert line(result.stdout, "total_tokens populated").startswith("  FAIL")
    assert "1 rows with splits still at 0" in result.stdout


def test_rows_whose_usage_was_lost_before_the_migration_are_a_warning_not_a_failure(db_url):
    upgraded_with(db_url, [(None, None, 0), (None, None, 0), (3, 4, 7)])
    result = verify(db_url)
    assert result.returncode == 0
    assert "warning: 2 rows have both splits NULL and total_tokens 0" in result.stdout


def test_a_database_not_yet_migrated_fails_the_schema_checks(db_url):
    alembic(db_url, "upgrade", "0001")
    result = verify(db_url)
    assert result.returncode == 1
    assert line(result.stdout, "total_tokens exists").startswith("  FAIL")
    assert line(result.stdout, "nullable").startswith("  FAIL")
    assert "run 'alembic upgrade head'" in result.stdout


@pytest.mark.parametrize("backend", ["sqlite"])
def test_verify_never_creates_a_database(db_url):
    result = verify(db_url)
    assert result.returncode == 3
    assert result.stderr.strip() == (
        f"error: No SQLite database at {db_url.database}: check DATABASE_URL "
        "(only 'alembic upgrade' creates a new database)."
    )
    assert not os.path.exists(db_url.database)


def test_verify_on_an_empty_database_says_there_is_no_table(db_url):
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE unrelated (id INTEGER)"))
    engine.dispose()
    result = verify(db_url)
    assert result.returncode == 3
    assert result.stderr.strip() == "error: There is no llm_usage_events table in this database: check DATABASE_URL."


def in_journal_mode(db_url, mode):
    """The upgraded SQLite file of ``db_url`` with 3 good rows, switched to ``mode`` (delete or wal)."""
    upgraded_with(db_url, [(1, 2, 3)] * 3)
    with sqlite3.connect(db_url.database) as db:
        assert db.execute(f"PRAGMA journal_mode = {mode}").fetchone()[0] == mode
    return db_url.database


def rows_checked(output):
    """The row count verify reports ('N of M rows have total_tokens > 0'): M."""
    words = line(output, "total_tokens populated").split()
    return int(words[words.index("of") + 1])


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_verify_runs_while_the_application_commits_in_a_loop(db_url, journal_mode):
    path = in_journal_mode(db_url, journal_mode)
    with application_committing(path) as tally:
        before = tally["commits"]
        result = verify(db_url)
        during = tally["commits"] - before
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("All checks passed.")
    assert tally["errors"] == []
    assert during > 0  # the application was never stopped by verify
    assert 3 + before <= rows_checked(result.stdout) <= 3 + before + during


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_verify_reads_while_another_process_holds_the_write_lock(db_url, journal_mode):
    path = in_journal_mode(db_url, journal_mode)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as an executor mid-transaction holds it
    holder.execute(APP_INSERT)
    try:
        started = time.monotonic()
        result = verify(db_url)
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert rows_checked(result.stdout) == 3  # the uncommitted row is not seen
    assert waited < 5  # it did not wait for the lock (its timeout is 10 s)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_verify_behind_an_exclusive_lock_names_the_holders_and_no_option_it_lacks(db_url):
    path = in_journal_mode(db_url, "delete")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # the one lock that stops readers: a commit being written
    try:
        result = verify(db_url)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 3
    assert re.fullmatch(  # the time really waited: the 10 s busy timeout, and a little more
        re.escape(f"error: The database sqlite:///{path} is locked by another process (waited ")
        + r"1\d\.\ds"
        + re.escape(f"): {LOCK_HOLDERS}."),
        result.stderr.strip(),
    ), result.stderr


def test_verify_reads_in_a_transaction_that_refuses_writes(db_url):
    upgraded_with(db_url, [(1, 2, 3)])
    with read_only_connection(db_url, lock_wait_s=5) as connection, pytest.raises(exc.DBAPIError) as refused:
        connection.execute(text(APP_INSERT))
    assert any(
        words in str(refused.value.orig).lower()
        for words in ("readonly database", "read-only transaction", "read only transaction")
    ), refused.value.orig
    assert list(token_rows(db_url).values()) == [(1, 2, 3)]


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_role_that_may_only_select_can_verify_on_postgresql(db_url):
    upgraded_with(db_url, [(1, 2, 3), (None, None, 40)])
    role = f"autopack_reader_{uuid.uuid4().hex[:8]}"
    admin = create_engine(db_url)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        connection.exec_driver_sql(f"GRANT SELECT ON llm_usage_events TO {role}")
    try:
        result = verify(db_url.set(username=role, password=None))
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"postgresql+psycopg://{role}" in result.stdout.splitlines()[0]  # (pgserver's URL carries a password)
    assert "1 rows with NULL splits and total_tokens > 0" in result.stdout


@pytest.mark.parametrize("backend", [*POSTGRES_BACKENDS, *MYSQL_BACKENDS])
def test_verify_behind_a_table_lock_gives_up_in_one_sentence_that_names_no_option(db_url):
    upgraded_with(db_url, [(1, 2, 3)])
    holder = create_engine(db_url)
    try:
        with holder.connect() as connection:
            postgresql = connection.dialect.name == "postgresql"
            connection.exec_driver_sql(  # as an ALTER TABLE of a migration holds it
                "LOCK TABLE llm_usage_events IN ACCESS EXCLUSIVE MODE"
                if postgresql
                else "LOCK TABLES llm_usage_events WRITE"
            )
            result = verify(db_url)
    finally:
        holder.dispose()  # closes the holder's session, and its lock with it, whatever happened
    assert result.returncode == 3
    assert result.stderr.strip() == (
        f"error: Could not read llm_usage_events on {db_url.render_as_string(hide_password=True)} within 10s: "
        "another session holds a lock on it, such as a migration in progress "
        f"(see {'pg_stat_activity' if 'postgresql' in db_url.drivername else 'SHOW PROCESSLIST'}); re-run when it ends."
    )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_verify_never_creates_a_database_named_by_a_file_uri(db_url):
    result = verify(f"sqlite:///file:{quote(db_url.database)}?uri=true")
    assert result.returncode == 3
    assert result.stderr.strip() == (
        f"error: No SQLite database at {db_url.database}: check DATABASE_URL "
        "(only 'alembic upgrade' creates a new database)."
    )
    assert not os.path.exists(db_url.database)


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("name", "in_url"), [("prod#1.db", "prod#1.db"), ("why?.db", "why%3F.db"), ("100%.db", "100%.db")]
)
def test_verify_reads_a_path_with_hash_question_mark_or_percent(db_url, name, in_url):
    folder = Path(db_url.database).parent
    upgraded_with(f"sqlite:///{quote(str(folder / name))}", [(1, 2, 3), (4, 5, 9)])
    before = sorted(os.listdir(folder))
    result = verify(f"sqlite:///{in_url}", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert rows_checked(result.stdout) == 2
    assert sorted(os.listdir(folder)) == before


def test_verify_of_a_database_stamped_without_being_migrated_prints_commands_that_fix_it(db_url):
    from legacy import build

    build(db_url, "pre_build144")
    alembic(db_url, "stamp", "head")  # generic advice for unversioned databases, which skips the migration
    result = verify(db_url)
    assert result.returncode == 1
    fix = "stamped 0002 but the table was never migrated: run 'alembic stamp 0001' then 'alembic upgrade head'"
    assert fix in result.stdout
    alembic(db_url, "stamp", "0001")  # the commands, as printed
    alembic(db_url, "upgrade", "head")
    again = verify(db_url)
    assert again.returncode == 0 and "All checks passed." in again.stdout, again.stdout


@pytest.mark.parametrize("backend", ["sqlite"])
def test_verify_fails_while_a_check_constraint_still_forbids_null_splits(db_url):
    alembic(db_url, "upgrade", "head")
    connection = sqlite3.connect(db_url.database)
    sql = connection.execute("SELECT sql FROM sqlite_master WHERE name = 'llm_usage_events'").fetchone()[0]
    connection.execute("PRAGMA writable_schema = ON")
    connection.execute(
        "UPDATE sqlite_master SET sql = ? WHERE name = 'llm_usage_events'",
        (sql.rstrip().removesuffix(")") + ", CONSTRAINT splits_set CHECK (prompt_tokens IS NOT NULL))",),
    )
    connection.commit()
    connection.close()
    result = verify(db_url)
    assert result.returncode == 1
    assert "FAIL  prompt_tokens, completion_tokens nullable" in result.stdout
    assert "CHECK constraint splits_set (prompt_tokens IS NOT NULL) still forbids NULL splits" in result.stdout


def test_rows_left_at_zero_at_head_get_the_commands_that_fill_them(db_url):
    upgraded_with(db_url, [(5, 7, 0), (10, 0, 10)])  # the first written by code that did not know total_tokens
    result = verify(db_url)
    assert result.returncode == 1
    assert "(to fill them: run 'python -m autopack finish-online')" in line(result.stdout, "populated")
    finished = finish_online(db_url)  # the command, as printed
    assert "filled 1 rows whose total was 0 beside a split" in finished.stdout
    again = verify(db_url)
    assert again.returncode == 0, again.stdout
    assert sorted(r[2] for r in token_rows(db_url).values()) == [10, 12]


def test_a_total_only_row_with_a_negative_total_fails_well_formedness(db_url):
    upgraded_with(db_url, [(None, None, 500), (None, None, -40), (None, 7, 7), (3, 4, 7)])
    result = verify(db_url)
    assert result.returncode == 1, result.stdout + result.stderr
    well_formed = line(result.stdout, "total-only rows well-formed")
    assert well_formed.startswith("  FAIL")
    assert "1 rows with NULL splits and total_tokens > 0; 1 with NULL splits and a negative total_tokens" in well_formed
    # the partial split (None, 7, 7) of an intermediate release is well-formed and matches its splits
    assert line(result.stdout, "totals match their splits").startswith("  ok")


def test_a_database_not_yet_migrated_is_described_in_the_upgrade_reports_words(db_url):
    alembic(db_url, "upgrade", "0001")
    result = verify(db_url)
    assert result.returncode == 1
    assert (
        "missing (add total_tokens INTEGER NOT NULL DEFAULT 0; make prompt_tokens and completion_tokens nullable)"
        in line(result.stdout, "total_tokens exists and is NOT NULL")
    )
    upgrade = alembic(db_url, "upgrade", "head")
    assert "added total_tokens INTEGER NOT NULL DEFAULT 0; made prompt_tokens and completion_tokens nullable" in (
        upgrade.stderr
    )
