"""The backfill in primary-key batches, with progress: the rule applied to ``batch_rows`` actual rows at a time.

Keyset batches (``id >= low ORDER BY id LIMIT n``): a sparse or huge id range (ids near ±2^62) costs no more
than a dense one. In the default mode the batches run inside the migration's one transaction (so they only
bound each statement's size); in the online mode each batch commits (``online_backfill``).
"""

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa

from autopack.migrations.build144.backfill_rule import NEEDS_TOTAL, RULE, split_sum
from autopack.migrations.build144.messages import NOTHING_CHANGED, refusal
from autopack.migrations.build144.usage_table import TABLE, events, first_ids, some
from autopack.migrations.runtime.options import Options
from autopack.migrations.runtime.progress import Progress
from autopack.migrations.runtime.throttle import Throttle

log = logging.getLogger("alembic.build144")


def backfill_statement() -> sa.Update:
    """The backfill rule applied to the rows of one primary-key range ``[low, high]`` that it changes."""
    return (
        events.update()
        .where(events.c.id >= sa.bindparam("low"), events.c.id <= sa.bindparam("high"), NEEDS_TOTAL)
        .values(total_tokens=split_sum)
    )


def batch_end(rows: int) -> sa.Select:
    """The id that ends the batch starting at ``low``: ``batch_rows`` actual rows on, however sparse the ids."""
    ids = (
        sa.select(events.c.id)
        .where(events.c.id >= sa.bindparam("low"), events.c.id <= sa.bindparam("stop"))
        .order_by(events.c.id)
        .limit(rows)
        .subquery()
    )
    return sa.select(sa.func.max(ids.c.id))


def backfill(
    execute: Callable[[sa.Executable, dict], sa.CursorResult],
    first,
    last,
    rows: int,
    options: Options,
    throttle: Throttle | None = None,
) -> int:
    """The rule over ids ``first..last`` (``rows`` rows) in batches; returns the rows whose total it wrote. With a
    ``throttle`` (online mode), each batch waits for it and takes its batch size."""
    progress = Progress(log, "backfill", rows, options.progress_every)
    filled = done = 0
    low, update = first, backfill_statement()
    while low is not None and low <= last:
        if throttle:
            throttle.before_batch()
        size = throttle.batch_rows if throttle else options.rows_per_batch
        started = time.monotonic()
        high = execute(batch_end(size), {"low": low, "stop": last}).scalar()
        if high is None:
            break
        filled += execute(update, {"low": low, "high": high}).rowcount
        if throttle:
            throttle.after_batch(time.monotonic() - started)
        done = min(rows, done + size)
        if throttle:  # the rate is the batches' own; the pauses still to come are added to the ETA
            progress.at(done / rows if rows else 1.0, throttle.idle_s, throttle.pause_per_row_s())
        else:
            progress.at(done / rows if rows else 1.0)
        low = high + 1 if high < last else None
    log.info("[2/3] Backfilled %d rows: %s", filled, RULE)
    return filled


def prove_backfilled(bind: sa.Connection, after: str = NOTHING_CHANGED, counted: int | None = None) -> None:
    """Counted in the same transaction, before the stamp: no row may still need its total, whatever the cause.
    ``counted``: the rows left as the report's scan counted them (0: proven, no second scan)."""
    if counted == 0:
        return
    left = first_ids(bind, sa.select(events.c.id).where(NEEDS_TOTAL))
    if left:
        raise refusal("still_to_fill", table=TABLE, ids=some(left), after=after)
