"""Connection set-up for the migrations: one engine per command, set up so every engine's DDL is safe.

SQLite: the pysqlite driver emits no BEGIN before DDL, so a batch rebuild that fails halfway would leave
``_alembic_tmp_*`` behind. SQLAlchemy's documented recipe ("Serializable isolation / Savepoints /
Transactional DDL" in its SQLite dialect notes) fixes it: autocommit at the driver level, our own
``BEGIN EXCLUSIVE`` on the engine's ``begin`` event, and env.py passes ``transactional_ddl=True``. Foreign keys
are switched off on connect, before any transaction (``PRAGMA foreign_keys`` is a no-op inside one), so a
rebuild's ``DROP TABLE`` cannot cascade; ``sqlite_foreign_key_check`` proves nothing dangles before commit.

PostgreSQL: every statement runs under ``lock_timeout`` (a migration waiting behind a long transaction gives
up with a clear message instead of freezing every reader queued behind it) and ``row_security = off`` (a
role that row-level security would filter is an error, never a partial view), each set inside the transaction
that relies on it, so that it holds through a transaction pooler too (``postgres_engine``). MariaDB/MySQL: strict
mode (an overflow is an error, not a clamped number) and ``lock_wait_timeout`` instead of the default of a day.

What an operator reads when this fails is in ``errors``.
"""

import logging
import os
import re
import shlex
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
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

from autopack.database import MARIADB_STRICT, with_driver
from autopack.migrations.runtime.errors import first_line, one_sentence_errors, shown
from autopack.migrations.runtime.messages import refusal, sentence
from autopack.migrations.runtime.options import Options, whole_seconds

DEFAULT_BUSY_TIMEOUT_S = Options.busy_timeout
DEFAULT_LOCK_TIMEOUT = Options.lock_timeout
DEFAULT_CONNECT_TIMEOUT_S = 10
CHANGES = "autopack_changes_the_database"  # connection.info flag: the command may change the database
log = logging.getLogger("alembic.build144")
POOLER_PROBE_S = 3.0


def parse_url(raw: str) -> URL:
    """Parse ``raw`` or fail with one sentence; the text of a bad URL is never echoed (it may hold a password)."""
    if not raw.strip():
        raise refusal("url_empty")
    try:
        url = with_driver(make_url(raw))
        dialect = url.get_dialect()
    except (exc.ArgumentError, exc.NoSuchModuleError, ValueError) as e:
        raise refusal("url_not_usable", kind=type(e).__name__) from None
    if url.host and "@" in url.host:
        raise refusal("url_host_has_at")
    uri = str(url.query.get("uri", "")).lower() in ("true", "1")
    if url.get_backend_name() == "sqlite" and uri and not (url.database or "").startswith("file:"):
        raise refusal("sqlite_uri_without_file")
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise refusal("driver_not_installed", driver=repr(url.drivername), module=e.name or "it needs") from None
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
            raise refusal("sqlite_file_on_a_host", authority=repr(authority))
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
        raise refusal("no_sqlite_database", path=path.resolve())
    if not path.resolve().parent.is_dir():
        raise refusal("no_directory_for_sqlite", path=path.resolve(), directory=path.resolve().parent)


def migration_engine(
    url: URL,
    *,
    busy_timeout_s: float,
    lock_timeout: str,
    statement_timeout: str | None = None,
    on_begin: Callable[[Connection], None] | None = None,
) -> Engine:
    """An engine for running migrations, set up for atomic DDL on every engine; a URL option the driver cannot
    read (``connect_timeout=abc``) is one sentence."""
    try:
        return _migration_engine(url, busy_timeout_s, lock_timeout, statement_timeout, on_begin)
    except (ValueError, TypeError) as error:
        raise refusal("driver_option_unusable", driver=url.drivername, error=error) from None


def _migration_engine(
    url: URL, busy_timeout_s: float, lock_timeout: str, statement_timeout: str | None, on_begin: Callable | None
) -> Engine:
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
            if on_begin is not None and connection.info.get(CHANGES):  # first in the transaction of a change
                on_begin(connection)

        return engine
    if backend == "postgresql":
        return postgres_engine(url, transaction_settings(lock_timeout, statement_timeout))
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": DEFAULT_CONNECT_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _mysql_connect(dbapi_connection, _record: object) -> None:
        # strict: an overflow is an error, never a clamped number; a metadata lock (lock_wait_timeout, a day by
        # default) and a row lock (innodb_lock_wait_timeout, 50 s) are waited for as long as lock_timeout, in whole
        # seconds (MariaDB takes no fractions)
        seconds = whole_seconds(lock_timeout)
        with dbapi_connection.cursor() as cursor:
            cursor.execute(MARIADB_STRICT)
            cursor.execute(f"SET SESSION lock_wait_timeout = {seconds}, innodb_lock_wait_timeout = {seconds}")

    return engine


def transaction_settings(lock_timeout: str, statement_timeout: str | None) -> dict[str, str]:
    """What every PostgreSQL transaction of a migration relies on: a bounded lock wait; every row seen (a role that
    row-level security would filter is an error, never a partial view); no idle-in-transaction cut while it waits
    for a replica; and ``statement_timeout`` when asked for."""
    settings = {"lock_timeout": lock_timeout, "row_security": "off", "idle_in_transaction_session_timeout": "0"}
    if statement_timeout:
        settings["statement_timeout"] = statement_timeout
    return settings


def set_config(settings: dict[str, str], local: bool) -> str:
    """One statement setting each of ``settings`` for the transaction (``local``) or the session."""
    calls = ", ".join(f"set_config('{name}', '{value}', {str(local).lower()})" for name, value in settings.items())
    return f"SELECT {calls}"


def postgres_engine(url: URL, settings: dict[str, str]) -> Engine:
    """PostgreSQL as a pooler may hand it over (PgBouncer: a transaction pooler gives each transaction whichever
    server connection is free, and rejects or silently drops libpq's startup ``options``). So nothing relies on the
    session: each transaction sets what it relies on itself (``set_config(..., true)``, as ``SET LOCAL``), at READ
    COMMITTED whatever the role's ``default_transaction_isolation`` (psycopg says so in its BEGIN), and no statement
    is prepared (psycopg prepares one on its fifth run, which the next server connection does not know). The URL's
    own ``options`` (a search_path, say) are passed on as they are. Autocommit work (the online mode, which refuses a
    transaction pooler) sets the session instead: ``session_settings``."""
    engine = create_engine(
        url,
        poolclass=NullPool,
        isolation_level="READ COMMITTED",
        connect_args={"connect_timeout": DEFAULT_CONNECT_TIMEOUT_S, "prepare_threshold": None},
    )
    statement = set_config(settings, local=True)

    @event.listens_for(engine, "begin")
    def _postgres_begin(connection: Connection) -> None:
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            connection.exec_driver_sql(statement)

    return engine


@contextmanager
def settings_for_the_session(connection: Connection, settings: dict[str, str]) -> Iterator[None]:
    """``session_settings`` for the run, then each setting back to the role's or database's own (``RESET``), so
    that a session pooler without ``server_reset_query`` hands nothing of the run to its next client."""
    session_settings(connection, settings)
    try:
        yield
    finally:
        reset_session_settings(connection, settings)


def reset_session_settings(connection: Connection, settings: dict[str, str]) -> None:
    if connection.dialect.name != "postgresql":
        return
    try:
        connection.rollback()
        names = [*settings, "default_transaction_isolation"]
        connection.exec_driver_sql("; ".join(f"RESET {name}" for name in names))
        connection.commit()
    except exc.DBAPIError:  # a broken connection: its session, and the settings with it, are gone
        pass


def session_settings(connection: Connection, settings: dict[str, str]) -> None:
    """The online mode and finish-online, which run in autocommit: the same settings for the whole session, and
    READ COMMITTED for every transaction they begin (a role's 'serializable' default would fail their batches on
    every concurrent write). Only after ``refuse_transaction_pooler``: on a direct or session-pooled connection the
    session ends with the run (PgBouncer's session mode resets the server connection with DISCARD ALL)."""
    if connection.dialect.name != "postgresql":
        return
    settings = {**settings, "default_transaction_isolation": "read committed"}
    connection.exec_driver_sql(set_config(settings, local=False))
    connection.commit()


def transaction_pooled(connection: Connection) -> bool | None:
    """Whether this client connection's transactions may run on other server connections (a transaction pooler),
    or None when that cannot be told. A direct or session-pooled client keeps its backend for good. A transaction
    pooler hands the backend this client just released to the next client that asks: at once (PgBouncer's default,
    most recently used first) or within a few transactions (``server_round_robin``, oldest idle first). A second
    client that waits ``POOLER_PROBE_S`` for a backend (every server connection busy) leaves it untold."""
    pid = "SELECT pg_backend_pid()"
    first = connection.exec_driver_sql(pid).scalar()
    connection.commit()
    seen: list[int] = []
    got, finished = threading.Event(), threading.Event()

    def probe() -> None:  # a few transactions of a second client: does one of them get this client's backend?
        try:
            with connection.engine.connect() as other:
                for _ in range(8):
                    seen.append(other.exec_driver_sql(pid).scalar())
                    got.set()
                    other.commit()
                    if seen[-1] == first:
                        break
        except exc.DBAPIError:
            pass
        finally:
            got.set()
            finished.set()

    threading.Thread(target=probe, daemon=True).start()  # a probe still waiting is left behind, never waited for
    if not got.wait(POOLER_PROBE_S) or not seen:
        return None
    finished.wait(POOLER_PROBE_S)
    if first in seen:
        return True
    for _ in range(3):  # handed out in turn, this client's own next transactions get other backends
        again = connection.exec_driver_sql(pid).scalar()
        connection.commit()
        if again != first:
            return True
    return False


PG_SESSION = "SELECT current_setting('transaction_read_only'), current_setting('session_replication_role')"
# a session made read-only (SET SESSION TRANSACTION READ ONLY, in init_command say); tx_read_only before MariaDB 11.1
MARIADB_SESSION_READ_ONLY = "SHOW SESSION VARIABLES WHERE Variable_name IN ('tx_read_only', 'transaction_read_only')"
MARIADB_READ_ONLY_SESSION = "the session's transaction_read_only is on"


def mariadb_session_read_only(connection: Connection) -> bool:
    return any(value in ("ON", "1") for _, value in connection.exec_driver_sql(MARIADB_SESSION_READ_ONLY).all())


def require_a_writing_session(connection: Connection, url: URL) -> None:
    """Defaults a role or database may carry that the migration cannot run under, refused before any change (the
    others, isolation and timeouts, are set for each transaction: ``transaction_settings``)."""
    if connection.dialect.name in ("mysql", "mariadb"):  # before any DDL, which MariaDB would commit
        read_only = mariadb_session_read_only(connection)
        connection.rollback()
        if read_only:
            raise refusal("server_read_only", where=shown(url), text=MARIADB_READ_ONLY_SESSION)
        return
    if connection.dialect.name != "postgresql":
        return
    read_only, replication_role = connection.exec_driver_sql(PG_SESSION).one()
    connection.rollback()
    if read_only == "on":
        raise refusal("session_read_only", where=shown(url))
    if replication_role != "origin":
        raise refusal("session_replication_role", role=replication_role, where=shown(url))


def refuse_transaction_pooler(connection: Connection, url: URL, what: str) -> None:
    """``what`` spans many transactions and holds a session lock: refused through a transaction pooler, before any
    change, in one sentence naming the pooler and the fix."""
    if connection.dialect.name != "postgresql":
        return
    pooled = transaction_pooled(connection)
    if pooled is None:
        raise refusal("pooler_unknown", where=shown(url), waited=f"{POOLER_PROBE_S:g}", what=what)
    if pooled:
        raise refusal("transaction_pooler", where=shown(url), what=what)


def sqlite_foreign_key_check(connection: Connection) -> None:
    """Fail (and so roll back) if the migration left any foreign key pointing nowhere."""
    if connection.dialect.name != "sqlite":
        return
    problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if problems:
        tables = sorted({row[0] for row in problems})
        raise refusal("foreign_key_check_failed", rows=len(problems), tables=", ".join(tables))


def require_known_revisions(script: ScriptDirectory, heads: tuple[str, ...]) -> None:
    """Refuse a database stamped with a revision this tree does not have (a newer or foreign tree migrated it)."""
    for head in heads:
        try:
            script.get_revision(head)
        except Exception:
            raise refusal("unknown_revision", head=repr(head)) from None


def why_no_connection(url: URL, error: BaseException) -> str:
    """The sentence for a connection that failed: a pooler refusing a startup parameter and a SQL_ASCII database are
    named as such (the server is up and the URL right), anything else as a connection problem."""
    reason = first_line(error)
    refused = re.search(r"unsupported startup parameter: (\w+)", reason)
    if refused:
        return sentence("startup_parameter_refused", where=shown(url), parameter=refused[1])
    if "canceling statement due to statement timeout" in reason:
        return sentence("statement_timeout_on_connect", where=shown(url), reason=reason)
    if "statement pooling mode" in reason:
        return sentence("statement_pooler", where=shown(url))
    if url.get_backend_name() == "postgresql" and server_encoding(url) == "SQL_ASCII":
        return sentence("sql_ascii", where=shown(url))
    return sentence("cannot_connect", where=shown(url), reason=reason)


def server_encoding(url: URL) -> str | None:
    """The database's encoding as a bare psycopg connection reads it, or None when none can be had."""
    try:
        import psycopg

        with psycopg.connect(url.set(drivername="postgresql").render_as_string(False), connect_timeout=5) as raw:
            value = raw.execute("SHOW server_encoding").fetchone()[0]
            return value.decode() if isinstance(value, bytes) else value
    except Exception:  # the first error is the one to report
        return None


@contextmanager
def connected(
    engine: Engine, url: URL, checks: Sequence[Callable[[Connection, URL], None]] = ()
) -> Iterator[Connection]:
    """``engine.connect()``, where any failure to get a connection (server down, wrong password, unknown
    database) is one sentence naming the server, never the password."""
    try:
        connection = engine.connect()
    except (exc.DBAPIError, OSError, ValueError, TypeError, AttributeError) as error:
        # the last four: a driver option in the URL it cannot use (ssl_ca=/missing, charset=bogus, ...)
        if url.get_backend_name() == "sqlite":
            raise
        raise CommandError(why_no_connection(url, error)) from None
    with connection:
        if connection.dialect.name in ("mysql", "mariadb"):  # GET_LOCK, information_schema: all per database
            database = connection.exec_driver_sql("SELECT DATABASE()").scalar()
            connection.rollback()
            if database is None:
                raise refusal("no_database_named", where=shown(url))
        if connection.dialect.name == "postgresql":
            require_url_options_applied(connection, url)
        for check in checks:  # what the caller's tables need of the session (a name in reach, one spelling)
            check(connection, url)
        connection.rollback()
        yield connection


# settings the tree sets in each transaction itself (transaction_settings): not the URL's to prove
OURS = ("lock_timeout", "row_security", "idle_in_transaction_session_timeout", "statement_timeout")


def url_settings(options: str) -> dict[str, str]:
    """The ``-c name=value`` / ``--name=value`` settings of a libpq ``options`` string."""
    tokens, found = shlex.split(options), {}
    for i, token in enumerate(tokens):
        if token == "-c" and i + 1 < len(tokens):
            token = "-c" + tokens[i + 1]
        if token.startswith(("-c", "--")) and "=" in token:
            name, value = token.removeprefix("--").removeprefix("-c").split("=", 1)
            found[name.strip().replace("-", "_")] = value
    return found


def require_url_options_applied(connection: Connection, url: URL) -> None:
    """The URL's own ``options`` (a search_path, say) in effect, or one sentence: PgBouncer with
    ``ignore_startup_parameters = options`` drops them unread, and the migration would look for the table, and
    create one, elsewhere."""
    options = url.query.get("options")
    if not isinstance(options, str):
        return
    for name, value in url_settings(options).items():
        if name in OURS:
            continue
        got = connection.exec_driver_sql("SELECT current_setting(%(name)s, true)", {"name": name}).scalar()
        if got is not None and got.replace(" ", "").replace('"', "").lower() != value.replace(" ", "").lower():
            connection.rollback()
            raise refusal("url_options_dropped", name=name, value=value, got=got)
    connection.rollback()


@contextmanager
def migration_connection(
    config: Config,
    raw_url: str,
    options: Options,
    *,
    table: str,
    checks: Sequence[Callable[[Connection, URL], None]] = (),
    on_begin: Callable[[Connection], None] | None = None,
) -> Iterator[Connection]:
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
    engine = migration_engine(url, **timeouts, statement_timeout=options.statement_timeout, on_begin=on_begin)
    try:
        with one_sentence_errors(url, **timeouts, table=table), connected(engine, url, checks) as connection:
            if command is None or command.__name__ in ("upgrade", "downgrade", "stamp"):
                require_a_writing_session(connection, url)
                connection.info[CHANGES] = True
            if not options.online:
                yield connection
                return
            refuse_transaction_pooler(connection, url, "-x online=true")
            with settings_for_the_session(
                connection, transaction_settings(options.lock_timeout, options.statement_timeout)
            ):
                yield connection
    finally:
        engine.dispose()
