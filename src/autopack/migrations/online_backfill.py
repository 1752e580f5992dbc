"""PostgreSQL online mode (``-x online=true``): the schema change committed at once, then committed batches.

Why it is safe. ``ALTER TABLE`` takes ACCESS EXCLUSIVE, which conflicts with every reader and writer
(https://www.postgresql.org/docs/current/sql-altertable.html, and "Table-Level Locks" in explicit-locking):
here it is held only for catalog-only changes (ADD COLUMN with a constant DEFAULT rewrites nothing since
PostgreSQL 11; DROP NOT NULL and SET DEFAULT touch only the catalog), in one short transaction under ``SET
LOCAL lock_timeout`` that gives up and retries rather than queue every session behind it. The same
transaction installs a BEFORE INSERT OR UPDATE trigger that applies the backfill rule to every row written
by code that does not know ``total_tokens``; every earlier row has an id <= the last id read after it
commits, and the batches fill those, each committing (ROW EXCLUSIVE, like the application's own writes).
The version is stamped only after the last batch, the restore and the proof: a run killed midway stays at
0001 and the next run resumes (the rule skips rows already done). The trigger is dropped before the stamp.
"""

import logging
import time

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

from autopack.migrations import holdover
from autopack.migrations.batched_backfill import backfill, prove_backfilled
from autopack.migrations.options import Options
from autopack.migrations.plan import Plan
from autopack.migrations.throttle import Throttle
from autopack.migrations.usage_table import DROP_NOT_NULL_CHECKS, FILL_TRIGGER, TABLE, events

log = logging.getLogger("alembic.build144")

DROP_FILL_TRIGGER = [f"DROP TRIGGER IF EXISTS {FILL_TRIGGER} ON {TABLE}", f"DROP FUNCTION IF EXISTS {FILL_TRIGGER}()"]
# the backfill rule (backfill_rule.new_total) for one row, as the trigger applies it
FILL_TOTAL_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {FILL_TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- writes by code that does not know total_tokens (it stays 0, or unchanged on UPDATE) get the sum
    IF (NEW.prompt_tokens IS NOT NULL OR NEW.completion_tokens IS NOT NULL)
       AND ((TG_OP = 'INSERT' AND NEW.total_tokens = 0)
            OR (TG_OP = 'UPDATE' AND NEW.total_tokens = OLD.total_tokens
                AND (NEW.prompt_tokens IS DISTINCT FROM OLD.prompt_tokens
                     OR NEW.completion_tokens IS DISTINCT FROM OLD.completion_tokens))) THEN
        NEW.total_tokens := COALESCE(NEW.prompt_tokens, 0) + COALESCE(NEW.completion_tokens, 0);
    END IF;
    RETURN NEW;
END $$
"""
CREATE_FILL_TRIGGER = [
    FILL_TOTAL_FUNCTION,
    DROP_FILL_TRIGGER[0],
    f"CREATE TRIGGER {FILL_TRIGGER} BEFORE INSERT OR UPDATE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION {FILL_TRIGGER}()",
]
RESUMES = "the revision stays 0001 and re-running the same command resumes"


def online_upgrade(plan: Plan) -> int:
    """Schema change and trigger committed at once, backfill in committed batches, restore, proof, trigger gone;
    returns the rows the batches filled."""
    context = op.get_context()
    with context.autocommit_block():
        connection = context.connection
        with_lock_retries(
            connection,
            [*alter_statements(plan), DROP_NOT_NULL_CHECKS, *CREATE_FILL_TRIGGER],
            plan.options,
            changed=f"{TABLE} was not changed (an unversioned database is now stamped 0001, from which a re-run "
            "continues)",
        )
        log.info("[1/3] Schema (online, committed): %s", plan.describe())
        # rows written from here on get their total from the trigger; every earlier row has an id <= last
        first, last = connection.execute(sa.select(sa.func.min(events.c.id), sa.func.max(events.c.id))).one()
        try:
            throttle = Throttle(plan.options, connection)  # pauses, batch size, replica lag, Ctrl-C between batches
            with throttle.stopping_on_signals():
                filled = backfill(connection.execute, first, last, plan.rows, plan.options, throttle)
            if plan.has_holdover:
                holdover.restore(connection)
            prove_backfilled(connection, after=RESUMES)
        except Exception:  # never leave the fill trigger behind at 0001; a re-run fills what old code wrote
            drop_fill_trigger_quietly(connection, plan.options)
            raise
        with_lock_retries(
            connection,
            DROP_FILL_TRIGGER,
            plan.options,
            changed="every row is backfilled but the revision is still 0001 and the fill trigger stays: "
            "re-run the same command to finish",
        )
    return filled


def drop_leftovers(bind: sa.Connection) -> None:
    """The default mode, after an interrupted online run: its fill trigger, or an online downgrade's CHECKs (which
    would refuse the NULL splits the restore puts back), go in the same transaction."""
    for statement in [*DROP_FILL_TRIGGER, DROP_NOT_NULL_CHECKS]:
        bind.exec_driver_sql(statement)


def alter_statements(plan: Plan) -> list[str]:
    """The catalog-only ALTER TABLE of the plan, as one statement (none when there is nothing to change)."""
    alter = ["ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0"] if plan.add_total else []
    alter += ["ALTER COLUMN total_tokens SET DEFAULT 0"] if plan.add_default else []
    alter += [f"ALTER COLUMN {split} DROP NOT NULL" for split in plan.relax]
    return [f"ALTER TABLE {TABLE} {', '.join(alter)}"] if alter else []


def with_lock_retries(connection, statements: list, options: Options, changed: str = "nothing was changed"):
    """Run ``statements`` in one short transaction that gives up on a lock after ``online_lock_timeout``, so
    readers and writers never queue behind it for long; retry a few times, then fail with one sentence."""
    for attempt in range(1, options.online_retries + 1):
        try:
            connection.exec_driver_sql("BEGIN")
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{options.online_lock_timeout}'")
            for statement in statements:  # SQL, or a step that runs its own statements on the connection
                connection.exec_driver_sql(statement) if isinstance(statement, str) else statement(connection)
            connection.exec_driver_sql("COMMIT")
            return
        except sa.exc.OperationalError as error:
            connection.exec_driver_sql("ROLLBACK")
            if getattr(error.orig, "sqlstate", None) != "55P03":
                raise
            log.info("      lock not granted within %s (attempt %d), retrying", options.online_lock_timeout, attempt)
            time.sleep(min(0.2 * attempt, 2.0))
    raise CommandError(
        f"Could not lock {TABLE} within online_lock_timeout={options.online_lock_timeout} in "
        f"{options.online_retries} attempts: a long transaction holds it (see pg_stat_activity); {changed}."
    )


def drop_fill_trigger_quietly(connection, options: Options) -> None:
    try:
        if connection.in_transaction():
            connection.exec_driver_sql("ROLLBACK")
        with_lock_retries(connection, DROP_FILL_TRIGGER, options)
    except Exception as error:  # the failure being reported matters more; say what is left
        log.warning("      could not drop the online fill trigger %s (%s): drop it by hand", FILL_TRIGGER, error)
