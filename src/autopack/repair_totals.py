"""``python -m autopack repair-totals``: set each stale total back to the sum of its splits.

Which rows: those ``verify``'s "totals match their splits" and "total_tokens populated" checks flag (a split is
set and ``total_tokens`` is not ``COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)``) that have both
splits and whose sum ``total_tokens`` holds. Old code still running after a default-mode upgrade (a rolling
deploy, a streamed call finishing late) updates a row's splits and leaves its total (100k instead of 150k); it
always writes both splits, and the splits are the later record, so the total becomes their sum. Left alone, and
counted in the sentence: total-only rows (both splits NULL: their total is the only record of their usage), rows
with one split NULL (their total may hold what the other split was), rows whose splits sum past what the column
holds; and nothing at all while a stopped downgrade's set-aside rows still read 0/0 (restore-set-aside first).

How: in primary-key batches of ``batch_rows`` actual rows, each committed (a big table is never locked as a
whole; a row the application holds is waited for ``online_lock_timeout`` at most, then the batch retried, as
the online backfill does). Safe to run again; the count printed is read from the table afterwards.
"""

from dataclasses import dataclass

import sqlalchemy as sa

from autopack.migrations.build144.backfill_rule import exact_split_sum, not_their_sum, wide_split_sum
from autopack.migrations.build144.batched_backfill import batch_end
from autopack.migrations.build144.holdover import RESTORE_COMMAND as RESTORE
from autopack.migrations.build144.holdover import waiting_rows
from autopack.migrations.build144.messages import LEAVES, refusal
from autopack.migrations.build144.online_backfill import committed_batches
from autopack.migrations.build144.usage_table import TABLE, completion, events, prompt, total
from autopack.migrations.runtime.options import Options

COMMAND = "python -m autopack repair-totals"
AGAIN = LEAVES["repair-totals resumes"]  # after "the batches done so far are committed, "
STALE = not_their_sum(total)  # the rows verify's "totals match their splits" counts
BOTH_SPLITS = sa.and_(prompt.is_not(None), completion.is_not(None))
INTEGER_MAX, BIGINT_MAX = 2**31 - 1, 2**63 - 1


@dataclass(frozen=True)
class Repaired:
    repaired: int
    left: int  # stale rows left: a single split, or splits summing past what total_tokens holds
    single_split: int = 0
    too_large: int = 0

    def sentence(self) -> str:
        done = f"Repaired {self.repaired} rows of {TABLE} whose total_tokens was not the sum of their splits"
        if not self.left:
            return f"{done}; every row with both splits now has their sum as its total."
        reasons = []
        if self.single_split:
            reasons.append(
                f"{self.single_split} with one split NULL (the total may hold what the missing split was: never "
                "lowered here; check them by hand)"
            )
        if self.too_large:
            reasons.append(f"{self.too_large} whose splits sum past what total_tokens holds (corrupt splits?)")
        return f"{done}; {self.left} rows still have a total that is not the sum of their splits: {'; '.join(reasons)}."


def stale_rows(connection: sa.Connection) -> int:
    return connection.execute(sa.select(sa.func.count()).select_from(events).where(STALE)).scalar_one()


def repairable(capacity: int) -> sa.ColumnElement[bool]:
    """Stale rows with both splits set whose sum the column holds: the ones old code left (it always wrote both)."""
    return sa.and_(STALE, BOTH_SPLITS, capacity >= exact_split_sum)


def total_capacity(connection: sa.Connection) -> int:
    """The largest total ``total_tokens`` holds: SQLite's 64-bit integers, a server's INTEGER unless widened."""
    if connection.dialect.name == "sqlite":
        return BIGINT_MAX
    column = next(c for c in sa.inspect(connection).get_columns(TABLE) if c["name"] == "total_tokens")
    return BIGINT_MAX if isinstance(column["type"], sa.BigInteger) else INTEGER_MAX


def repair_totals(connection: sa.Connection, options: Options | None = None) -> Repaired:
    """Repair every stale total in committed batches; on a server ``connection`` is in autocommit."""
    options = options or Options()
    inspector = sa.inspect(connection)
    columns = {c["name"] for c in inspector.get_columns(TABLE)} if inspector.has_table(TABLE) else set()
    if "total_tokens" not in columns:
        raise refusal("no_total_tokens_yet", table=TABLE)
    waiting = waiting_rows(connection)
    if waiting:  # their 0/0 placeholders are not stale splits: repairing would zero their totals
        raise refusal("set_aside_rows_waiting", waiting=waiting, restore=RESTORE)
    fixable = repairable(total_capacity(connection))
    first, last = connection.execute(sa.select(sa.func.min(events.c.id), sa.func.max(events.c.id)).where(fixable)).one()
    update = (
        events.update()
        .where(events.c.id >= sa.bindparam("low"), events.c.id <= sa.bindparam("high"), fixable)
        .values(total_tokens=wide_split_sum)
    )
    execute, waits = committed_batches(connection, options, resumes=AGAIN)
    repaired = 0
    low = first
    with waits:
        while low is not None and low <= last:
            high = execute(batch_end(options.rows_per_batch), {"low": low, "stop": last}).scalar()
            if high is None:
                break
            repaired += execute(update, {"low": low, "high": high}).rowcount
            low = high + 1 if high < last else None
    left, single = connection.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((BOTH_SPLITS, 0), else_=1)), 0)).where(STALE)
    ).one()
    if connection.dialect.name == "sqlite":
        connection.commit()
    return Repaired(repaired, left, single_split=int(single), too_large=left - int(single))
