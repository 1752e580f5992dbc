"""Lock waits bounded and retried, as gh-ost and pt-online-schema-change retry a chunk: DDL that waits at most
``online_lock_timeout`` for its lock and is tried again, and batches that meet a row lock or a deadlock run again.
Each caller names the table (``on``) and what a run that gives up leaves (``changed``, ``resumes``)."""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import sqlalchemy as sa
from pymysql.constants import ER

from autopack.migrations.runtime.engine_traits import traits_of
from autopack.migrations.runtime.errors import mysql_error
from autopack.migrations.runtime.messages import NOTHING_CHANGED, refusal
from autopack.migrations.runtime.options import Options

log = logging.getLogger("alembic.build144")


def with_lock_retries(connection, statements: list, options: Options, changed: str = NOTHING_CHANGED, *, on: str):
    """Run ``statements`` waiting at most ``online_lock_timeout`` for each lock, so readers and writers never queue
    behind them for long; retry a few times, then fail with one sentence naming the table ``on``. PostgreSQL: in one
    short transaction (``SET LOCAL lock_timeout``); MariaDB, which commits each DDL statement: under
    ``lock_wait_timeout`` (whole seconds), the session's own timeout set back after."""
    traits = traits_of(connection.dialect)
    bounded = traits.short_lock_wait(options.online_lock_timeout)
    for attempt in range(1, options.online_retries + 1):
        try:
            for statement in bounded:
                connection.exec_driver_sql(statement)
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
            usual = traits.session_lock_wait(options.lock_timeout)
            if usual:
                connection.exec_driver_sql(usual)
    raise refusal(
        "online_lock_retries_spent",
        table=on,
        waited=waited(connection, options),
        attempts=options.online_retries,
        look=traits.where_sessions_show,
        changed=changed,
    )


def waited(connection, options: Options) -> str:
    """How long online_lock_timeout makes each wait."""
    return traits_of(connection.dialect).waited(options.online_lock_timeout)


def lock_not_granted(error: sa.exc.OperationalError) -> bool:
    """PostgreSQL's lock_timeout (55P03) or MariaDB's lock_wait_timeout (1205)."""
    return getattr(error.orig, "sqlstate", None) == "55P03" or mysql_error(error.orig) == ER.LOCK_WAIT_TIMEOUT


@contextmanager
def short_row_lock_waits(connection, options: Options) -> Iterator[None]:
    """While the batches run, a row an application transaction holds is waited for at most
    ``online_lock_timeout`` (then the batch is retried): a batch waiting on one row holds the rest of its range,
    and the application's writers to them would wait as long (pt-online-schema-change waits 1 s per chunk)."""
    traits = traits_of(connection.dialect)
    connection.exec_driver_sql(traits.row_lock_wait(options.online_lock_timeout))
    try:
        yield
    finally:
        connection.exec_driver_sql(traits.row_lock_wait(options.lock_timeout))


def retrying_batches(connection, options: Options, *, resumes: str, on: str) -> Callable:
    """``connection.execute`` for the batches, each its own committed statement: one that meets a deadlock or a
    row lock held past ``online_lock_timeout`` by the application is run again (``online_retries`` times)."""

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
            table=on,
            look=traits_of(connection.dialect).where_sessions_show,
            resumes=resumes,
        )

    return execute


def deadlocked(error: sa.exc.OperationalError) -> bool:
    """PostgreSQL's deadlock_detected (40P01) or MariaDB's ER_LOCK_DEADLOCK (1213)."""
    return getattr(error.orig, "sqlstate", None) == "40P01" or mysql_error(error.orig) == ER.LOCK_DEADLOCK


def first_words(error: sa.exc.OperationalError) -> str:
    return "a deadlock" if deadlocked(error) else "a row lock held past online_lock_timeout"


def committed_batches(
    connection, options: Options, *, resumes: str, on: str
) -> tuple[Callable[[sa.Executable, dict], sa.CursorResult], AbstractContextManager[None]]:
    """How a command that commits batch by batch runs each batch, and what it holds while they run: on SQLite each
    batch committed as it goes; on a server (autocommit) each batch retried past a row the application holds,
    waiting for it at most ``online_lock_timeout``."""
    if traits_of(connection.dialect).batches_commit_themselves:
        batches = retrying_batches(connection, options, resumes=resumes, on=on)
        return batches, short_row_lock_waits(connection, options)

    def committed(statement: sa.Executable, parameters: dict) -> sa.CursorResult:
        result = connection.execute(statement, parameters)
        connection.commit()
        return result

    return committed, nullcontext()
