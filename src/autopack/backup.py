"""``python -m autopack backup``: a consistent copy of a SQLite database before migrating it.

Uses SQLite's online backup API: unlike ``cp``, the copy includes what still sits in a ``-wal`` file and
is never torn by a concurrent writer. The source is opened read-only (an escaped ``mode=ro`` URI) inside
one read transaction, so the row count and the copy see the same snapshot; the copy is then checked to
hold ``llm_usage_events`` with that many rows before it is reported, and removed if not. PostgreSQL and
MariaDB/MySQL databases are backed up with their own dump tools.
"""

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from alembic.util import CommandError
from sqlalchemy.engine import URL

from autopack.migrations.connection import DEFAULT_LOCK_TIMEOUT
from autopack.migrations.errors import one_sentence_errors, shown
from autopack.read_only import existing_sqlite_file, open_sqlite_read_only, sqlite_uri

TABLE = "llm_usage_events"


@dataclass(frozen=True)
class Backup:
    source: Path
    path: Path
    rows: int
    pages: int


def backup_sqlite(url: URL, destination: Path | None, *, busy_timeout_s: float) -> Backup:
    """Copy the database ``url`` names to ``destination`` (default: beside it, ``.backup``), checked."""
    source = _source_file(url)
    destination = destination or source.with_name(source.name + ".backup")
    _require_free(destination)
    reader: sqlite3.Connection | None = None
    try:
        with one_sentence_errors(url, busy_timeout_s=busy_timeout_s, lock_timeout=DEFAULT_LOCK_TIMEOUT, wait_hint=None):
            reader = open_sqlite_read_only(source, timeout=busy_timeout_s)  # a hot journal rolled back first
            reader.execute("BEGIN")  # one snapshot for the count and the copy, under a read lock only
            rows = _row_count(reader)
        if rows is None:
            raise CommandError(f"There is no {TABLE} table in {source}: check DATABASE_URL; nothing was written.")
        _create(destination)
        try:
            pages = _copy(reader, source, destination)
            require_complete_backup(destination, rows, source)
        except BaseException:
            remove_backup(destination)
            raise
    finally:
        if reader is not None:
            reader.close()
    return Backup(source, destination, rows, pages)


def _source_file(url: URL) -> Path:
    backend = url.get_backend_name()
    if backend == "postgresql":
        raise CommandError(
            "python -m autopack backup copies SQLite databases; back up PostgreSQL with "
            'pg_dump --format=custom --file=autopack.dump "$DATABASE_URL" (pg_dump takes a postgresql:// URL, '
            "without +psycopg)."
        )
    if backend in ("mysql", "mariadb"):
        raise CommandError(
            "python -m autopack backup copies SQLite databases; back up MariaDB/MySQL with "
            f"mariadb-dump --single-transaction -h {url.host or 'localhost'} -P {url.port or 3306} "
            f"-u {url.username or 'root'} -p {url.database or 'DATABASE'} > autopack.sql (mysqldump on MySQL)."
        )
    source = existing_sqlite_file(url)
    if source is None:
        raise CommandError(
            f"{shown(url)} is not a SQLite file (in memory or another engine): there is nothing to copy; "
            "check DATABASE_URL."
        )
    return source


def _require_free(destination: Path) -> None:
    if destination.is_dir():
        raise CommandError(
            f"{destination} is a directory: name the backup file itself, e.g. --to "
            f"{destination / 'autopack.db.backup'}; nothing was written."
        )
    if destination.exists() or destination.is_symlink():
        raise CommandError(
            f"{destination} already exists: move it away or name another with --to; nothing was written."
        )
    if not destination.resolve().parent.is_dir():
        raise CommandError(
            f"Cannot write {destination}: directory {destination.resolve().parent} does not exist; create it "
            "or name another place with --to; nothing was written."
        )


def _create(destination: Path) -> None:
    """Create the empty backup file, never over an existing one (SQLite then writes into it, mode=rw)."""
    try:
        destination.open("xb").close()
    except OSError as error:
        raise CommandError(
            f"Cannot write {destination} ({error.strerror}): name a writable place with --to; nothing was written."
        ) from None


def _copy(reader: sqlite3.Connection, source: Path, destination: Path) -> int:
    """Copy the reader's snapshot into ``destination``; the number of pages written."""
    try:
        writer = sqlite3.connect(sqlite_uri(destination, "rw"), uri=True)
        try:
            reader.backup(writer)
            return writer.execute("PRAGMA page_count").fetchone()[0]
        finally:
            writer.close()
    except sqlite3.Error as error:
        raise CommandError(
            f"Copying {source} to {destination} failed ({error}): free space there or name another place "
            "with --to; nothing was written."
        ) from None


def _row_count(connection: sqlite3.Connection) -> int | None:
    """Rows of llm_usage_events, or None when the database has no such table."""
    found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
    return connection.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] if found else None


def require_complete_backup(backup: Path, rows: int, source: Path) -> None:
    """Remove and refuse a copy that does not hold llm_usage_events with the ``rows`` rows the source had."""
    copy = sqlite3.connect(sqlite_uri(backup, "rw"), uri=True)
    try:
        copied = _row_count(copy)
    finally:
        copy.close()
    if copied != rows:
        remove_backup(backup)
        held = f"{copied} rows of {TABLE}" if copied is not None else f"no {TABLE} table"
        raise CommandError(
            f"The backup {backup} holds {held} where {source} held {rows}, so it was removed: "
            "re-run python -m autopack backup."
        )


def remove_backup(backup: Path) -> None:
    """Remove a backup this command created, with the journal files SQLite may have left beside it."""
    for path in (backup, *(backup.with_name(backup.name + suffix) for suffix in ("-journal", "-wal", "-shm"))):
        path.unlink(missing_ok=True)
