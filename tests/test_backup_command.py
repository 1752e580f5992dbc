"""``python -m autopack backup`` on real SQLite files: a checked copy of the file the URL names, or one
sentence and nothing written."""

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.util import CommandError
from sqlalchemy import create_engine

from autopack.backup import require_complete_backup
from autopack.database import Base
from autopack.models import LlmUsageEvent  # noqa: F401  (registers the table on Base.metadata)
from support import LOCK_HOLDERS, application_committing, event_row, insert_events

ROWS = [(12_500, 3_200, 15_700), (None, None, 18_500), (8_400, 2_100, 10_500), (0, 0, 0), (1, 2, 3)]


def backup(url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "autopack", "backup", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def seeded(path: Path, *, journal_mode: str = "delete") -> Path:
    """A SQLite file at ``path`` with Autopack's current table holding ROWS, and an unrelated table."""
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(path))
    with engine.begin() as connection:
        Base.metadata.create_all(connection)
        connection.exec_driver_sql("CREATE TABLE operator_notes (note TEXT)")
        insert_events(
            connection,
            [event_row(i, prompt_tokens=p, completion_tokens=c, total_tokens=t) for i, (p, c, t) in enumerate(ROWS)],
        )
    engine.dispose()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA journal_mode = {journal_mode}")
    return path


def events(path: Path) -> list[tuple]:
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as db:
        return db.execute(
            "SELECT id, prompt_tokens, completion_tokens, total_tokens FROM llm_usage_events ORDER BY id"
        ).fetchall()


def one_error(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a clean failure."""
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A directory no file can be created in, even by root (immutable), else by mode 0555."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("running as root, and chattr +i is not permitted here: no directory is unwritable")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.mark.parametrize(
    ("name", "in_url"),
    [("prod#1.db", "prod#1.db"), ("why?.db", "why%3F.db"), ("100%.db", "100%.db"), ("a%41.db", "a%2541.db")],
)
def test_a_path_with_hash_question_mark_or_percent_is_backed_up_whole(tmp_path, name, in_url):
    source = seeded(tmp_path / name)
    result = backup(f"sqlite:///{in_url}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Backed up {name} to {name}.backup (5 rows of llm_usage_events, ")
    assert events(tmp_path / f"{name}.backup") == events(source)
    assert sorted(os.listdir(tmp_path)) == sorted([name, f"{name}.backup"])  # no stray file at a cut-off name


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///file:{path}?uri=true",
        "sqlite:///file://{path}?uri=true",  # file:///abs/path
        "sqlite:///file://localhost{path}?uri=true",
        "sqlite:///file:autopack.db?uri=true",  # relative to the working directory, as SQLite reads it
        "sqlite:///file:{path}?mode=ro&uri=true",  # the URI's own parameters do not change which file is copied
    ],
)
def test_a_sqlite_file_uri_url_is_backed_up_from_the_file_sqlite_opens(tmp_path, url):
    source = seeded(tmp_path / "autopack.db")
    result = backup(url.format(path=source), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Backed up {source} to {source}.backup (5 rows") or "file:autopack.db" in url
    assert events(tmp_path / "autopack.db.backup") == events(source)
    assert sorted(os.listdir(tmp_path)) == ["autopack.db", "autopack.db.backup"]


def test_a_file_uri_keeps_its_percent_escapes(tmp_path):
    source = seeded(tmp_path / "prod#1.db")
    # SQLAlchemy decodes %25 to %, then SQLite decodes %23 to #: the file migrations and verify open
    result = backup("sqlite:///file:prod%25231.db?uri=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Backed up prod#1.db to prod#1.db.backup (5 rows of llm_usage_events, ")
    assert events(tmp_path / "prod#1.db.backup") == events(source)
    assert sorted(os.listdir(tmp_path)) == ["prod#1.db", "prod#1.db.backup"]


def test_a_missing_file_named_by_a_file_uri_is_not_created(tmp_path):
    message = one_error(backup(f"sqlite:///file:{tmp_path}/autopack.db?uri=true", cwd=tmp_path))
    assert message == (
        f"error: No SQLite database at {tmp_path / 'autopack.db'}: check DATABASE_URL "
        "(only 'alembic upgrade' creates a new database)."
    )
    assert os.listdir(tmp_path) == []


def test_a_database_without_llm_usage_events_is_refused_and_nothing_is_written(tmp_path):
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE t (x INTEGER)")
    message = one_error(backup(f"sqlite:///{tmp_path / 'other.db'}", cwd=tmp_path))
    assert message == (
        f"error: There is no llm_usage_events table in {tmp_path / 'other.db'}: check DATABASE_URL; "
        "nothing was written."
    )
    assert os.listdir(tmp_path) == ["other.db"]


def test_a_wal_database_is_copied_with_what_is_still_in_the_wal_and_never_overwritten(tmp_path):
    source = seeded(tmp_path / "autopack.db", journal_mode="wal")
    writer = sqlite3.connect(source)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("UPDATE llm_usage_events SET total_tokens = total_tokens + 1")
    writer.commit()  # committed, but only in autopack.db-wal: a cp of autopack.db alone would miss it
    assert (tmp_path / "autopack.db-wal").stat().st_size > 0
    try:
        first = backup(f"sqlite:///{source}", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert [row[3] for row in events(tmp_path / "autopack.db.backup")] == [15_701, 18_501, 10_501, 1, 4]
        again = one_error(backup(f"sqlite:///{source}", cwd=tmp_path))
    finally:
        writer.close()
    assert again == (
        f"error: {tmp_path / 'autopack.db.backup'} already exists: move it away or name another with --to; "
        "nothing was written."
    )


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_a_backup_taken_while_the_application_commits_holds_the_rows_it_reports(tmp_path, journal_mode):
    source = seeded(tmp_path / "autopack.db", journal_mode=journal_mode)
    with application_committing(str(source)) as tally:
        result = backup(f"sqlite:///{source}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tally["errors"] == []
    copied = events(tmp_path / "autopack.db.backup")
    assert result.stdout.startswith(f"Backed up {source} to {tmp_path / 'autopack.db.backup'} ({len(copied)} rows ")
    assert [row[0] for row in copied] == list(range(1, len(copied) + 1))  # one snapshot: no gap, no torn row
    assert len(copied) > len(ROWS)


def test_a_backup_that_does_not_hold_every_row_is_removed_in_one_sentence(tmp_path):
    copy = seeded(tmp_path / "autopack.db.backup")
    with pytest.raises(CommandError) as refused:
        require_complete_backup(copy, 6, tmp_path / "autopack.db")
    assert str(refused.value) == (
        f"The backup {copy} holds 5 rows of llm_usage_events where {tmp_path / 'autopack.db'} held 6, so it was "
        "removed: re-run python -m autopack backup."
    )
    assert os.listdir(tmp_path) == []


def test_a_source_path_that_is_a_directory_is_one_sentence(tmp_path):
    (tmp_path / "autopack.db").mkdir()
    message = one_error(backup(f"sqlite:///{tmp_path / 'autopack.db'}", cwd=tmp_path))
    assert message == f"error: {tmp_path / 'autopack.db'} is a directory, not a SQLite database: check DATABASE_URL."
    assert os.listdir(tmp_path) == ["autopack.db"] and os.listdir(tmp_path / "autopack.db") == []


def test_a_destination_that_is_a_directory_is_one_sentence(tmp_path):
    source = seeded(tmp_path / "autopack.db")
    (tmp_path / "backups").mkdir()
    message = one_error(backup(f"sqlite:///{source}", "--to", str(tmp_path / "backups"), cwd=tmp_path))
    assert message == (
        f"error: {tmp_path / 'backups'} is a directory: name the backup file itself, e.g. --to "
        f"{tmp_path / 'backups' / 'autopack.db.backup'}; nothing was written."
    )
    assert os.listdir(tmp_path / "backups") == []


def test_a_destination_in_a_missing_directory_is_one_sentence(tmp_path):
    source = seeded(tmp_path / "autopack.db")
    message = one_error(backup(f"sqlite:///{source}", "--to", str(tmp_path / "nope" / "a.backup"), cwd=tmp_path))
    assert message == (
        f"error: Cannot write {tmp_path / 'nope' / 'a.backup'}: directory {tmp_path / 'nope'} does not exist; "
        "create it or name another place with --to; nothing was written."
    )
    assert os.listdir(tmp_path) == ["autopack.db"]


def test_a_destination_in_an_unwritable_directory_is_one_sentence(tmp_path, unwritable):
    source = seeded(tmp_path / "autopack.db")
    target = unwritable / "autopack.db.backup"
    message = one_error(backup(f"sqlite:///{source}", "--to", str(target), cwd=tmp_path))
    assert message.startswith(f"error: Cannot write {target} (")
    assert message.endswith("): name a writable place with --to; nothing was written.")
    assert os.listdir(unwritable) == []


def test_a_locked_source_names_the_holders_and_no_option_backup_lacks(tmp_path):
    source = seeded(tmp_path / "autopack.db")
    holder = sqlite3.connect(source, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a commit being written: the one lock that stops a reader
    try:
        message = one_error(backup(f"sqlite:///{source}", cwd=tmp_path))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # the time really waited (the 10 s busy timeout, and a little more), then the holders, and no option
    assert re.fullmatch(
        re.escape(f"error: The database sqlite:///{source} is locked by another process (waited ")
        + r"1\d\.\ds"
        + re.escape(f"): {LOCK_HOLDERS}; nothing was changed."),
        message,
    ), message
    assert os.listdir(tmp_path) == ["autopack.db"]


@pytest.mark.parametrize(
    ("url", "engine", "tool"),
    [
        (
            "postgresql://ops:hunter2@db.internal/autopack",
            "PostgreSQL",
            'pg_dump --format=custom --file=autopack.dump "$DATABASE_URL" (pg_dump takes a postgresql:// URL, '
            "without +psycopg)",
        ),
        (
            "mysql://ops:hunter2@db.internal:3307/autopack",
            "MariaDB/MySQL",
            "mariadb-dump --single-transaction -h db.internal -P 3307 -u ops -p autopack > autopack.sql "
            "(mysqldump on MySQL)",
        ),
    ],
)
def test_a_server_database_points_to_its_own_dump_tool_without_the_password(tmp_path, url, engine, tool):
    message = one_error(backup(url, cwd=tmp_path))
    assert message == f"error: python -m autopack backup copies SQLite databases; back up {engine} with {tool}."
    assert "hunter2" not in message
    assert os.listdir(tmp_path) == []
