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

from sqlalchemy.engine import URL

from autopack.migrations.build144.messages import refusal
from autopack.migrations.runtime.connection import DEFAULT_LOCK_TIMEOUT
from autopack.migrations.runtime.errors import one_sentence_errors, shown
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
        with one_sentence_errors(
            url, busy_timeout_s=busy_timeout_s, lock_timeout=DEFAULT_LOCK_TIMEOUT, table=TABLE, wait_hint=None
        ):
            reader = open_sqlite_read_only(source, timeout=busy_timeout_s)  # a hot journal rolled back first
            reader.execute("BEGIN")  # one snapshot for the count and the copy, under a read lock only
            rows = _row_count(reader)
        if rows is None:
            raise refusal("backup_no_table", table=TABLE, source=source)
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
        raise refusal("backup_postgresql")
    if backend in ("mysql", "mariadb"):
        raise refusal(
            "backup_mariadb",
            host=url.host or "localhost",
            port=url.port or 3306,
            user=url.username or "root",
            database=url.database or "DATABASE",
        )
    source = existing_sqlite_file(url)
    if source is None:
        raise refusal("backup_not_a_sqlite_file", where=shown(url))
    return source


def _require_free(destination: Path) -> None:
    if destination.is_dir():
        raise refusal("backup_to_a_directory", destination=destination, suggested=destination / "autopack.db.backup")
    if destination.exists() or destination.is_symlink():
        raise refusal("backup_exists", destination=destination)
    if not destination.resolve().parent.is_dir():
        raise refusal("backup_no_directory", destination=destination, directory=destination.resolve().parent)


def _create(destination: Path) -> None:
    """Create the empty backup file, never over an existing one (SQLite then writes into it, mode=rw)."""
    try:
        destination.open("xb").close()
    except OSError as error:
        raise refusal("backup_cannot_create", destination=destination, reason=error.strerror) from None


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
        raise refusal("backup_copy_failed", source=source, destination=destination, error=error) from None


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
        raise refusal("backup_incomplete", backup=backup, held=held, source=source, rows=rows)


def remove_backup(backup: Path) -> None:
    """Remove a backup this command created, with the journal files SQLite may have left beside it."""
    for path in (backup, *(backup.with_name(backup.name + suffix) for suffix in ("-journal", "-wal", "-shm"))):
        path.unlink(missing_ok=True)
