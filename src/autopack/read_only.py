"""Reading a database without writing to it, for ``python -m autopack verify`` and ``backup``.

SQLite: the file is opened through a ``mode=ro`` URI whose path is percent-escaped (a ``#``, ``?`` or ``%``
in the name stays part of the name) inside a plain deferred ``BEGIN``: a reader takes no write lock, so it
runs while the application commits, and nothing it does can create or change a file — except one thing every
SQLite client does: a hot journal a crashed writer left is rolled back first (``open_sqlite_read_only``), so
that the reads see the committed state. PostgreSQL and
MariaDB/MySQL: the migration engine's connection in a ``READ ONLY`` transaction, so a role that may only
SELECT can run it, and a lock held by another session is waited for a bounded time, then reported.
"""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from math import ceil
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from autopack.migrations.build144 import where_the_table_is
from autopack.migrations.build144.messages import refusal
from autopack.migrations.runtime.connection import connected, migration_engine, require_sqlite_file
from autopack.migrations.runtime.connection import sqlite_path as sqlite_file  # the file a SQLite URL opens
from autopack.migrations.runtime.errors import shown

# The first statement of the transaction, per dialect: it makes the transaction read-only.
BEGIN_READ_ONLY = {
    "sqlite": "BEGIN",  # deferred: a shared lock at the first read, never a write lock
    "postgresql": "SET TRANSACTION READ ONLY",
    "mysql": "START TRANSACTION READ ONLY",
    "mariadb": "START TRANSACTION READ ONLY",
}
MYSQL_LOCK_WAIT_TIMEOUT = 1205
POSTGRES_LOCK_NOT_AVAILABLE = "55P03"


def sqlite_uri(path: Path, mode: str) -> str:
    """A ``file:`` URI that makes SQLite open exactly ``path`` in ``mode`` (``ro``, ``rw`` or ``rwc``)."""
    return f"{path.resolve().as_uri()}?mode={mode}"


def existing_sqlite_file(url: URL) -> Path | None:
    """:func:`sqlite_file`, refused in one sentence unless it is an existing file (never created here)."""
    path = sqlite_file(url)
    if path is None:
        return None
    require_sqlite_file(URL.create("sqlite", database=str(path)), may_create=False)
    if path.is_dir():
        raise refusal("sqlite_path_is_a_directory", path=path.resolve())
    return path


SQLITE_READONLY_ROLLBACK = 776  # (SQLITE_READONLY | 3 << 8): a hot journal a read-only connection cannot roll back


def open_sqlite_read_only(path: Path, *, timeout: float, check_same_thread: bool = True) -> sqlite3.Connection:
    """``path`` opened read-only (``mode=ro``, autocommit at the driver), its committed state readable.

    A writer that died mid-transaction in rollback-journal mode leaves a hot ``-journal`` beside the file: the file
    may hold half of that transaction until a connection that can write rolls the journal back, which SQLite does
    by itself on the first read of any such connection. A read-only one cannot, and fails with
    SQLITE_READONLY_ROLLBACK; so, then, a read-write connection reads the schema once (the rollback restores the
    last committed state, exactly what any sqlite3 client would do) and the read-only one is opened again. If
    that connection cannot write the file or its directory, one sentence says what the file holds and what to do."""

    def connect() -> sqlite3.Connection:
        # isolation_level=None: the driver emits no BEGIN of its own; the callers' BEGIN is a deferred one
        return sqlite3.connect(
            sqlite_uri(path, "ro"), uri=True, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread
        )

    connection = connect()
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the first read meets a hot journal
        return connection
    except sqlite3.Error as error:
        connection.close()
        if getattr(error, "sqlite_errorcode", None) != SQLITE_READONLY_ROLLBACK:
            raise
    roll_back_hot_journal(path, timeout=timeout)
    return connect()


def roll_back_hot_journal(path: Path, *, timeout: float) -> None:
    journal = path.with_name(path.name + "-journal")
    try:
        writer = sqlite3.connect(sqlite_uri(path, "rw"), uri=True, timeout=timeout, isolation_level=None)
        try:
            writer.execute("SELECT count(*) FROM sqlite_master").fetchone()  # SQLite rolls the hot journal back here
        finally:
            writer.close()
    except sqlite3.Error as error:
        if getattr(error, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
            raise  # another connection is rolling it back or writing: the callers' "locked" sentence
        raise refusal("hot_journal_read_only", path=path.resolve(), journal=journal.resolve(), error=error) from None


def _sqlite_engine(path: Path, *, lock_wait_s: float) -> Engine:
    def connect() -> sqlite3.Connection:
        return open_sqlite_read_only(path, timeout=lock_wait_s, check_same_thread=False)

    return create_engine("sqlite://", creator=connect, poolclass=NullPool)


def read_only_engine(url: URL, *, lock_wait_s: float) -> Engine:
    """An engine whose connections cannot write (SQLite) or whose waits for a lock are bounded (servers)."""
    if url.get_backend_name() == "sqlite":
        path = existing_sqlite_file(url)
        if path is None:  # in memory: nothing to lock, nothing to create
            return create_engine(url, poolclass=NullPool, connect_args={"isolation_level": None})
        return _sqlite_engine(path, lock_wait_s=lock_wait_s)
    engine = migration_engine(url, busy_timeout_s=lock_wait_s, lock_timeout=f"{ceil(lock_wait_s * 1000)}ms")
    if engine.dialect.name == "mysql":  # MariaDB waits a day for a metadata lock by default
        seconds = ceil(lock_wait_s)

        @event.listens_for(engine, "connect")
        def _lock_wait(dbapi_connection: Any, _record: object) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET SESSION lock_wait_timeout = {seconds}")

    return engine


@contextmanager
def read_only_connection(url: URL, *, lock_wait_s: float) -> Iterator[Connection]:
    """A connection inside one read-only transaction on ``url`` (one snapshot), rolled back at the end.

    A lock another session holds past ``lock_wait_s`` on PostgreSQL or MariaDB/MySQL ends in one sentence
    that suggests no option: the commands that read take none. (SQLite's "locked" is left to
    ``one_sentence_errors(..., wait_hint=None)``.)"""
    engine = read_only_engine(url, lock_wait_s=lock_wait_s)
    try:
        with connected(
            engine, url, where_the_table_is.CHECKS
        ) as connection:  # server down, wrong password: one sentence
            connection.exec_driver_sql(BEGIN_READ_ONLY.get(connection.dialect.name, "BEGIN"))
            try:
                yield connection
            finally:
                connection.rollback()
    except exc.DBAPIError as error:
        if not _waited_for_a_lock(error):
            raise
        where = "pg_stat_activity" if url.get_backend_name() == "postgresql" else "SHOW PROCESSLIST"
        raise refusal("read_lock_wait", where=shown(url), waited=f"{lock_wait_s:g}", look=where) from None
    finally:
        engine.dispose()


def _waited_for_a_lock(error: exc.DBAPIError) -> bool:
    orig = error.orig
    if getattr(orig, "sqlstate", None) == POSTGRES_LOCK_NOT_AVAILABLE:
        return True
    args = getattr(orig, "args", ())
    return bool(args) and args[0] == MYSQL_LOCK_WAIT_TIMEOUT
