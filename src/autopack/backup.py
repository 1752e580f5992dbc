"""``python -m autopack backup``: a consistent copy of a SQLite database before migrating it.

Uses SQLite's online backup API: unlike ``cp``, the copy includes what still sits in a ``-wal`` file and
is never torn by a concurrent writer. PostgreSQL databases are backed up with ``pg_dump``.
"""

import sqlite3
from pathlib import Path

from alembic.util import CommandError
from sqlalchemy.engine import URL

from autopack.migration_env import require_sqlite_file, sqlite_path


def backup_sqlite(url: URL, destination: Path | None, *, busy_timeout_s: float) -> tuple[Path, int]:
    """Copy the database ``url`` names to ``destination`` (default: beside it, ``.backup``); (path, pages)."""
    source = sqlite_path(url)
    if source is None:
        raise CommandError(
            "python -m autopack backup copies SQLite files; back up PostgreSQL with: "
            'pg_dump --format=custom --file=autopack.dump "$DATABASE_URL"'
        )
    require_sqlite_file(url, may_create=False)
    destination = destination or source.with_name(source.name + ".backup")
    if destination.exists():
        raise CommandError(
            f"{destination} already exists: move it away or name another with --to; nothing was written."
        )
    reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=busy_timeout_s)
    try:
        writer = sqlite3.connect(destination)
        try:
            reader.backup(writer)
            pages = writer.execute("PRAGMA page_count").fetchone()[0]
        finally:
            writer.close()
    except sqlite3.Error as error:
        destination.unlink(missing_ok=True)
        raise CommandError(f"Backup of {source} failed ({error}); nothing was written.") from None
    finally:
        reader.close()
    return destination, pages
