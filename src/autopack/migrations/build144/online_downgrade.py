"""PostgreSQL online downgrade (``-x online=true downgrade -1``): no full scan under ACCESS EXCLUSIVE.

Why it is safe. ``SET NOT NULL`` scans the whole table under ACCESS EXCLUSIVE, unless a valid CHECK constraint
already proves the column NOT NULL (PostgreSQL 12+, https://www.postgresql.org/docs/current/sql-altertable.html:
"the scan is skipped if a valid CHECK constraint exists (and is not dropped in the same command)"). So:

1. ``ADD CONSTRAINT … CHECK (split IS NOT NULL) NOT VALID`` for both splits: catalog-only, one short
   transaction under ``online_lock_timeout``, retried. From here no row with a NULL split can be written.
2. The rows the old schema cannot hold are set aside and their NULL splits read 0 (``holdover``), in an
   ordinary transaction (ROW EXCLUSIVE, like the application's writes).
3. ``VALIDATE CONSTRAINT`` scans the table under SHARE UPDATE EXCLUSIVE: reads and writes go on.
4. One short transaction, under ``online_lock_timeout`` and retried: set aside what was written since step 2
   (ids above the last one step 2 saw), ``SET NOT NULL`` (no scan: the CHECKs prove it), then drop the CHECKs
   and ``total_tokens`` (catalog-only). Alembic stamps 0001 after it.

Stop the writers of BUILD-144 code first (pre-BUILD-144 code may keep running): a row such code changes after
step 2 to a total that is not the sum of its splits is not set aside. A failure after step 1 drops the CHECKs
again and leaves the revision at 0002 with the rows set aside so far in the set-aside table (their NULL splits
reading 0): re-running the same command finishes the downgrade, and ``alembic upgrade head`` is not needed.
"""

import logging

import sqlalchemy as sa
from alembic import op

from autopack.migrations.build144 import engines, holdover
from autopack.migrations.build144.messages import LEAVES, refusal
from autopack.migrations.build144.online_backfill import with_lock_retries
from autopack.migrations.build144.plan import Plan
from autopack.migrations.build144.usage_table import DROP_NOT_NULL_CHECKS, NOT_NULL_CHECKS, SPLITS, TABLE, events
from autopack.migrations.runtime.errors import first_line

log = logging.getLogger("alembic.build144")

ADD_CHECKS = f"ALTER TABLE {TABLE} " + ", ".join(
    f"ADD CONSTRAINT {name} CHECK ({split} IS NOT NULL) NOT VALID" for split, name in NOT_NULL_CHECKS.items()
)
SET_NOT_NULL = f"ALTER TABLE {TABLE} " + ", ".join(f"ALTER COLUMN {split} SET NOT NULL" for split in SPLITS)
FINISH = f"ALTER TABLE {TABLE} " + ", ".join(
    [*(f"DROP CONSTRAINT {name}" for name in NOT_NULL_CHECKS.values()), "DROP COLUMN total_tokens"]
)
AFTER_FAILURE = LEAVES["online downgrade stopped"]


def online_downgrade(plan: Plan) -> None:
    context = op.get_context()
    with context.autocommit_block():
        connection = context.connection
        with_lock_retries(connection, [DROP_NOT_NULL_CHECKS, ADD_CHECKS], plan.options)  # 1.
        log.info("[1/3] Schema (online, committed): NOT VALID CHECKs %s", ", ".join(NOT_NULL_CHECKS.values()))
        seen: dict[str, int | None] = {}  # the last id step 2 saw

        def set_aside(bind: sa.Connection) -> None:  # 2.
            seen["last"] = bind.execute(sa.select(sa.func.max(events.c.id))).scalar()
            holdover.hold_over(bind)
            holdover.prove_set_aside(bind)

        def set_aside_since(bind: sa.Connection) -> None:  # 4., under the lock: an index range of new ids
            if seen["last"] is not None:
                bind.execute(holdover.hold_over_statement(after_id=seen["last"]))
            holdover.drop_if_empty(bind)

        try:
            with_lock_retries(connection, [set_aside], plan.options, changed=AFTER_FAILURE)
            for name in NOT_NULL_CHECKS.values():  # 3.
                connection.exec_driver_sql(f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT {name}")
            log.info("[2/3] Validated %s while reads and writes went on", ", ".join(NOT_NULL_CHECKS.values()))
            finish = [
                set_aside_since,
                SET_NOT_NULL,
                *engines.named(plan.dialect).fill_trigger_drop_statements(),
                FINISH,
            ]
            with_lock_retries(connection, finish, plan.options, changed=AFTER_FAILURE)
            log.info(
                "[3/3] Schema (online, committed): splits NOT NULL (the CHECKs prove it: no scan), total_tokens dropped"
            )
        except sa.exc.DBAPIError as error:  # a lock or statement timeout included: what is left is not "nothing"
            drop_checks_quietly(connection, plan)
            raise refusal("online_downgrade_stopped", error=first_line(error)) from None
        except BaseException:  # Ctrl-C too: never leave CHECKs that refuse the BUILD-144 code's total-only rows
            connection.invalidate()  # interrupted mid-statement: end that session (its locks go), clean up from anew
            with connection.engine.connect() as fresh:
                drop_checks_quietly(fresh.execution_options(isolation_level="AUTOCOMMIT"), plan)
            raise


def drop_checks_quietly(connection: sa.Connection, plan: Plan) -> None:
    try:
        if connection.in_transaction():
            connection.exec_driver_sql("ROLLBACK")  # a server-side one only: Alembic's autocommit block stays usable
        with_lock_retries(connection, [DROP_NOT_NULL_CHECKS], plan.options, changed=LEAVES["CHECKs stay"])
    except Exception as error:  # the failure being reported matters more; say what is left
        log.warning(
            "      could not drop the CHECKs %s (%s): drop them by hand", ", ".join(NOT_NULL_CHECKS.values()), error
        )
