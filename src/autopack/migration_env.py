"""Engine setup and error translation for ``alembic/env.py`` (kept here so env.py stays short).

SQLite: the pysqlite driver emits no BEGIN before DDL, so a batch rebuild that fails halfway would
leave ``_alembic_tmp_*`` behind. SQLAlchemy's documented recipe fixes it: autocommit at the driver
level, and our own ``BEGIN`` on the engine's ``begin`` event; env.py then passes
``transactional_ddl=True``. Foreign keys are switched off on connect, before any transaction
(``PRAGMA foreign_keys`` is a no-op inside one), so a rebuild's ``DROP TABLE`` cannot cascade.

PostgreSQL: every statement runs under ``lock_timeout`` so a migration waiting behind a long
transaction gives up with a clear message instead of freezing every reader queued behind it.
"""

import math
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote_to_bytes

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, create_engine, event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import NullPool
from sqlalchemy.util import asbool

from autopack.database import with_driver
from autopack.migration_options import Options, interval_seconds

DEFAULT_BUSY_TIMEOUT_S = Options.busy_timeout
DEFAULT_LOCK_TIMEOUT = Options.lock_timeout
DEFAULT_CONNECT_TIMEOUT_S = 10

WAIT_HINT = "-x busy_timeout=SECONDS to wait longer"
LOCK_HOLDERS = (
    "stop the API server (uvicorn autopack.main:app), any autonomous executor and any database viewer "
    "(DB Browser, sqlite3 CLI), then re-run"
)


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


# query parameters that carry a secret, in libpq, psycopg and PyMySQL spelling
SECRET_PARAMETERS = {"password", "passwd", "sslpassword", "ssl_password", "sslkey_password", "passfile"}


def shown(url: URL) -> str:
    """The URL as it may be printed: never with its password, in the userinfo or in a query parameter."""
    secrets = {key: "HIDDEN" for key in url.query if key.lower() in SECRET_PARAMETERS}
    rendered = (url.update_query_dict(secrets) if secrets else url).render_as_string(hide_password=True)
    return rendered.replace("=HIDDEN", "=***")


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


def migration_engine(url: URL, *, busy_timeout_s: float, lock_timeout: str) -> Engine:
    """An engine for running migrations, set up for atomic DDL on every engine; a URL option the driver cannot
    read (``connect_timeout=abc``) is one sentence."""
    try:
        return _migration_engine(url, busy_timeout_s=busy_timeout_s, lock_timeout=lock_timeout)
    except (ValueError, TypeError) as error:
        raise CommandError(
            f"DATABASE_URL has an option the {url.drivername} driver cannot use ({error}): fix it; nothing was changed."
        ) from None


def _migration_engine(url: URL, *, busy_timeout_s: float, lock_timeout: str) -> Engine:
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
        options = " ".join(filter(None, [url.query.get("options"), ours]))
        return create_engine(
            url.difference_update_query(["options"]),
            poolclass=NullPool,
            connect_args={"connect_timeout": DEFAULT_CONNECT_TIMEOUT_S, "options": options},
        )
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": DEFAULT_CONNECT_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _mysql_connect(dbapi_connection, _record: object) -> None:
        # strict: an overflow is an error, never a clamped number; a metadata lock is waited for as long as
        # lock_timeout, not MariaDB's default of a day
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'STRICT_ALL_TABLES')")
            cursor.execute(f"SET SESSION lock_wait_timeout = {max(1, math.ceil(interval_seconds(lock_timeout)))}")

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


def explain(
    error: Exception,
    url: URL,
    *,
    busy_timeout_s: float,
    lock_timeout: str,
    wait_hint: str | None = WAIT_HINT,
    waited_s: float | None = None,
) -> str | None:
    """One sentence for a failure an operator can act on, or None for a bug (which keeps its traceback).
    ``wait_hint``: how this command waits longer for a lock, or None when it takes no such option."""
    orig = getattr(error, "orig", error)
    text = first_line(error)
    where = shown(url)
    if isinstance(orig, sqlite3.OperationalError) and "locked" in text:
        return (
            f"The database {where} is locked by another process (waited {waited_s or busy_timeout_s:.1f}s"
            f"{', ' + wait_hint if wait_hint else ''}): {LOCK_HOLDERS}; nothing was changed."
        )
    if isinstance(orig, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "corrupt" in text
    ):
        return f"{where} is not a SQLite database or is corrupt ({text}); nothing was changed."
    if isinstance(orig, sqlite3.OperationalError) and "disk is full" in text:
        return (
            f"The disk holding {where} is full: the rebuild needs free space about the size of llm_usage_events; "
            "free some and re-run; nothing was changed."
        )
    if isinstance(orig, sqlite3.OperationalError) and "readonly" in text:
        return (
            f"{where} cannot be written ({text}): the file, its directory (SQLite writes a journal beside it) or "
            "the mount is read-only for this user; run as the user that owns it; nothing was changed."
        )
    if getattr(orig, "sqlstate", None) == "25006" or "--read-only" in text:
        return (
            f"{where} accepts no writes ({text}): it is a hot standby or the connection is read-only "
            "(default_transaction_read_only); run the migration against the primary; nothing was changed."
        )
    if getattr(orig, "sqlstate", None) == "42501" and "row-level security" in text:
        return (
            f"llm_usage_events on {where} has row-level security that would hide rows from this role ({text}): "
            "every row must be seen, so run as a role with BYPASSRLS (ALTER ROLE … BYPASSRLS) or a superuser; "
            "nothing was changed."
        )
    if getattr(orig, "sqlstate", None) == "42501" or (orig.args[:1] and orig.args[0] in (1142, 1143, 1227)):
        return (
            f"The role connected to {where} lacks a privilege the migration needs ({text}): connect as the owner "
            "of llm_usage_events (ALTER, CREATE, UPDATE); nothing was changed."
        )
    if isinstance(orig, sqlite3.OperationalError) and "unable to open" in text:
        return (
            f"Cannot open {where} ({text}): check DATABASE_URL and the permissions of the file and of its directory "
            "(SQLite writes a journal beside the file); nothing was changed."
        )
    if orig.args[:1] == (1205,):  # MariaDB/MySQL lock_wait_timeout
        return (
            f"Could not lock llm_usage_events on {where} within lock_timeout={lock_timeout}: another session "
            "holds it (SHOW PROCESSLIST); retry when it ends, or pass -x lock_timeout=30s; nothing was changed."
        )
    if getattr(orig, "sqlstate", None) == "55P03":
        return (
            f"Could not lock llm_usage_events on {where} within lock_timeout={lock_timeout}: another "
            "session holds it (see pg_stat_activity); retry when it ends, or pass -x lock_timeout=30s; "
            "nothing was changed."
        )
    if (
        isinstance(error, exc.OperationalError)
        and getattr(orig, "sqlstate", None) is None
        and (url.get_backend_name() != "sqlite")
    ):
        return f"Cannot connect to {where}: {text}."
    return None


def first_line(error: Exception) -> str:
    """The first line of the driver's own message (SQLAlchemy's wrapper adds the statement and a link)."""
    orig = getattr(error, "orig", error)
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def explained_by_the_environment(error: Exception) -> bool:
    """True when ``explain`` has a sentence for ``error`` that does not depend on what the migration was doing
    (a lock, a read-only file or server, a missing privilege, a full disk): callers let it reach ``explain``."""
    return explain(error, URL.create("sqlite"), busy_timeout_s=0, lock_timeout="0") is not None


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
        yield connection


@contextmanager
def one_sentence_errors(
    url: URL, *, busy_timeout_s: float, lock_timeout: str, writes: bool = True, wait_hint: str | None = WAIT_HINT
) -> Iterator[None]:
    """Turn a failure an operator can act on into a CommandError of one sentence; bugs keep their traceback.
    ``writes=False`` for read-only commands, which have nothing to leave unchanged; ``wait_hint=None`` for
    commands that take no ``-x busy_timeout``."""
    started = time.monotonic()
    try:
        yield
    except CommandError:
        raise
    except Exception as error:
        message = explain(
            error,
            url,
            busy_timeout_s=busy_timeout_s,
            lock_timeout=lock_timeout,
            wait_hint=wait_hint,
            waited_s=time.monotonic() - started,
        )
        if message is None:
            raise
        if not writes:
            message = message.replace("; nothing was changed.", ".")
        elif url.get_backend_name() in ("mysql", "mariadb"):  # DDL already run has committed itself
            message = message.replace(
                "; nothing was changed.",
                "; a schema change already made stays (MariaDB commits DDL at once) and re-running finishes the job.",
            )
        raise CommandError(message) from None
