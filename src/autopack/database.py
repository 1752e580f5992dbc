"""Database wiring: the declarative ``Base``, ``engine``, ``SessionLocal``, ``get_db`` and ``init_db``.

The URL comes from ``DATABASE_URL`` (default ``sqlite:///autopack.db``), the same rule the Alembic
``env.py`` follows, so the application and its migrations always talk to the same database.
``engine`` and ``SessionLocal`` are made on first use, so importing the models (as env.py does) neither
parses the URL nor builds an engine.
"""

import os
import re
from collections.abc import Iterator
from functools import cache

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

DEFAULT_DATABASE_URL = "sqlite:///autopack.db"

# Every constraint gets a predictable name: SQLite batch migrations can only alter named constraints.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def database_url() -> str:
    """The configured database URL: ``DATABASE_URL`` if set, else the embedded default. Set but empty (a secret that
    resolved to nothing) is returned as it is, for the caller to refuse: never a new local SQLite file."""
    return os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)


metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Drivers this project installs, for URLs that name only the engine (as the runbook's do).
DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}


VERSION_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def version_table() -> str:
    """The table this tree stamps its revision in: ``AUTOPACK_VERSION_TABLE``, default Alembic's ``alembic_version``
    (existing databases keep it). Another Alembic tree in the same database (upstream Autopack's own, say) keeps
    ``alembic_version``; this tree then needs a table of its own."""
    name = os.environ.get("AUTOPACK_VERSION_TABLE", "").strip() or "alembic_version"
    if not VERSION_TABLE_NAME.fullmatch(name):
        raise ValueError(
            f"AUTOPACK_VERSION_TABLE={name!r} is not a table name (letters, digits and _, at most 63, not starting "
            "with a digit): fix it or unset it"
        )
    return name


def with_driver(url: URL) -> URL:
    """``postgresql://`` means psycopg 3 and ``mysql://`` / ``mariadb://`` PyMySQL here (SQLAlchemy's own
    defaults, psycopg2 and mysqlclient, are not installed)."""
    return url.set(drivername=DEFAULT_DRIVERS.get(url.drivername, url.drivername))


class Base(DeclarativeBase):
    metadata = metadata


# MariaDB as the migrations run it: a value that does not fit is an error, never silently cut or clamped
MARIADB_STRICT = "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'STRICT_ALL_TABLES')"


@cache
def _engine() -> Engine:
    url = database_url()
    if not url.strip():  # start-up refuses it; where start-up did not run, each request says so in one sentence
        from sqlalchemy.exc import ArgumentError

        from autopack.migrations.runtime.messages import sentence

        raise ArgumentError(sentence("url_empty"))
    return make_engine(url)


def make_engine(database: str | URL) -> Engine:
    """The application's engine for ``database``, as ``engine`` is made for ``DATABASE_URL``: psycopg or PyMySQL,
    every PostgreSQL transaction in UTC, MariaDB sessions strict and in UTC."""
    url = with_driver(make_url(database))
    if url.get_backend_name() == "postgresql":
        return _postgres_engine(url)
    engine = create_engine(url)
    if url.get_backend_name() in ("mysql", "mariadb"):

        @event.listens_for(engine, "connect")
        def _mariadb_session(dbapi_connection, _record: object) -> None:
            # strict, as the migrations run; UTC, so a TIMESTAMP created_at is stored and read as UTC
            with dbapi_connection.cursor() as cursor:
                cursor.execute(MARIADB_STRICT)
                cursor.execute("SET SESSION time_zone = '+00:00'")

    return engine


def _postgres_engine(url: URL) -> Engine:
    # psycopg prepares a statement on its fifth run: through a transaction pooler (PgBouncer) the next transaction's
    # server connection does not know it, or already has one of the name; prepare nothing
    engine = create_engine(url, connect_args={"prepare_threshold": None})

    @event.listens_for(engine, "begin")
    def _utc(connection: Connection) -> None:
        # every transaction in UTC, whatever the database's or role's TimeZone: a timestamptz created_at is written
        # and compared as the instant it is (set per transaction, as SET LOCAL, so a transaction pooler keeps it)
        connection.exec_driver_sql("SELECT set_config('TimeZone', 'UTC', true)")

    return engine


@cache
def _session_factory() -> sessionmaker[Session]:
    return sessionmaker(bind=_engine(), autoflush=False, expire_on_commit=False)


def __getattr__(name: str) -> object:
    """``engine`` and ``SessionLocal``, built on first access (PEP 562)."""
    if name == "engine":
        return _engine()
    if name == "SessionLocal":
        return _session_factory()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_db() -> Iterator[Session]:
    """Yield a session and close it afterwards (a FastAPI dependency)."""
    db = _session_factory()()
    try:
        yield db
    finally:
        db.close()


def init_db() -> None:
    """Bring the database named by ``DATABASE_URL`` to head with this tree's migrations, as Autopack's start-up does.

    The same code path as ``alembic upgrade head`` (its report goes to the ``alembic.build144`` logger; the
    application's logging configuration is left alone), never ``create_all()`` on a database Alembic owns. Several
    processes calling it at once are safe: env.py holds a migration lock for the whole run (PostgreSQL advisory
    lock, MariaDB ``GET_LOCK``, SQLite's exclusive transaction), and a process that waited for it finds head and
    does nothing. A migration that cannot run raises ``alembic.util.CommandError`` with one sentence; Ctrl-C or
    SIGTERM (the application's handlers are left in place) stays a ``KeyboardInterrupt`` saying what the stop left.
    It may be called from any thread (``asyncio.to_thread(init_db)`` included).
    """
    from alembic import command

    from autopack.migrations.tree_config import the_tree_config

    config = the_tree_config("init_db()")  # the checkout's alembic.ini, or the tree the installed wheel carries
    config.attributes["configure_logger"] = False
    config.attributes["command"] = "upgrade"
    config.attributes["owns_the_process"] = False  # the application's signal handlers stay; any thread may call it
    command.upgrade(config, "head")
