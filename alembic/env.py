"""Alembic environment: binds the tree to autopack's metadata and sets up the engine.

URL: ``DATABASE_URL`` (default ``sqlite:///autopack.db``). Options (``-x key=value``) are checked by
``autopack.migration_options`` before anything runs: ``busy_timeout`` (seconds SQLite waits for a lock,
default 10), ``lock_timeout`` (PostgreSQL and MariaDB, default 10s) and the revision's own.
"""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, Engine

from autopack.database import Base, database_url
from autopack.migration_env import (
    connected,
    migration_engine,
    one_sentence_errors,
    parse_url,
    require_known_revisions,
    require_sqlite_file,
    sqlite_foreign_key_check,
)
from autopack.migration_options import parse_options, require_mode_fits
from autopack.models import LlmUsageEvent  # noqa: F401  (registers the table on Base.metadata)

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)
options = parse_options(context.get_x_argument(as_dictionary=True))
busy_timeout_s, lock_timeout = options.busy_timeout, options.lock_timeout
target_metadata = Base.metadata


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """What the operator added (tables, indexes, unique constraints) and our side tables are never proposed
    for a drop: only what the models define is compared."""
    return not (reflected and compare_to is None and type_ in ("table", "index", "unique_constraint"))


def configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        compare_server_default=True,
        include_object=include_object,
        **kwargs,
    )


def run(connection: Connection) -> None:
    # SQLite: really transactional with migration_engine's BEGIN; MySQL's DDL commits implicitly whatever we say
    require_mode_fits(options, connection.dialect.name)
    configure(connection=connection, **({"transactional_ddl": True} if connection.dialect.name == "sqlite" else {}))
    require_known_revisions(context.script, context.get_context().get_current_heads())
    with context.begin_transaction():
        context.run_migrations()
        sqlite_foreign_key_check(connection)


def run_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        run(given)
        return
    if isinstance(given, Engine):
        with given.connect() as connection:
            run(connection)
        return
    url = parse_url(database_url())
    command = getattr(config.cmd_opts, "cmd", (None,))[0]
    require_sqlite_file(url, may_create=command is None or command.__name__ == "upgrade")
    engine = migration_engine(url, busy_timeout_s=busy_timeout_s, lock_timeout=lock_timeout)
    try:
        with (
            one_sentence_errors(url, busy_timeout_s=busy_timeout_s, lock_timeout=lock_timeout),
            connected(engine, url) as connection,
        ):
            run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    offline_url = parse_url(database_url())
    require_mode_fits(options, offline_url.get_dialect().name)
    sqlite = offline_url.get_backend_name() == "sqlite"
    configure(url=offline_url, literal_binds=True, **({"transactional_ddl": True} if sqlite else {}))
    if sqlite:  # a rebuild's DROP TABLE must not cascade into child tables; PRAGMA is a no-op inside BEGIN
        context.execute("PRAGMA foreign_keys = OFF")
    with context.begin_transaction():
        context.run_migrations()
else:
    run_online()
