"""``python -m autopack finish-online``: the last step of an online upgrade, once no pre-BUILD-144 code writes.

An online upgrade (``alembic -x online=true upgrade head``) leaves its fill trigger on the table
(``migrations.fill_trigger``: expand/contract, like pgroll's ``complete``), so that instances still running old
code write right totals while they are replaced. This command drops it, under the same short lock timeout and
retries as the online mode, and then fills, in committed batches (each waiting for a row the application holds
at most ``online_lock_timeout``, then retried, as the online backfill does), any total that old code left at 0 (written
before the trigger existed, or after it went): the same rule as the upgrade, never changing a total already
there. It is also the repair for rows written with total 0 after a default-mode upgrade (``verify`` names it).
Safe to run again; the database must be at BUILD-144 already.
"""

from dataclasses import dataclass

import sqlalchemy as sa

from autopack.migrations.build144 import engines, fill_trigger
from autopack.migrations.build144.backfill_rule import NEEDS_TOTAL
from autopack.migrations.build144.batched_backfill import backfill, prove_backfilled
from autopack.migrations.build144.messages import LEAVES, refusal
from autopack.migrations.build144.online_backfill import committed_batches, with_lock_retries
from autopack.migrations.build144.usage_table import TABLE, events
from autopack.migrations.runtime.options import Options, version_table
from autopack.repair_totals import COMMAND as REPAIR
from autopack.repair_totals import stale_rows

AGAIN = LEAVES["finish-online resumes"]


@dataclass(frozen=True)
class Finished:
    dropped_trigger: bool
    filled: int
    stale: int = 0  # counted afterwards: a split set and the total not their sum (repair-totals fixes them)

    def sentence(self) -> str:
        trigger = (
            "Dropped the online upgrade's fill trigger"
            if self.dropped_trigger
            else "No online fill trigger was left on the table (finished before, or a default-mode upgrade)"
        )
        filled = f"filled {self.filled} rows whose total was 0 beside a split"
        if self.stale:
            return (
                f"{trigger}; {filled}; {self.stale} rows of {TABLE} still have a total that is not the sum of their "
                f"splits (old code updated their splits): run '{REPAIR}'."
            )
        return f"{trigger}; {filled}; every row of {TABLE} has its total, the sum of its splits where they are set."


def finish_online(connection: sa.Connection, options: Options | None = None) -> Finished:
    """Drop the fill trigger, then fill what old code left, committing each batch; on a server ``connection`` is
    in autocommit (the trigger is dropped in a transaction of its own)."""
    options = options or Options()
    inspector = sa.inspect(connection)
    columns = {c["name"] for c in inspector.get_columns(TABLE)} if inspector.has_table(TABLE) else set()
    if "total_tokens" not in columns:
        raise refusal("finish_online_before_upgrade", table=TABLE)
    versions = version_table()
    stamped = (
        connection.exec_driver_sql(f"SELECT version_num FROM {versions}").scalars().all()
        if inspector.has_table(versions)
        else []
    )
    if not any(r >= "0002" for r in stamped):  # an online upgrade that stopped: its re-run finishes it
        raise refusal("finish_online_not_at_head", stamped=", ".join(stamped) or "none")
    dropped = fill_trigger.installed(connection)
    if dropped:
        with_lock_retries(
            connection,
            engines.of(connection).fill_trigger_drop_statements(),
            options,
            changed=LEAVES["fill trigger stays"],
        )
    first, last, rows = connection.execute(
        sa.select(sa.func.min(events.c.id), sa.func.max(events.c.id), sa.func.count()).where(NEEDS_TOTAL)
    ).one()
    execute, waits = committed_batches(connection, options, resumes=AGAIN)
    with waits:
        filled = backfill(execute, first, last, rows, options) if rows else 0
    prove_backfilled(
        connection,
        after=LEAVES["fill trigger gone"],
    )
    return Finished(dropped, filled, stale_rows(connection))
