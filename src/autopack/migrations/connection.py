"""Connection set-up for the migrations: one engine per command, set up so every engine's DDL is safe.

SQLite: the pysqlite driver emits no BEGIN before DDL, so a batch rebuild that fails halfway would leave
``_alembic_tmp_*`` behind. SQLAlchemy's documented recipe ("Serializable isolation / Savepoints /
Transactional DDL" in its SQLite dialect notes) fixes it: autocommit at the driver level, our own
``BEGIN EXCLUSIVE`` on the engine's ``begin`` event, and env.py passes ``transactional_ddl=True``. Foreign keys
are switched off on connect, before any transaction (``PRAGMA foreign_keys`` is a no-op inside one), so a
rebuild's ``DROP TABLE`` cannot cascade; ``sqlite_foreign_key_check`` proves nothing dangles before commit.

PostgreSQL: every statement runs under ``lock_timeout`` (a migration waiting behind a long transaction gives
up with a clear message instead of freezing every reader queued behind it) and ``row_security = off`` (a
role that row-level security would filter is an error, never a partial view). MariaDB/MySQL: strict mode (an
overflow is an error, not a clamped number) and ``lock_wait_timeout`` instead of the default of a day.

What an operator reads when this fails is in ``errors``.
"""

import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote_to_bytes

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, create_engine, event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import NullPool
from sqlalchemy.util import asbool

from autopack.database import with_driver
from autopack.migrations.errors import first_line, one_sentence_errors, shown
from autopack.migrations.options import Options, whole_seconds

DEFAULT_BUSY_TIMEOUT_S = Options.busy_timeout
DEFAULT_LOCK_TIMEOUT = Options.lock_timeout
DEFAULT_CONNECT_TIMEOUT_S = 10


def parse_url(raw: str) -> URL:
    """Parse ``raw`` or fail with one sentence; the text of a bad URL is never echoed (it may hold a password)."""
    try:
        url = with_driver(make_url(raw))
        dialect = url.get_dialect()
    except (exc.ArgumentError, exc.NoSuchModuleError, ValueError) as e:
        raise CommandError(
            f"DATABASE_URL is not a usable SQLAlchemy URL ({type(e).__name__}); "
            "expected e.g. sqlite:///autopack.db or postgresql+psycopg://user@host/db."
        ) from None
    if url.host and "@" in url.host:
        raise CommandError(
            "DATABASE_URL's host contains '@': a password or user name holding '@' must be percent-encoded "
            "('@' as %40, ':' as %3A, '/' as %2F), e.g. postgresql://app:p%40ss@db:5432/autopack; nothing was changed."
        )
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise CommandError(
            f"DATABASE_URL asks for the driver {url.drivername!r}, whose module {e.name or 'it needs'} is not "
            "installed: write postgresql:// (psycopg 3) or mysql:// (PyMySQL), which this project installs, or "
            "pip install that driver; nothing was changed."
        ) from None
    return url


def sqlite_path(url: URL) -> Path | None:
    """The file a SQLite URL opens: its path, or with ``uri=true`` the path of its ``file:`` URI as SQLite
    decodes it; None for an in-memory database or another engine."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if not (asbool(url.query.get("uri", False)) and url.database.startswith("file:")):
        return Path(url.database)
    return _path_in_file_uri(url.database, memory=url.query.get("mode") == "memory")


def _path_in_file_uri(uri: str, *, memory: bool) -> Path | None:
    """SQLite's reading of a ``file:`` URI (sqlite.org/uri.html): an authority of '' or 'localhost', a
    path that ends at '?' or '#', then percent-decoded."""
    rest = uri.removeprefix("file:")
    if rest.startswith("//"):
        authority, slash, rest = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            raise CommandError(
                f"DATABASE_URL names a file on host {authority!r}; SQLite opens only local files: "
                "use file:/path/to/autopack.db."
            )
        rest = slash + rest
    path, query = re.fullmatch(r"([^?#]*)\??([^#]*).*", rest, re.S).groups()  # type: ignore[union-attr]
    if memory or "mode=memory" in query.split("&") or path in ("", ":memory:"):
        return None
    return Path(os.fsdecode(unquote_to_bytes(path)))


def require_sqlite_file(url: URL, *, may_create: bool) -> None:
    """Refuse to create a SQLite file as a side effect, unless this is an upgrade of a new database.

    A mistyped path would otherwise silently become an empty database that every later command
    reports as "at base".
    """
    path = sqlite_path(url)
    if path is None or path.exists():
        return
    if not may_create:
        raise CommandError(
            f"No SQLite database at {path.resolve()}: check DATABASE_URL "
            "(only 'alembic upgrade' creates a new database)."
        )
    if not path.resolve().parent.is_dir():
        raise CommandError(
            f"Cannot create {path.resolve()}: directory {path.resolve().parent} does not exist; check DATABASE_URL."
        )


def migration_engine(
    url: URL, *, busy_timeout_s: float, lock_timeout: str, statement_timeout: str | None = None
) -> Engine:
    """An engine for running migrations, set up for atomic DDL on every engine; a URL option the driver cannot
    read (``connect_timeout=abc``) is one sentence."""
    try:
        return _migration_engine(url, busy_timeout_s, lock_timeout, statement_timeout)
    except (ValueError, TypeError) as error:
        raise CommandError(
            f"DATABASE_URL has an option the {url.drivername} driver cannot use ({error}): fix it; nothing was changed."
        ) from None


def _migration_engine(url: URL, busy_timeout_s: float, lock_timeout: str, statement_timeout: str | None) -> Engine:
    backend = url.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": busy_timeout_s})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA foreign_keys = OFF")

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Connection) -> None:
            # EXCLUSIVE takes every lock up front, so a held lock is met (and waited for) before any work: in the
            # rollback-journal mode IMMEDIATE would not wait for another connection's open read transaction, and
            # the migration would meet it only at its first cache spill, after all the work. In WAL mode readers
            # never block a writer and EXCLUSIVE acts as IMMEDIATE.
            connection.exec_driver_sql("BEGIN EXCLUSIVE")

        return engine
    if backend == "postgresql":
        # merged with the URL's own options (a search_path, say), never replacing them; row_security=off makes a
        # table whose row-level security would hide rows from this role an error instead of a filtered view
        ours = f"-c lock_timeout={lock_timeout} -c row_security=off"
        ours += f" -c statement_timeout={statement_timeout}" if statement_timeout else ""
        options = " ".join(filter(None, [url.query.get("options"), ours]))
        return create_engine(
            url.difference_update_query(["options"]),
            poolclass=NullPool,
            connect_args={"connect_timeout": DEFAULT_CONNECT_TIMEOUT_S, "options": options},
        )
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": DEFAULT_CONNECT_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _mysql_connect(dbapi_connection, _record: object) -> None:
        # strict: an overflow is an error, never a clamped number; a metadata lock (lock_wait_timeout, a day by
        # default) and a row lock (innodb_lock_wait_timeout, 50 s) are waited for as long as lock_timeout, in whole
        # seconds (MariaDB takes no fractions)
        seconds = whole_seconds(lock_timeout)
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'STRICT_ALL_TABLES')")
            cursor.execute(f"SET SESSION lock_wait_timeout = {seconds}, innodb_lock_wait_timeout = {seconds}")

    return engine


def sqlite_foreign_key_check(connection: Connection) -> None:
    """Fail (and so roll back) if the migration left any foreign key pointing nowhere."""
    if connection.dialect.name != "sqlite":
        return
    problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if problems:
        tables = sorted({row[0] for row in problems})
        raise CommandError(
            f"Foreign key check failed after the migration ({len(problems)} row(s) in {', '.join(tables)}); "
            "nothing was changed."
        )


def require_known_revisions(script: ScriptDirectory, heads: tuple[str, ...]) -> None:
    """Refuse a database stamped with a revision this tree does not have (a newer or foreign tree migrated it)."""
    for head in heads:
        try:
            script.get_revision(head)
        except Exception:
            raise CommandError(
                f"The database is at revision {head!r}, which this migrations tree does not know (a newer or "
                "different Autopack migrated it): run that release's migrations instead; nothing was changed."
            ) from None


@contextmanager
def connected(engine: Engine, url: URL) -> Iterator[Connection]:
    """``engine.connect()``, where any failure to get a connection (server down, wrong password, unknown
    database) is one sentence naming the server, never the password."""
    try:
        connection = engine.connect()
    except (exc.DBAPIError, OSError, ValueError, TypeError, AttributeError) as error:
        # the last four: a driver option in the URL it cannot use (ssl_ca=/missing, charset=bogus, ...)
        if url.get_backend_name() == "sqlite":
            raise
        raise CommandError(
            f"Cannot connect to {shown(url)}: {first_line(error)}; check DATABASE_URL and that the server is up; "
            "nothing was changed."
        ) from None
    with connection:
        if connection.dialect.name in ("mysql", "mariadb"):  # GET_LOCK, information_schema: all per database
            database = connection.exec_driver_sql("SELECT DATABASE()").scalar()
            connection.rollback()
            if database is None:
                raise CommandError(
                    f"{shown(url)} names no database on the server: add it to DATABASE_URL "
                    "(mysql://user@host:3306/autopack); nothing was changed."
                )
        yield connection


@contextmanager
def migration_connection(config: Config, raw_url: str, options: Options) -> Iterator[Connection]:
    """The connection a migration command runs on: the one a caller passed in ``config.attributes`` (a
    Connection or an Engine, as pytest-alembic does), or one from ``migration_engine`` for ``raw_url``, where
    every failure an operator can act on is one sentence (``errors.one_sentence_errors``)."""
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        yield given
        return
    if isinstance(given, Engine):
        with given.connect() as connection:
            yield connection
        return
    url = parse_url(raw_url)
    command = getattr(config.cmd_opts, "cmd", (None,))[0]
    require_sqlite_file(url, may_create=command is None or command.__name__ == "upgrade")
    timeouts = {"busy_timeout_s": options.busy_timeout, "lock_timeout": options.lock_timeout}
    engine = migration_engine(url, **timeouts, statement_timeout=options.statement_timeout)
    try:
        with one_sentence_errors(url, **timeouts), connected(engine, url) as connection:
            yield connection
    finally:
        engine.dispose()
