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
from collections.abc import Callable
from functools import partial

import sqlalchemy as sa
from alembic import op

from autopack.migrations.build144 import holdover
from autopack.migrations.build144.batched_backfill import backfill, prove_backfilled
from autopack.migrations.build144.messages import LEAVES
from autopack.migrations.build144.plan import Plan
from autopack.migrations.build144.usage_table import TABLE, events
from autopack.migrations.runtime import lock_retries
from autopack.migrations.runtime.lock_retries import retrying_batches, short_row_lock_waits
from autopack.migrations.runtime.throttle import Throttle

log = logging.getLogger("alembic.build144")

RESUMES = LEAVES["online resumes"]
with_lock_retries = partial(lock_retries.with_lock_retries, on=TABLE)
committed_batches = partial(lock_retries.committed_batches, on=TABLE)


def online_upgrade(plan: Plan, schema_change: Callable[[sa.Connection, str], None]) -> int:
    """Schema change and fill trigger committed at once (``schema_change``: the engine's, given what a failure of it
    leaves), backfill in committed batches, restore, proof; the trigger stays for old writers until
    ``finish-online``. Returns the rows the batches filled."""
    context = op.get_context()
    with context.autocommit_block():
        connection = context.connection
        changed = (
            f"{TABLE} was not changed (an unversioned database is now stamped 0001, from which a re-run continues)"
        )
        schema_change(connection, changed)
        log.info("[1/3] Schema (online, committed): %s", plan.describe())
        # rows written from here on get their total from the trigger; every earlier row has an id <= last
        first, last = connection.execute(sa.select(sa.func.min(events.c.id), sa.func.max(events.c.id))).one()
        # a failure or a stop from here on leaves the fill trigger in place: old writers' rows stay right until
        # the re-run (had it gone, a split they update on a row already filled would leave its total stale)
        throttle = Throttle(
            plan.options, connection, RESUMES
        )  # pauses, batch size, replica lag, Ctrl-C between batches
        with throttle.stopping_on_signals(), short_row_lock_waits(connection, plan.options):
            execute = retrying_batches(connection, plan.options, resumes=RESUMES, on=TABLE)
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
