"""Databases for the tests: a fresh SQLite file, and a fresh database on every PostgreSQL server named.

PostgreSQL servers come from ``AUTOPACK_TEST_POSTGRES``: a space-separated list of server URLs
(``postgresql://postgres@127.0.0.1:5432/postgres``) and/or the word ``pgserver`` (a throwaway
PostgreSQL 16 started from the binaries the ``pgserver`` package bundles). Default: ``pgserver``, so
a fresh machine with nothing but pip runs the PostgreSQL tests. MariaDB/MySQL servers come from
``AUTOPACK_TEST_MYSQL`` (default ``mysql://root@127.0.0.1:3306``). When no server can be had those
tests skip with a reason, except under ``CI=true``, where they fail.
"""

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url

from autopack.database import make_engine
from autopack.migrations.runtime.connection import migration_engine
from support import (
    BACKENDS,
    MYSQL_BACKENDS,
    MYSQL_SERVERS,
    PG_SERVERS,
    POSTGRES_BACKENDS,
    alembic,
    default_signal_dispositions,
)

ROOT = Path(__file__).resolve().parents[1]
default_signal_dispositions()  # in the main process and in each xdist worker: the processes tests signal inherit it
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str, how: str = "pip install pgserver, or set AUTOPACK_TEST_POSTGRES to a server URL") -> None:
    if IN_CI:
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(f"{reason} ({how})")


def start_pgserver(tmp_path_factory: pytest.TempPathFactory, attempts: int = 3):
    """A pgserver PostgreSQL, or the reason none would start. A start can time out on a loaded machine (the whole
    session's tests on that server would then error): it is tried again in a fresh folder before giving up."""
    reason = ""
    for _ in range(attempts):
        try:
            import pgserver

            return pgserver.get_server(tmp_path_factory.mktemp("pgserver"), cleanup_mode="stop")
        except ImportError as e:
            return f"pgserver could not start a PostgreSQL server: {type(e).__name__}: {e}"
        except Exception as e:  # a server that will not start: one reason, not a traceback
            reason = f"pgserver could not start a PostgreSQL server ({attempts} attempts): {type(e).__name__}: {e}"
            time.sleep(2)
    return reason


@pytest.fixture(scope="session")
def pg_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, URL | str]]:
    """Server label -> admin URL, started lazily; a server that cannot be had maps to the reason why."""
    servers: dict[str, URL | str] = {}
    started = []
    for spec, backend in zip(PG_SERVERS, POSTGRES_BACKENDS, strict=True):
        if spec != "pgserver":
            servers[backend] = make_url(spec)
            continue
        server = start_pgserver(tmp_path_factory)
        if isinstance(server, str):
            servers[backend] = server
            continue
        started.append(server)
        servers[backend] = make_url(server.get_uri())
    yield servers
    for server in started:
        server.cleanup()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def new_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[], URL]]:
    """A factory of new, empty databases on ``backend``, all dropped at teardown (SQLite: files not made yet)."""
    janitors: list[DatabaseJanitor] = []
    mysql_databases: list[URL] = []

    def make() -> URL:
        name = f"autopack_test_{uuid.uuid4().hex[:12]}"
        if backend == "sqlite":
            return make_url(f"sqlite:///{tmp_path / name}.db")
        if backend in MYSQL_BACKENDS:
            server = make_url(MYSQL_SERVERS[MYSQL_BACKENDS.index(backend)]).set(drivername="mysql+pymysql")
            try:
                with create_engine(server.set(database=None)).connect() as admin:
                    admin.exec_driver_sql(f"CREATE DATABASE {name}")
            except Exception as e:
                unavailable(
                    f"cannot reach MariaDB/MySQL at {server.render_as_string(hide_password=True)}: {type(e).__name__}",
                    "set AUTOPACK_TEST_MYSQL to a server URL, e.g. mysql://root@127.0.0.1:3306",
                )
            mysql_databases.append(server.set(database=name))
            return server.set(database=name)
        server = request.getfixturevalue("pg_servers")[backend]
        if isinstance(server, str):
            unavailable(server)
        janitor = DatabaseJanitor(
            user=server.username or "postgres",
            password=server.password,
            host=server.host or server.query.get("host"),
            port=server.port or 5432,
            dbname=name,
            connection_timeout=5,
        )
        try:
            janitor.init()
        except Exception as e:
            unavailable(f"cannot reach PostgreSQL at {server.render_as_string(hide_password=True)}: {e}")
        janitors.append(janitor)
        return server.set(drivername="postgresql+psycopg", database=name)

    yield make
    for janitor in janitors:
        janitor.drop()
    for url in mysql_databases:
        engine = create_engine(url.set(database=None))
        with engine.connect() as admin:
            admin.exec_driver_sql(f"DROP DATABASE IF EXISTS {url.database}")
        engine.dispose()


@pytest.fixture
def db_url(new_database: Callable[[], URL]) -> URL:
    """A URL to a new, empty database on ``backend`` (SQLite: the file does not exist yet)."""
    return new_database()


@pytest.fixture
def alembic_config() -> dict:
    return {"file": str(ROOT / "alembic.ini")}


@pytest.fixture
def alembic_engine(db_url: URL) -> Iterator[Engine]:
    """pytest-alembic's engine: the same engine setup env.py uses for real runs."""
    engine = migration_engine(db_url, busy_timeout_s=5, lock_timeout="10s")
    yield engine
    engine.dispose()


@pytest.fixture
def engine(db_url: URL) -> Iterator[Engine]:
    """An engine on a database the real ``alembic upgrade head`` made (the dashboard tests' starting point)."""
    alembic(db_url, "upgrade", "head")
    engine = make_engine(db_url)  # the application's own: its session settings are part of what is tested
    yield engine
    engine.dispose()
