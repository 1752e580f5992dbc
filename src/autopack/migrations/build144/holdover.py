"""The set-aside table: rows the pre-BUILD-144 schema cannot hold, kept by the downgrade, restored by the upgrade.

A downgrade cannot store a NULL split or a total that is not the sum of its splits, and must not lose them:
it copies those rows here first (``hold_over``), then writes 0 for their NULL splits (never a guessed split).
The next upgrade puts each row back exactly, onto the same event only (same id, provider, model, role and
created_at, NULL-safe) and only while that event still carries the placeholders (``restore``); it reports,
counted from the table, which rows were restored, superseded (event deleted or id reused) or changed by old
code meanwhile (kept here, named, for the operator). The table is made from the source table itself, so its
columns have exactly the source's types, precision, time zone, charset and collation.

Revision 0001 knows this table only through ``drop_with_the_baseline``.
"""

import logging
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

from autopack.migrations.build144 import engines
from autopack.migrations.build144.backfill_rule import new_total, wide_split_sum
from autopack.migrations.build144.messages import refusal
from autopack.migrations.build144.usage_table import TABLE, completion, events, first_ids, prompt, some, total

log = logging.getLogger("alembic.build144")

HOLDOVER = "llm_usage_events_build144_holdover"
# what puts back rows a downgrade that stopped left set aside, once the revision is 0002 again
RESTORE_COMMAND = "python -m autopack restore-set-aside"
HELD = ("event_id", "provider", "model", "role", "created_at", "prompt_tokens", "completion_tokens", "total_tokens")
holdover = sa.table(HOLDOVER, *(sa.column(name) for name in HELD))
h = holdover.c

# Rows the pre-BUILD-144 schema cannot hold as they are. (A total of 0 beside two splits is held by the old
# schema as it is: the next upgrade's backfill fills it.)
NOT_HOLDABLE = sa.or_(prompt.is_(None), completion.is_(None), sa.and_(total != wide_split_sum, total != 0))


def held_rows(bind: sa.Connection) -> int | None:
    """Rows in the set-aside table, or None when there is none."""
    if not sa.inspect(bind).has_table(HOLDOVER):
        return None
    return bind.execute(sa.select(sa.func.count()).select_from(holdover)).scalar_one()


def drop_with_the_baseline(bind: sa.Connection | None, refuse: Callable[[str, int], None]) -> None:
    """For revision 0001's downgrade: the set-aside table goes with the baseline table, and only while it holds
    no rows (``refuse(table, rows)`` otherwise). Offline (no ``bind``) the script drops it if it exists."""
    rows = held_rows(bind) if bind is not None else None
    if rows:
        refuse(HOLDOVER, rows)
    op.execute(sa.text(f"DROP TABLE IF EXISTS {HOLDOVER}"))


# The set-aside table is made from the source table itself (CREATE TABLE ... AS SELECT with no rows, in each
# engine's words: ``holdover_create_statements``): each column has the source column's exact type, length,
# precision, time zone, charset and collation, so the rows it holds compare equal to their event again on restore.
# Kept if it is already there.
SELECT_HELD = f"SELECT id AS event_id, {', '.join(HELD[1:])} FROM {TABLE}"


# --- downgrade: set aside ------------------------------------------------------------------------------


def hold_over_statement(after_id: int | None = None, ignore_held: bool = False) -> sa.Insert:
    """Copy the rows the old schema cannot hold (with ids above ``after_id``, if given), skipping any a resumed
    downgrade already holds; ``ignore_held`` (MariaDB, under LOCK TABLES, where a query may name a locked table
    only once) skips them with INSERT IGNORE on the set-aside table's primary key instead."""
    source = [events.c.id, events.c.provider, events.c.model, events.c.role, events.c.created_at]
    newer = events.c.id > after_id if after_id is not None else sa.true()
    unheld = sa.true() if ignore_held else ~sa.exists().where(h.event_id == events.c.id)
    insert = holdover.insert().prefix_with("IGNORE") if ignore_held else holdover.insert()
    return insert.from_select(
        [h.event_id, h.provider, h.model, h.role, h.created_at, h.prompt_tokens, h.completion_tokens, h.total_tokens],
        sa.select(*source, prompt, completion, total).where(newer, NOT_HOLDABLE, unheld),
    )


def placeholders_statement() -> sa.Update:
    """NULL splits of held-over rows read 0 in the old schema (never a guessed split)."""
    return (
        events.update()
        .where(events.c.id.in_(sa.select(h.event_id)), sa.or_(prompt.is_(None), completion.is_(None)))
        .values(prompt_tokens=sa.func.coalesce(prompt, 0), completion_tokens=sa.func.coalesce(completion, 0))
    )


def not_set_aside() -> sa.Select:
    """Rows the pre-BUILD-144 schema cannot hold that are not in the set-aside table (after the placeholders)."""
    unheld = ~events.c.id.in_(sa.select(h.event_id))
    return sa.select(events.c.id).where(sa.or_(prompt.is_(None), completion.is_(None), sa.and_(NOT_HOLDABLE, unheld)))


def held_rows_changed_again() -> sa.Select:
    """Rows an earlier upgrade kept whose event has changed again since: setting them aside would mix values. An
    event that still carries its held row's placeholders (NULL splits read 0, as an interrupted online downgrade
    leaves it) has not changed."""
    same_values = sa.and_(
        sa.or_(
            sa.and_(prompt.is_not_distinct_from(h.prompt_tokens), completion.is_not_distinct_from(h.completion_tokens)),
            sa.and_(
                prompt == sa.func.coalesce(h.prompt_tokens, 0), completion == sa.func.coalesce(h.completion_tokens, 0)
            ),
        ),
        total == h.total_tokens,
    )
    return sa.select(h.event_id).join(events, events.c.id == h.event_id).where(NOT_HOLDABLE, ~same_values)


def hold_over(bind: sa.Connection) -> int:
    """Set aside what the old schema cannot hold and write its placeholders; returns the rows held in all."""
    held_before = held_rows(bind) or 0
    engine = engines.of(bind)
    for statement in engine.holdover_create_statements():
        bind.exec_driver_sql(statement)
    engine.make_holdover_replicable(bind)
    bind.execute(hold_over_statement())
    # counted, not taken from INSERT ... SELECT's rowcount, which psycopg reports as -1
    held = held_rows(bind) or 0
    if held_before:
        log.info("%s already held %d rows (an interrupted downgrade, or rows an upgrade kept)", HOLDOVER, held_before)
    if held:
        bind.execute(placeholders_statement())
    if held > held_before:
        log.info(
            "Set aside %d rows the pre-BUILD-144 schema cannot hold (NULL splits or a total that is not their sum) "
            "in %s; their NULL splits read 0 until 'alembic upgrade head' restores them",
            held - held_before,
            HOLDOVER,
        )
    return held


def prove_set_aside(bind: sa.Connection) -> None:
    """Before the splits turn NOT NULL and total_tokens goes: every row the old schema cannot hold is held."""
    left = first_ids(bind, not_set_aside())
    if None in left:  # a SQLite key that is not the rowid's alias lets rows without an id in
        raise refusal("null_ids_cannot_be_set_aside", table=TABLE)
    if left:
        raise refusal("rows_not_set_aside", table=TABLE, ids=some(left))


def set_aside(bind: sa.Connection) -> int:
    """A downgrade's set-aside step in the migration's transaction: held, proven, and the set-aside table dropped
    again when no row needed it; returns the rows held."""
    held = hold_over(bind)
    prove_set_aside(bind)
    if not held:
        drop_if_empty(bind)
    return held


def drop_if_empty(bind: sa.Connection) -> None:
    """The set-aside table dropped again when no row needed it (on ``bind``: the online downgrade's own
    short transaction, or the migration's)."""
    if not held_rows(bind):
        bind.exec_driver_sql(f"DROP TABLE {HOLDOVER}")
        log.info("No rows needed setting aside: every row's total is the sum of its splits")


# --- upgrade: restore ----------------------------------------------------------------------------------


def same_event() -> sa.ColumnElement[bool]:
    """A held row's event is still there, not deleted and its id not reused for another event."""
    return sa.and_(  # NULL-safe: a legacy table may allow NULL in any of these
        h.event_id == events.c.id,
        h.provider.is_not_distinct_from(events.c.provider),
        h.model.is_not_distinct_from(events.c.model),
        h.role.is_not_distinct_from(events.c.role),
        h.created_at.is_not_distinct_from(events.c.created_at),
    )


def restored_total() -> sa.ColumnElement[int]:
    """The held total, with the backfill rule applied: a held 0 beside a split becomes the splits' sum."""
    return new_total(h.total_tokens, h.prompt_tokens, h.completion_tokens)


def waiting() -> sa.ColumnElement[bool]:
    """A held row whose event is still there carrying the placeholders: what ``restore_statement`` puts back."""
    return sa.exists().where(
        same_event(),
        prompt == sa.func.coalesce(h.prompt_tokens, 0),
        completion == sa.func.coalesce(h.completion_tokens, 0),
        ~is_restored(),
    )


def restore_statement() -> sa.Update:
    """Put held-over rows back, only onto the same event still carrying the placeholders the downgrade wrote."""

    def held(column: sa.ColumnElement) -> sa.ScalarSelect:
        return sa.select(column).where(h.event_id == events.c.id).scalar_subquery()

    untouched = sa.exists().where(
        same_event(),
        prompt == sa.func.coalesce(h.prompt_tokens, 0),
        completion == sa.func.coalesce(h.completion_tokens, 0),
    )
    return (
        events.update()
        .where(untouched)
        .values(
            prompt_tokens=held(h.prompt_tokens),
            completion_tokens=held(h.completion_tokens),
            total_tokens=held(restored_total()),
        )
    )


def is_restored() -> sa.ColumnElement[bool]:
    """A held row whose event now holds exactly the held values."""
    return sa.exists().where(
        same_event(),
        prompt.is_not_distinct_from(h.prompt_tokens),
        completion.is_not_distinct_from(h.completion_tokens),
        total == restored_total(),
    )


def done_with() -> sa.ColumnElement[bool]:
    """Held rows the table no longer needs: restored, or superseded (their event deleted or its id reused)."""
    return sa.or_(is_restored(), ~sa.exists().where(same_event()))


def held_rows_by_outcome() -> sa.Select:
    """After the restore, each held row's outcome, read from the table: restored, superseded (the event was
    deleted or its id reused), or changed since the downgrade."""
    superseded = ~sa.exists().where(same_event())
    outcome = sa.case((is_restored(), "restored"), (superseded, "superseded"), else_="changed").label("outcome")
    return sa.select(h.event_id, outcome).order_by(h.event_id)


def restore(bind: sa.Connection) -> int:
    """Restore what an earlier downgrade set aside (the table is there: ``Plan.has_holdover``); the held table goes
    only when no row in it is left unexplained. Returns the rows restored."""
    bind.execute(restore_statement())
    outcomes: dict[str, list[int]] = {"restored": [], "superseded": [], "changed": []}
    for event_id, outcome in bind.execute(held_rows_by_outcome()):
        outcomes[outcome].append(event_id)
    restored, superseded, changed = outcomes["restored"], outcomes["superseded"], outcomes["changed"]
    held = len(restored) + len(superseded) + len(changed)
    log.info("      Restored %d of %d rows set aside by the BUILD-144 downgrade", len(restored), held)
    if superseded:
        log.warning(
            "      %d set-aside rows were not restored because their event was deleted or its id reused for another "
            "event after the downgrade (ids %s)",
            len(superseded),
            some(superseded),
        )
    done = restored + superseded
    if changed:  # the rows done with go, the others stay (DROP TABLE sends subscribers nothing: no DELETE then)
        engines.of(bind).make_holdover_replicable(bind)
        for start in range(0, len(done), 500):
            bind.execute(holdover.delete().where(h.event_id.in_(done[start : start + 500])))
        log.warning(
            "      %d set-aside rows stay in %s: pre-BUILD-144 code changed their event after the downgrade "
            "(ids %s), so neither value is dropped; compare each with llm_usage_events, fix the event by hand if "
            "the held values are right, then delete the row from %s",
            len(changed),
            HOLDOVER,
            some(changed),
            HOLDOVER,
        )
    else:
        bind.exec_driver_sql(f"DROP TABLE {HOLDOVER}")
    return len(restored)


def waiting_rows(connection: sa.Connection) -> int:
    """Set-aside rows whose event still carries the downgrade's placeholders: what a restore would put back."""
    if not sa.inspect(connection).has_table(HOLDOVER):
        return 0
    columns = {c["name"] for c in sa.inspect(connection).get_columns(TABLE)}
    if "total_tokens" not in columns:  # at 0001 the set-aside table is the downgrade's, as it should be
        return 0
    return connection.execute(sa.select(sa.func.count()).select_from(holdover).where(waiting())).scalar_one()


def say_if_rows_wait(connection: sa.Connection) -> None:
    """After a run with nothing to do: name the command for rows a stopped downgrade left set aside (their events
    read 0/0 until restored)."""
    waiting = waiting_rows(connection)
    if waiting:
        log.warning(
            "%d rows a downgrade that stopped set aside still read 0/0 splits: run '%s' to put them back",
            waiting,
            RESTORE_COMMAND,
        )
