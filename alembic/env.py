"""Alembic environment: Alembic's template, bound to autopack's metadata and its migration connection.

URL: ``DATABASE_URL`` (default ``sqlite:///autopack.db``). The ``-x key=value`` options are parsed and checked
once, here (``autopack.migrations.runtime.options``); the connection set-up (SQLite's BEGIN EXCLUSIVE and foreign
keys off, lock and busy timeouts, one-sentence errors) is ``autopack.migrations.runtime.connection``.
"""

from logging.config import fileConfig

from alembic import context

from autopack.database import Base, database_url
from autopack.migrations.build144 import engines, holdover, where_the_table_is
from autopack.migrations.build144.retired_revisions import refuse_retired_arguments, restamp_retired
from autopack.migrations.build144.usage_table import TABLE
from autopack.migrations.runtime.connection import (
    migration_connection,
    parse_url,
    require_known_revisions,
    sqlite_foreign_key_check,
)
from autopack.migrations.runtime.interrupts import interrupts_in_one_sentence
from autopack.migrations.runtime.migration_lock import one_migrator_at_a_time, say_if_nothing_was_done
from autopack.migrations.runtime.options import OPTIONS_KEY, parse_options, require_mode_fits, version_table
from autopack.models import LlmUsageEvent  # noqa: F401  (registers the table on Base.metadata)

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = Base.metadata
options = config.attributes[OPTIONS_KEY] = parse_options(context.get_x_argument(as_dictionary=True))
refuse_retired_arguments(getattr(config.cmd_opts, "revision", None) or getattr(config.cmd_opts, "revisions", None))


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """What the operator added (tables, indexes, unique constraints) and our side tables are never proposed
    for a drop: only what the models define is compared."""
    return not (reflected and compare_to is None and type_ in ("table", "index", "unique_constraint"))


def configure(dialect: str, **kwargs) -> None:
    strategy = engines.named(dialect)  # BUILD-144's strategy for this engine: what it can do, and how
    require_mode_fits(
        options,
        dialect,
        offline=context.is_offline_mode(),
        command=command_name(),
        online_here=strategy.ONLINE,
        online_downgrade_here=strategy.ONLINE_DOWNGRADE,
    )
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        compare_server_default=True,
        include_object=include_object,
        version_table=version_table(),  # AUTOPACK_VERSION_TABLE: beside another Alembic tree in the same database
        transactional_ddl=strategy.TRANSACTIONAL_DDL_MADE_REAL or None,  # SQLite: made real by migration_connection
        # MariaDB commits DDL at once: a downgrade to base stamps 0001 as BUILD-144's downgrade ends, so that the
        # baseline's refusal after it leaves the revision saying what the table holds
        transaction_per_migration=not strategy.TRANSACTIONAL_DDL and command_name() == "downgrade",
        **kwargs,
    )


def run_migrations_offline() -> None:
    url = parse_url(database_url())
    configure(url.get_dialect().name, url=url, literal_binds=True)
    strategy = engines.named(url.get_dialect().name)
    strategy.script_preamble()  # SQLite: foreign keys off, so a rebuild's DROP TABLE cannot cascade
    with context.begin_transaction():
        strategy.script_timeouts(options)  # PostgreSQL: SET LOCAL lock_timeout, statement_timeout
        context.run_migrations()


def run_migrations_online() -> None:
    leaves = engines.named(parse_url(database_url()).get_dialect().name).stop_leaves(options.online)
    changes = command_name() in ("upgrade", "downgrade", "stamp")  # `alembic current` never waits for the lock
    with (
        interrupts_in_one_sentence(leaves, owns_the_process=config.attributes.get("owns_the_process", True)),
        migration_connection(
            config,
            database_url(),
            options,
            table=TABLE,
            checks=where_the_table_is.CHECKS,
            on_begin=where_the_table_is.rename_to_own_case,
        ) as connection,
    ):
        applied: list[dict] = []
        configure(connection.dialect.name, connection=connection, on_version_apply=lambda **kw: applied.append(kw))
        # the lock, then the revision is read (another migrator may have finished); PostgreSQL's default mode: a
        # transaction lock, in the transaction begin_transaction() adopts
        with one_migrator_at_a_time(connection, options, changes):
            restamp_retired(context.get_context(), upgrading=command_name() == "upgrade")  # an earlier build's stamps
            require_known_revisions(context.script, context.get_context().get_current_heads())
            with context.begin_transaction():
                context.run_migrations()
                sqlite_foreign_key_check(connection)
        if changes and say_if_nothing_was_done(applied, context.get_context().get_current_heads()):
            holdover.say_if_rows_wait(connection)


def command_name() -> str | None:
    """The Alembic command running: from the command line, or set by ``autopack.database.init_db``."""
    command = getattr(config.cmd_opts, "cmd", (None,))[0]
    return command.__name__ if command is not None else config.attributes.get("command")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
