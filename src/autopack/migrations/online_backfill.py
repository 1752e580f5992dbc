"""Online mode (``-x online=true``): the schema change committed at once, then committed batches.

Why it is safe. PostgreSQL: ``ALTER TABLE`` takes ACCESS EXCLUSIVE, which conflicts with every reader and
writer (https://www.postgresql.org/docs/current/sql-altertable.html, and "Table-Level Locks" in
explicit-locking): here it is held only for catalog-only changes (ADD COLUMN with a constant DEFAULT rewrites
nothing since PostgreSQL 11; DROP NOT NULL and SET DEFAULT touch only the catalog), in one short transaction
under ``SET LOCAL lock_timeout`` that gives up and retries rather than queue every session behind it. The same
transaction installs the fill trigger (``fill_trigger``) that applies the backfill rule to every row written by
code that does not know ``total_tokens``. MariaDB: the one ALTER runs with ``ALGORITHM=INPLACE, LOCK=NONE``
(the table is rebuilt while writers go on; the metadata lock at its start and end is waited for at most
``online_lock_timeout``, then retried), and the fill triggers follow. Every earlier row has an id <= the last id
read after that, and the batches fill those, each committing (like the application's own writes).
The version is stamped only after the last batch, the restore and the proof: a run killed midway stays at
0001 and the next run resumes (the rule skips rows already done). The fill trigger stays after the stamp, for
old writers, until ``python -m autopack finish-online`` (``finish_online``).
"""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import sqlalchemy as sa
from alembic import op

from autopack.migrations import fill_trigger, holdover, mariadb_schema_change
from autopack.migrations.batched_backfill import backfill, prove_backfilled
from autopack.migrations.messages import refusal
from autopack.migrations.options import Options, whole_seconds
from autopack.migrations.plan import Plan
from autopack.migrations.progress import while_running
from autopack.migrations.throttle import Throttle
from autopack.migrations.usage_table import DROP_NOT_NULL_CHECKS, TABLE, events

log = logging.getLogger("alembic.build144")

RESUMES = "the revision stays 0001 and re-running the same command resumes"


def online_upgrade(plan: Plan) -> int:
    """Schema change and fill trigger committed at once, backfill in committed batches, restore, proof; the
    trigger stays for old writers until ``finish-online``. Returns the rows the batches filled."""
    context = op.get_context()
    with context.autocommit_block():
        connection = context.connection
        changed = (
            f"{TABLE} was not changed (an unversioned database is now stamped 0001, from which a re-run continues)"
        )
        if plan.dialect == "postgresql":  # one short transaction: catalog-only ALTER, no leftover CHECKs, trigger
            steps = [*alter_statements(plan), DROP_NOT_NULL_CHECKS, *fill_trigger.create_statements(plan.dialect)]
            with_lock_retries(connection, steps, plan.options, changed=changed)
        else:  # MariaDB commits each DDL statement: the online ALTER, then the triggers
            alter = mariadb_schema_change.alter_statement(connection, plan)
            with while_running(log, "ALTER TABLE (online)", plan.options.progress_every):
                with_lock_retries(connection, [alter] if alter else [], plan.options, changed=changed)
            with_lock_retries(connection, fill_trigger.create_statements(plan.dialect), plan.options, RESUMES)
        log.info("[1/3] Schema (online, committed): %s", plan.describe())
        # rows written from here on get their total from the trigger; every earlier row has an id <= last
        first, last = connection.execute(sa.select(sa.func.min(events.c.id), sa.func.max(events.c.id))).one()
        # a failure or a stop from here on leaves the fill trigger in place: old writers' rows stay right until
        # the re-run (had it gone, a split they update on a row already filled would leave its total stale)
        throttle = Throttle(plan.options, connection)  # pauses, batch size, replica lag, Ctrl-C between batches
        with throttle.stopping_on_signals(), short_row_lock_waits(connection, plan.options):
            execute = retrying_batches(connection, plan.options)
            filled = backfill(execute, first, last, plan.rows, plan.options, throttle)
            throttle.stop_if_asked()  # a stop asked during the last batch: still stopped, before the stamp
        if plan.has_holdover:
            holdover.restore(connection)
        prove_backfilled(connection, after=RESUMES)
    log.info(
        "      the fill trigger stays, so that instances still running pre-BUILD-144 code write right totals: once "
        "every instance runs BUILD-144 code, run 'python -m autopack finish-online'"
    )
    return filled


def drop_leftovers(bind: sa.Connection) -> None:
    """The default mode, after an interrupted online run: its fill trigger, or an online downgrade's CHECKs (which
    would refuse the NULL splits the restore puts back), go in the same transaction."""
    fill_trigger.drop(bind)
    bind.exec_driver_sql(DROP_NOT_NULL_CHECKS)


def alter_statements(plan: Plan) -> list[str]:
    """The catalog-only ALTER TABLE of the plan, as one statement (none when there is nothing to change)."""
    alter = ["ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0"] if plan.add_total else []
    alter += ["ALTER COLUMN total_tokens SET DEFAULT 0"] if plan.add_default else []
    alter += [f"ALTER COLUMN {split} DROP NOT NULL" for split in plan.relax]
    return [f"ALTER TABLE {TABLE} {', '.join(alter)}"] if alter else []


def with_lock_retries(connection, statements: list, options: Options, changed: str = "nothing was changed"):
    """Run ``statements`` waiting at most ``online_lock_timeout`` for each lock, so readers and writers never queue
    behind them for long; retry a few times, then fail with one sentence. PostgreSQL: in one short transaction
    (``SET LOCAL lock_timeout``); MariaDB, which commits each DDL statement: under ``lock_wait_timeout`` (whole
    seconds), the session's own timeout set back after."""
    postgresql = connection.dialect.name == "postgresql"
    short, usual = whole_seconds(options.online_lock_timeout), whole_seconds(options.lock_timeout)
    for attempt in range(1, options.online_retries + 1):
        try:
            if postgresql:
                connection.exec_driver_sql("BEGIN")
                connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{options.online_lock_timeout}'")
            else:
                connection.exec_driver_sql(f"SET SESSION lock_wait_timeout = {short}")
            for statement in statements:  # SQL, or a step that runs its own statements on the connection
                connection.exec_driver_sql(statement) if isinstance(statement, str) else statement(connection)
            connection.exec_driver_sql("COMMIT")
            return
        except sa.exc.OperationalError as error:
            connection.exec_driver_sql("ROLLBACK")
            if not lock_not_granted(error):
                raise
            log.info("      lock not granted within %s (attempt %d), retrying", waited(connection, options), attempt)
            time.sleep(min(0.2 * attempt, 2.0))
        finally:
            if not postgresql:
                connection.exec_driver_sql(f"SET SESSION lock_wait_timeout = {usual}")
    raise refusal(
        "online_lock_retries_spent",
        table=TABLE,
        waited=waited(connection, options),
        attempts=options.online_retries,
        look=where_to_look(connection),
        changed=changed,
    )


def where_to_look(connection) -> str:
    """Where the operator sees the session that holds the lock."""
    return "see pg_stat_activity" if connection.dialect.name == "postgresql" else "see SHOW PROCESSLIST"


def waited(connection, options: Options) -> str:
    """How long online_lock_timeout makes each wait: MariaDB's lock timeouts take whole seconds (at least 1)."""
    if connection.dialect.name == "postgresql":
        return options.online_lock_timeout
    return f"{whole_seconds(options.online_lock_timeout)}s"


def lock_not_granted(error: sa.exc.OperationalError) -> bool:
    """PostgreSQL's lock_timeout (55P03) or MariaDB's lock_wait_timeout (1205)."""
    return getattr(error.orig, "sqlstate", None) == "55P03" or error.orig.args[:1] == (1205,)


@contextmanager
def short_row_lock_waits(connection, options: Options) -> Iterator[None]:
    """While the batches run, a row an application transaction holds is waited for at most
    ``online_lock_timeout`` (then the batch is retried): a batch waiting on one row holds the rest of its range,
    and the application's writers to them would wait as long (pt-online-schema-change waits 1 s per chunk)."""

    def wait_at_most(duration: str) -> None:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SET lock_timeout = '{duration}'")
        else:
            connection.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {whole_seconds(duration)}")

    wait_at_most(options.online_lock_timeout)
    try:
        yield
    finally:
        wait_at_most(options.lock_timeout)


def retrying_batches(
    connection, options: Options, resumes: str = RESUMES
) -> Callable[[sa.Executable, dict], sa.CursorResult]:
    """``connection.execute`` for the batches, each its own committed statement: one that meets a deadlock or a
    row lock held past ``online_lock_timeout`` by the application is run again (``online_retries`` times), as
    gh-ost and pt-online-schema-change retry a chunk."""

    def execute(statement: sa.Executable, parameters: dict) -> sa.CursorResult:
        for attempt in range(1, options.online_retries + 1):
            try:
                return connection.execute(statement, parameters)
            except sa.exc.OperationalError as error:
                if not (lock_not_granted(error) or deadlocked(error)):
                    raise  # (in autocommit: the failed statement left no transaction to roll back)
                met = first_words(error)
                if attempt < options.online_retries:
                    log.info("      batch met %s (attempt %d), retrying", met, attempt)
                    time.sleep(min(0.2 * attempt, 2.0))
        raise refusal(
            "online_batch_retries_spent",
            met=met,
            attempts=options.online_retries,
            waited=waited(connection, options),
            table=TABLE,
            look=where_to_look(connection),
            resumes=resumes,
        )

    return execute


def deadlocked(error: sa.exc.OperationalError) -> bool:
    """PostgreSQL's deadlock_detected (40P01) or MariaDB's ER_LOCK_DEADLOCK (1213)."""
    return getattr(error.orig, "sqlstate", None) == "40P01" or error.orig.args[:1] == (1213,)


def first_words(error: sa.exc.OperationalError) -> str:
    return "a deadlock" if deadlocked(error) else "a row lock held past online_lock_timeout"


def committed_batches(
    connection, options: Options, resumes: str
) -> tuple[Callable[[sa.Executable, dict], sa.CursorResult], AbstractContextManager[None]]:
    """How a command that commits batch by batch (finish-online, repair-totals) runs each batch, and what it holds
    while they run: on SQLite each batch committed as it goes; on a server (autocommit) each batch retried past a
    row the application holds, waiting for it at most ``online_lock_timeout``."""
    if connection.dialect.name != "sqlite":
        return retrying_batches(connection, options, resumes=resumes), short_row_lock_waits(connection, options)

    def committed(statement: sa.Executable, parameters: dict) -> sa.CursorResult:
        result = connection.execute(statement, parameters)
        connection.commit()
        return result

    return committed, nullcontext()
