"""BUILD-144: every token counted — total_tokens always populated, token splits nullable.

Upgrade, doing only what the table is missing:
  1. adds ``total_tokens INTEGER NOT NULL DEFAULT 0`` (or just its DEFAULT 0, if an older script added
     the column without one) and makes ``prompt_tokens`` / ``completion_tokens`` nullable, so a
     provider that reports only a total is recorded as total-only (splits NULL) instead of a guessed
     split;
  2. backfills ``total_tokens = COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)`` on rows
     that have a split and a total of 0, in primary-key batches with progress. A non-zero total is never
     changed: on a total-only row it is the only record of that usage;
  3. puts back, exactly, the rows that an earlier downgrade of this revision set aside;
  4. logs a report: total rows, exact-split rows, total-only rows, the sum of total_tokens, and how
     many rows had lost their usage before this migration (both splits NULL, total 0).

SQLite: the column is added with ALTER TABLE and the NOT NULL / DEFAULT changes are made in place with
SQLite's documented procedure for them, so the table and its indexes are not rebuilt; a table whose
definition that edit does not recognise is rebuilt (Alembic batch mode) instead. PostgreSQL: the schema
change is catalog-only; ``-x online=true`` commits it at once under a short lock_timeout and backfills
in committed batches while the application keeps running (see the README).

Downgrade, losing nothing: rows the old schema cannot hold (a NULL split, or a total that is not the
sum of the splits) are first copied to ``llm_usage_events_build144_holdover``; their NULL splits
become 0 (never a guessed split); then the splits are NOT NULL again and ``total_tokens`` is dropped.
The next upgrade restores those rows (same id, totals and NULL splits), unless the row was changed or
its id reused for another event meanwhile, and drops the holdover table.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-02
"""

import logging
import re
import time
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError

from autopack.migration_env import explained_by_the_environment, first_line
from autopack.migration_ops import (
    NotEditableInPlace,
    Progress,
    add_default_zero,
    add_not_null,
    drop_not_null,
    sqlite_edit_definition,
    sqlite_objects_kept,
    sqlite_rebuild_losses,
)
from autopack.migration_options import Options, parse_options
from autopack.migration_preflight import (
    MYSQL_READERS_LITERAL,
    PG_READERS_LITERAL,
    integer_limit,
    refuse_checks_forbidding_total_only,
    refuse_columns_rewritten_on_update,
    refuse_objects_reading_total_tokens,
    refuse_publications_that_forbid_updates,
    refuse_totals_that_overflow,
    system_versioned,
    update_hooks,
)

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.build144")

TABLE = "llm_usage_events"
HOLDOVER = "llm_usage_events_build144_holdover"
SPLITS = ("prompt_tokens", "completion_tokens")
# VARCHAR without a length, as Autopack always declared it; MySQL/MariaDB need one.
VARCHAR = sa.String().with_variant(sa.String(255), "mysql", "mariadb")
TRIGGER = "llm_usage_events_build144_fill_total"
DROP_FILL_TRIGGER = [f"DROP TRIGGER IF EXISTS {TRIGGER} ON {TABLE}", f"DROP FUNCTION IF EXISTS {TRIGGER}()"]

events = sa.table(
    TABLE,
    sa.column("id", sa.BigInteger),  # an operator's BIGINT id past 2^31 must bind as one
    sa.column("provider", sa.String),
    sa.column("model", sa.String),
    sa.column("role", sa.String),
    sa.column("created_at", sa.DateTime),
    sa.column("prompt_tokens", sa.Integer),
    sa.column("completion_tokens", sa.Integer),
    sa.column("total_tokens", sa.Integer),
)
prompt, completion, total = events.c.prompt_tokens, events.c.completion_tokens, events.c.total_tokens
split_sum = sa.func.coalesce(prompt, 0) + sa.func.coalesce(completion, 0)
# the same sum in 64 bits, for reading: on PostgreSQL an int4 + int4 past 2^31 is an error, not a number
wide_split_sum = sa.cast(sa.func.coalesce(prompt, 0), sa.BigInteger) + sa.cast(
    sa.func.coalesce(completion, 0), sa.BigInteger
)


def new_total(old_total: sa.ColumnElement[int]) -> sa.ColumnElement[int]:
    """THE backfill rule: a total already there stays; a total of 0 becomes the sum of the splits (NULL as 0)."""
    return sa.case((old_total == 0, split_sum), else_=old_total)


# The rows the rule changes: a split is set, the total is 0, and the splits do not sum to 0 either.
NEEDS_TOTAL = sa.and_(total == 0, split_sum != 0)
# Rows the pre-BUILD-144 schema cannot hold as they are.
# (a total of 0 beside two splits is held by the old schema as it is: the next upgrade's backfill fills it)
NOT_HOLDABLE = sa.or_(prompt.is_(None), completion.is_(None), sa.and_(total != wide_split_sum, total != 0))


def total_tokens_column() -> sa.Column:
    """BUILD-144's column: INTEGER NOT NULL DEFAULT 0 (a server default, so old code's INSERTs still work)."""
    return sa.Column("total_tokens", sa.Integer(), nullable=False, server_default=sa.text("0"))


HELD = ("event_id", "provider", "model", "role", "created_at", "prompt_tokens", "completion_tokens", "total_tokens")
holdover = sa.table(HOLDOVER, *(sa.column(name) for name in HELD))


def create_holdover(dialect: str) -> list[str]:
    """The set-aside table, made from the source table itself (CREATE TABLE ... AS SELECT with no rows): each
    column has the source column's exact type, length, precision, time zone, charset and collation, so the
    rows it holds compare equal to their event again on restore. Kept if it is already there."""
    select = f"SELECT id AS event_id, {', '.join(HELD[1:])} FROM {TABLE}"
    if dialect in ("mysql", "mariadb"):
        return [f"CREATE TABLE IF NOT EXISTS {HOLDOVER} (PRIMARY KEY (event_id)) {select} WHERE 1 = 0"]
    no_rows = "WITH NO DATA" if dialect == "postgresql" else "WHERE 0"
    return [
        f"CREATE TABLE IF NOT EXISTS {HOLDOVER} AS {select} {no_rows}",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {HOLDOVER}_event_id ON {HOLDOVER} (event_id)",
    ]


def options() -> Options:
    return parse_options(context.get_x_argument(as_dictionary=True))


def backfill_batch() -> sa.Update:
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


def same_event() -> sa.ColumnElement[bool]:
    """A held row's event is still there, not deleted and its id not reused for another event."""
    h = holdover.c
    return sa.and_(  # NULL-safe: a legacy table may allow NULL in any of these
        h.event_id == events.c.id,
        h.provider.is_not_distinct_from(events.c.provider),
        h.model.is_not_distinct_from(events.c.model),
        h.role.is_not_distinct_from(events.c.role),
        h.created_at.is_not_distinct_from(events.c.created_at),
    )


def restored_total() -> sa.ColumnElement[int]:
    """The held total, with the backfill rule applied: a held 0 beside a split becomes the splits' sum."""
    h = holdover.c
    held_sum = sa.func.coalesce(h.prompt_tokens, 0) + sa.func.coalesce(h.completion_tokens, 0)
    return sa.case((h.total_tokens == 0, held_sum), else_=h.total_tokens)


def restore_statement() -> sa.Update:
    """Put held-over rows back, only onto the same event still carrying the placeholders the downgrade wrote."""
    h = holdover.c

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
    h = holdover.c
    return sa.exists().where(
        same_event(),
        prompt.is_not_distinct_from(h.prompt_tokens),
        completion.is_not_distinct_from(h.completion_tokens),
        total == restored_total(),
    )


def held_rows_by_outcome() -> sa.Select:
    """After the restore, each held row's outcome, read from the table: restored, superseded (the event was
    deleted or its id reused), or changed since the downgrade."""
    superseded = ~sa.exists().where(same_event())
    outcome = sa.case((is_restored(), "restored"), (superseded, "superseded"), else_="changed").label("outcome")
    return sa.select(holdover.c.event_id, outcome).order_by(holdover.c.event_id)


def survey(has_total: bool) -> sa.Select:
    """One scan for everything the upgrade reports and batches by, with the rule applied to the totals."""
    old_total = total if has_total else sa.literal(0)
    totals = sa.case((old_total == 0, wide_split_sum), else_=sa.cast(old_total, sa.BigInteger))
    both_null = sa.and_(prompt.is_(None), completion.is_(None))

    def count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    return sa.select(
        sa.func.count().label("rows"),
        sa.func.min(events.c.id).label("first"),
        sa.func.max(events.c.id).label("last"),
        count(sa.and_(prompt.is_not(None), completion.is_not(None))).label("exact"),
        count(sa.and_(both_null, totals > 0)).label("total_only"),
        sa.func.coalesce(sa.func.sum(totals), 0).label("token_sum"),
        count(sa.and_(both_null, totals == 0)).label("lost"),
    ).select_from(events)


def overflowing(has_total: bool, limit: int) -> sa.Select:
    """Rows whose backfilled total would not fit the column."""
    needs = total == 0 if has_total else sa.true()
    return sa.select(events.c.id).where(needs, sa.or_(wide_split_sum > limit, wide_split_sum < -limit - 1))


def changes_needed(columns: dict[str, dict]) -> tuple[bool, bool, list[str]]:
    """(add total_tokens, add its DEFAULT 0, splits to relax) for this table."""
    has_total = "total_tokens" in columns
    needs_default = has_total and columns["total_tokens"]["default"] is None
    return not has_total, needs_default, [s for s in SPLITS if not columns[s]["nullable"]]


def describe(add_total: bool, add_default: bool, relax: list[str]) -> str:
    done = ["added total_tokens INTEGER NOT NULL DEFAULT 0"] if add_total else []
    done += ["set DEFAULT 0 on total_tokens"] if add_default else []
    done += [f"made {' and '.join(relax)} nullable"] if relax else []
    return "; ".join(done) or "already BUILD-144, nothing to change"


def batch_schema_change(
    add_total: bool, add_default: bool, relax: list[str], columns: dict[str, dict] | None = None, copy_from=None
) -> None:
    """The change as Alembic operations: ALTERs on PostgreSQL and MySQL, a table rebuild on SQLite. ``columns``
    (reflected) restates each split as it is — type, default, comment — since MySQL's MODIFY COLUMN rewrites the
    whole column: a BIGINT split stays BIGINT."""
    with op.batch_alter_table(TABLE, copy_from=copy_from) as batch:
        if add_total:
            batch.add_column(total_tokens_column())
        if add_default:
            batch.alter_column(
                "total_tokens",
                existing_type=columns["total_tokens"]["type"] if columns else sa.Integer(),
                existing_nullable=False,
                existing_server_default=None,
                server_default=sa.text("0"),
            )
        for split in relax:
            batch.alter_column(split, **as_it_is(split, columns), existing_nullable=False, nullable=True)


def as_it_is(split: str, columns: dict[str, dict] | None) -> dict:
    """Alembic's existing_* arguments for ``split`` as the table reflects it (INTEGER, no default, no comment when
    the table is not read, as offline): MySQL's MODIFY COLUMN restates the whole column from them."""
    existing = (columns or {}).get(split, {})
    default = existing.get("default")
    return {
        "existing_type": existing.get("type", sa.Integer()),
        "existing_server_default": sa.text(default) if default is not None else None,
        "existing_comment": existing.get("comment"),
    }


def sqlite_schema_change(bind, add_total: bool, add_default: bool, relax: list[str]) -> None:
    """In place when the table's definition allows it (no rebuild, indexes untouched), else a rebuild."""

    def edit(sql: str) -> str:
        for split in relax:
            sql = drop_not_null(sql, split)
        return add_default_zero(sql, "total_tokens") if add_default else sql

    wanted = {split: {"notnull": 0} for split in relax} | ({"total_tokens": {"dflt_value": "0"}} if add_default else {})
    try:
        if add_default or relax:
            sqlite_edit_definition(bind, TABLE, edit, wanted)
    except NotEditableInPlace as reason:
        sqlite_rebuild(bind, str(reason), lambda: batch_schema_change(add_total, add_default, relax))
        return
    if add_total:
        op.add_column(TABLE, total_tokens_column())


def backfill(execute: Callable[[sa.Executable, dict], sa.CursorResult], first, last, rows: int, opts: Options) -> int:
    """The rule over ``first..last`` in batches of ``batch_rows`` actual rows (keyset on id, so a sparse or huge
    id range costs no more than a dense one); returns the rows whose total it wrote."""
    progress = Progress(log, "backfill", rows, opts.progress_every)
    filled = done = 0
    low, next_end = first, batch_end(opts.rows_per_batch)
    while low is not None and low <= last:
        high = execute(next_end, {"low": low, "stop": last}).scalar()
        if high is None:
            break
        filled += execute(backfill_batch(), {"low": low, "high": high}).rowcount
        done = min(rows, done + opts.rows_per_batch)
        progress.at(done / rows if rows else 1.0)
        low = high + 1 if high < last else None
    return filled


def restore_held_over(bind) -> int:
    """Restore what an earlier downgrade set aside; the held table goes only when no row in it is left unexplained."""
    bind.execute(restore_statement())
    outcomes: dict[str, list[int]] = {"restored": [], "superseded": [], "changed": []}
    for event_id, outcome in bind.execute(held_rows_by_outcome()):
        outcomes[outcome].append(event_id)
    held = sum(len(ids) for ids in outcomes.values())
    log.info("      Restored %d of %d rows set aside by the BUILD-144 downgrade", len(outcomes["restored"]), held)
    if outcomes["superseded"]:
        log.warning(
            "      %d set-aside rows were not restored because their event was deleted or its id reused for another "
            "event after the downgrade (ids %s)",
            len(outcomes["superseded"]), some(outcomes["superseded"]),
        )  # fmt: skip
    done = outcomes["restored"] + outcomes["superseded"]
    for start in range(0, len(done), 500):
        bind.execute(holdover.delete().where(holdover.c.event_id.in_(done[start : start + 500])))
    if outcomes["changed"]:
        log.warning(
            "      %d set-aside rows stay in %s: pre-BUILD-144 code changed their event after the downgrade "
            "(ids %s), so neither value is dropped; compare each with llm_usage_events, fix the event by hand if "
            "the held values are right, then delete the row from %s",
            len(outcomes["changed"]), HOLDOVER, some(outcomes["changed"]), HOLDOVER,
        )  # fmt: skip
    else:
        bind.exec_driver_sql(f"DROP TABLE {HOLDOVER}")
    return len(outcomes["restored"])


def some(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:5])) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def upgrade() -> None:
    if context.is_offline_mode():
        offline_upgrade()
        return
    opts = options()
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    columns = {c["name"]: c for c in inspector.get_columns(TABLE)}
    add_total, add_default, relax = changes_needed(columns)
    # before any change: what would make the change wrong or fail halfway is refused in one sentence
    limit = integer_limit(bind.dialect.name, columns.get("total_tokens", {}).get("type"))
    refuse_totals_that_overflow(bind, overflowing(not add_total, limit), limit)
    refuse_checks_forbidding_total_only(bind)
    refuse_publications_that_forbid_updates(bind)
    refuse_columns_rewritten_on_update(bind)
    hooks = update_hooks(bind, TRIGGER)
    if system_versioned(bind):  # MariaDB: ALTER needs this, and every filled row leaves one history row
        bind.exec_driver_sql("SET SESSION system_versioning_alter_history = KEEP")
        log.info("      %s is system-versioned: each row the backfill fills keeps its old version as history", TABLE)
    stats = bind.execute(survey(has_total=not add_total)).one()

    try:
        if opts.online:
            filled = online_upgrade(add_total, add_default, relax, stats, opts)
        else:
            filled = default_upgrade(bind, columns, add_total, add_default, relax, stats, opts)
    except sa.exc.DBAPIError as error:
        if explained_by_the_environment(error):  # a lock, a read-only file, a privilege: env.py says it best
            raise
        raise CommandError(failed_midway(error, hooks, bind.dialect.name, opts.online)) from None
    # the report reads the table as it is now, not what the statements meant to do
    stats = bind.execute(survey(has_total=True)).one()
    log.info(
        "[3/3] Verification: total rows %d, exact splits %d, total-only (NULL splits) %d, sum of total_tokens %d",
        stats.rows, stats.exact, stats.total_only, stats.token_sum,
    )  # fmt: skip
    row_hooks = [name for name, per_row in hooks if per_row]
    if row_hooks and filled:
        log.info(
            "      the backfill's UPDATEs fired %s %d times each (%d firings): what they write (audit rows, say) "
            "was written that often",
            ", ".join(row_hooks), filled, filled * len(row_hooks),
        )  # fmt: skip
    if stats.lost:
        log.warning(
            "%d rows have both splits NULL and total_tokens 0: their usage was lost before this migration "
            "and cannot be recovered",
            stats.lost,
        )


def default_upgrade(bind, columns, add_total: bool, add_default: bool, relax: list[str], stats, opts) -> int:
    """Schema change, backfill and restore in the migration's one transaction; proven before it commits."""
    if bind.dialect.name == "sqlite":
        sqlite_schema_change(bind, add_total, add_default, relax)
    else:
        batch_schema_change(add_total, add_default, relax, columns)
    log.info("[1/3] Schema: %s", describe(add_total, add_default, relax))
    filled = backfill(bind.execute, stats.first, stats.last, stats.rows, opts)
    log_backfilled(filled)
    if sa.inspect(bind).has_table(HOLDOVER):
        restore_held_over(bind)
    if bind.dialect.name == "postgresql":  # left by an interrupted online run
        for statement in DROP_FILL_TRIGGER:
            bind.exec_driver_sql(statement)
    prove_backfilled(bind)
    return filled


def first_ids(bind, rows: sa.Select) -> list[int]:
    """Up to 6 ids of ``rows`` (a select of event ids), in order: enough for ``some`` to name 5 and say 'more'."""
    return bind.execute(rows.order_by(events.c.id).limit(6)).scalars().all()


def prove_backfilled(bind, after: str = "nothing was changed") -> None:
    """Counted in the same transaction, before the stamp: no row may still need its total, whatever the cause."""
    left = first_ids(bind, sa.select(events.c.id).where(NEEDS_TOTAL))
    if left:
        raise CommandError(
            f"After the backfill, rows of {TABLE} still have total_tokens 0 while a split is set (ids {some(left)}): "
            "a trigger or rule on the table, or another writer, undid the fill; see 'alembic upgrade head' "
            f"troubleshooting in the README; {after}."
        )


def failed_midway(
    error: sa.exc.DBAPIError, hooks: list[tuple[str, bool]], dialect: str, online: bool, step: str = "upgrade"
) -> str:
    """One sentence for a database error after the change started, naming what on the table likely caused it."""
    text = first_line(error)
    if getattr(error.orig, "sqlstate", None) == "57014":
        cause = "a statement_timeout set on the database or role cancelled a batch: pass a smaller -x batch_rows"
    elif hooks:
        cause = f"{', '.join(name for name, _ in hooks)} on {TABLE} run on each UPDATE and likely caused it: " \
                "fix or disable them for the migration"  # fmt: skip
    else:
        cause = "fix the cause the database names"
    if online:
        after = "the revision stays 0001 and re-running the same command resumes"
    elif dialect in ("mysql", "mariadb"):
        after = "the schema change stays (MariaDB commits DDL at once) and re-running the same command finishes"
    else:
        after = "nothing was changed"
    return f"The BUILD-144 {step} failed while changing {TABLE} ({text}): {cause}, then re-run; {after}."


def log_backfilled(filled: int) -> None:
    log.info(
        "[2/3] Backfilled %d rows: total_tokens = COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0) "
        "where total_tokens was 0 and a split is set (non-zero totals untouched)",
        filled,
    )


# --- PostgreSQL online mode ----------------------------------------------------------------------------

FILL_TOTAL_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
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


def with_lock_retries(connection, statements: list[str], opts: Options, changed: str = "nothing was changed") -> None:
    """Run ``statements`` in one short transaction that gives up on a lock after ``online_lock_timeout``, so
    readers and writers never queue behind it for long; retry a few times, then fail with one sentence."""
    for attempt in range(1, opts.online_retries + 1):
        try:
            connection.exec_driver_sql("BEGIN")
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{opts.online_lock_timeout}'")
            for statement in statements:
                connection.exec_driver_sql(statement)
            connection.exec_driver_sql("COMMIT")
            return
        except sa.exc.OperationalError as error:
            connection.exec_driver_sql("ROLLBACK")
            if getattr(error.orig, "sqlstate", None) != "55P03":
                raise
            log.info("      lock not granted within %s (attempt %d), retrying", opts.online_lock_timeout, attempt)
            time.sleep(min(0.2 * attempt, 2.0))
    raise CommandError(
        f"Could not lock {TABLE} within online_lock_timeout={opts.online_lock_timeout} in "
        f"{opts.online_retries} attempts: a long transaction holds it (see pg_stat_activity); {changed}."
    )


def drop_fill_trigger_quietly(connection, opts: Options) -> None:
    try:
        if connection.in_transaction():
            connection.exec_driver_sql("ROLLBACK")
        with_lock_retries(connection, DROP_FILL_TRIGGER, opts)
    except Exception as error:  # the failure being reported matters more; say what is left
        log.warning("      could not drop the online fill trigger %s (%s): drop it by hand", TRIGGER, error)


def online_upgrade(add_total: bool, add_default: bool, relax: list[str], stats, opts: Options) -> int:
    """Schema change committed at once, backfill in committed batches; the version is stamped afterwards, so
    a run killed midway is resumed by the next one (the rule skips rows already done)."""
    alter = []
    if add_total:
        alter.append("ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0")
    if add_default:
        alter.append("ALTER COLUMN total_tokens SET DEFAULT 0")
    alter += [f"ALTER COLUMN {split} DROP NOT NULL" for split in relax]
    context_ = op.get_context()
    with context_.autocommit_block():
        connection = context_.connection
        statements = [f"ALTER TABLE {TABLE} {', '.join(alter)}"] if alter else []
        statements += [
            FILL_TOTAL_FUNCTION,
            f"DROP TRIGGER IF EXISTS {TRIGGER} ON {TABLE}",
            f"CREATE TRIGGER {TRIGGER} BEFORE INSERT OR UPDATE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION {TRIGGER}()",
        ]
        with_lock_retries(
            connection,
            statements,
            opts,
            changed=f"{TABLE} was not changed (an unversioned database is now stamped 0001, from which a re-run "
            "continues)",
        )
        log.info("[1/3] Schema (online, committed): %s", describe(add_total, add_default, relax))
        # rows written from here on get their total from the trigger; every earlier row has an id <= last
        first, last = connection.execute(sa.select(sa.func.min(events.c.id), sa.func.max(events.c.id))).one()
        try:
            filled = backfill(connection.execute, first, last, stats.rows, opts)
            log_backfilled(filled)
            if sa.inspect(connection).has_table(HOLDOVER):
                restore_held_over(connection)
            prove_backfilled(connection, after="the revision stays 0001 and re-running the same command resumes")
        except Exception:  # never leave the fill trigger behind at 0001; a re-run fills what old code wrote
            drop_fill_trigger_quietly(connection, opts)
            raise
        with_lock_retries(
            connection,
            DROP_FILL_TRIGGER,
            opts,
            changed="every row is backfilled but the revision is still 0001 and the fill trigger stays: "
            "re-run the same command to finish",
        )
    return filled


# --- offline (--sql) -----------------------------------------------------------------------------------


def baseline_table() -> sa.Table:
    """The table as revision 0001 leaves it: what SQLite's batch mode copies from when it cannot reflect."""
    table = sa.Table(
        TABLE,
        sa.MetaData(),
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("provider", VARCHAR, nullable=False),
        sa.Column("model", VARCHAR, nullable=False),
        sa.Column("run_id", VARCHAR),
        sa.Column("phase_id", VARCHAR),
        sa.Column("role", VARCHAR, nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("is_doctor_call", sa.Boolean(create_constraint=False), nullable=False),
        sa.Column("doctor_model", VARCHAR),
        sa.Column("doctor_action", VARCHAR),
        sa.PrimaryKeyConstraint("id", name="pk_llm_usage_events"),
    )
    for column in ("id", "provider", "model", "run_id", "created_at"):
        sa.Index(f"ix_{TABLE}_{column}", table.c[column])
    return table


def build144_table() -> sa.Table:
    """The table as this revision leaves it: what an offline SQLite downgrade copies from."""
    table = baseline_table()
    table.c.prompt_tokens.nullable = table.c.completion_tokens.nullable = True
    table.append_column(total_tokens_column())
    return table


def offline_upgrade() -> None:
    """A script for a database at 0001: plain SQL, no reads in Python. The set-aside table may or may not be
    there (an earlier downgrade leaves it only when it set rows aside), so it is created if missing; the rows
    it restores or finds superseded are deleted from it and the table is kept (plain SQL cannot drop it only
    when empty): a row the old code changed after the downgrade stays there for the operator. Every script
    checks, before its stamp, that the table really ended in the state of the new revision."""
    dialect = context.get_context().dialect.name
    offline_preamble(dialect, "upgrade")
    if dialect == "sqlite":
        sqlite_offline_schema_change()
    else:
        batch_schema_change(True, False, list(SPLITS), copy_from=baseline_table())
    op.execute(events.update().where(NEEDS_TOTAL).values(total_tokens=split_sum))
    for statement in create_holdover(dialect):
        op.execute(statement)
    op.execute(restore_statement())
    op.execute(holdover.delete().where(sa.or_(is_restored(), ~sa.exists().where(same_event()))))
    # after every statement that can fire an operator's trigger: see the SQLite note below
    offline_refuse_unless(dialect, "0002", sa.select(events.c.id).where(NEEDS_TOTAL), "rows still need a total")


def offline_downgrade() -> None:
    dialect = context.get_context().dialect.name
    offline_preamble(dialect, "downgrade")
    for statement in create_holdover(dialect):
        op.execute(statement)
    op.execute(hold_over_statement())
    if dialect == "sqlite":  # DROP COLUMN before the UPDATE that can fire an operator's trigger (note below)
        op.execute(f"ALTER TABLE {TABLE} DROP COLUMN total_tokens")
        op.execute(placeholders_statement())
        sqlite_offline_edit(
            *delimited((f"{s} INTEGER,", f"{s} INTEGER NOT NULL,") for s in SPLITS),
            unless=f" AND NOT EXISTS (SELECT 1 FROM {TABLE} WHERE typeof(prompt_tokens) = 'null'"
            " OR typeof(completion_tokens) = 'null')",
        )
        offline_refuse_unless(dialect, "0001", None, "")
        return
    op.execute(placeholders_statement())
    offline_refuse_unless(dialect, "0001", not_set_aside(), "rows the old schema cannot hold were not set aside")
    downgrade_schema(copy_from=build144_table())


def literal_sql(statement) -> str:
    return str(statement.compile(dialect=context.get_context().dialect, compile_kwargs={"literal_binds": True}))


PG_CHECK = "DO $build144$ BEGIN IF EXISTS ({query}) THEN RAISE EXCEPTION '{message}'; END IF; END $build144$"
MYSQL_CHECK = "SELECT (SELECT 1 UNION ALL SELECT 2 FROM DUAL WHERE EXISTS ({query})) AS build144_check"
MYSQL_ON_UPDATE = f"""SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = '{TABLE}' AND LOWER(EXTRA) LIKE '%on update%'"""
MYSQL_NARROWING = f"""SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = '{TABLE}' AND COLUMN_NAME IN ('prompt_tokens', 'completion_tokens')
  AND (DATA_TYPE <> 'int' OR COLUMN_COMMENT <> '' OR COALESCE(COLUMN_DEFAULT, 'NULL') <> 'NULL')"""


def offline_check(dialect: str, query: str, message: str) -> None:
    """A statement that fails, so the script stops (PostgreSQL: its transaction aborts), when ``query`` finds a
    row. MariaDB has no DO block: there the failure is 'Subquery returns more than 1 row', explained above it."""
    text = f"BUILD-144 script refused: {message}; nothing was changed"
    if dialect == "postgresql":
        op.execute(PG_CHECK.format(query=query, message=text.replace("'", "''")))
    else:
        explanation = f"-- If the next statement fails with 'Subquery returns more than 1 row': {message}."
        op.get_context().impl.static_output(explanation)
        op.execute(MYSQL_CHECK.format(query=query))


def offline_preamble(dialect: str, direction: str) -> None:
    if dialect == "postgresql":  # every row seen; a role that row-level security would filter fails here
        op.execute("SET LOCAL row_security = off")
    elif dialect in ("mysql", "mariadb"):
        op.execute("SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'STRICT_ALL_TABLES')")
        if direction == "upgrade":
            offline_check(dialect, MYSQL_ON_UPDATE, "a column of llm_usage_events has ON UPDATE CURRENT_TIMESTAMP: "
                          "every UPDATE of the script would rewrite it; drop that clause first")  # fmt: skip
            narrowing = "prompt_tokens or completion_tokens is not a plain INT column (BIGINT, a default or a comment)"
            offline_check(dialect, MYSQL_NARROWING, f"{narrowing}: the script would narrow it; use the online command")
    if direction == "downgrade" and dialect != "sqlite":
        readers = PG_READERS_LITERAL if dialect == "postgresql" else MYSQL_READERS_LITERAL
        readers_message = (
            "a view, trigger, rule, CHECK or generated column reads total_tokens, which the downgrade drops"
        )
        offline_check(dialect, readers, f"{readers_message}: drop or rewrite it first")


def offline_refuse_unless(dialect: str, version: str, left: sa.Select | None, message: str) -> None:
    """The last check before Alembic's stamp: SQLite guards the stamp itself; the servers check the rows."""
    if dialect == "sqlite":
        sqlite_stamp_guard(version, STATE_0002 if version == "0002" else STATE_0001)
    elif left is not None:
        offline_check(dialect, literal_sql(left), f"{message} (a trigger or rule on the table?)")


# --- SQLite offline scripts: in place, stamped only if the table really ended as intended ----------------
# A SQL file applied with plain `sqlite3 DB < FILE` carries on after an error and commits at the end; so the
# scripts never rebuild the table (no RENAME that a view can break, no operator index or trigger dropped),
# and the stamp itself is guarded: a TEMP trigger on alembic_version rolls the whole transaction back when
# the table is not in the state the new revision promises at the moment Alembic's UPDATE stamps it.

STATE_0002 = f"""(SELECT count(*) FROM pragma_table_info('{TABLE}')
      WHERE name = 'total_tokens' AND "notnull" = 1 AND dflt_value = '0') = 1
  AND (SELECT count(*) FROM pragma_table_info('{TABLE}')
      WHERE name IN ('prompt_tokens', 'completion_tokens') AND "notnull" = 0) = 2
  AND NOT EXISTS (SELECT 1 FROM {TABLE}
      WHERE total_tokens = 0 AND COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0) <> 0)"""
STATE_0001 = f"""NOT EXISTS (SELECT 1 FROM pragma_table_info('{TABLE}') WHERE name = 'total_tokens')
  AND (SELECT count(*) FROM pragma_table_info('{TABLE}')
      WHERE name IN ('prompt_tokens', 'completion_tokens') AND "notnull" = 1) = 2
  AND NOT EXISTS (SELECT 1 FROM {TABLE}
      WHERE typeof(prompt_tokens) = 'null' OR typeof(completion_tokens) = 'null')"""


def sqlite_stamp_guard(version: str, state: str) -> None:
    op.execute(
        f"CREATE TEMP TRIGGER IF NOT EXISTS build144_stamp_guard_{version} BEFORE UPDATE ON main.alembic_version "
        f"WHEN NEW.version_num = '{version}' AND NOT ({state}) BEGIN SELECT RAISE(ROLLBACK, "
        f"'BUILD-144 script: {TABLE} did not end in the state of revision {version} (see the script header); "
        "everything this script did is rolled back'); END"
    )


def sqlite_offline_edit(*replacements: tuple[str, str], unless: str = "") -> None:
    """SQLite's documented writable_schema edit of the table's CREATE text; then this connection and every other
    re-read the schema, so nothing that follows (ALTER TABLE's offsets, the stamp guard) sees a stale one."""

    def literal(value: str) -> str:  # a tab or newline as char(9) / char(10), so the script stays one line each
        parts = re.split(r"([\t\n])", value)
        return " || ".join(f"char({ord(p)})" if p in "\t\n" and p else f"'{p}'" for p in parts if p)

    text = "sql"
    for old, new in replacements:
        text = f"replace({text}, {literal(old)}, {literal(new)})"
    op.execute("PRAGMA writable_schema = ON")
    op.execute(f"UPDATE sqlite_master SET sql = {text} WHERE type = 'table' AND name = '{TABLE}'{unless}")
    op.execute("PRAGMA writable_schema = RESET")  # this connection re-reads the schema (and the flag goes off)
    op.execute("CREATE TABLE build144_schema_reload (x INTEGER)")  # a schema change: every other connection too
    op.execute("DROP TABLE build144_schema_reload")


SQLITE_SCRIPT_HEADER = """-- BUILD-144 {direction} script for SQLite, for a database at revision {start}.
-- Needs SQLite >= 3.35 and no other process using the database. Changes llm_usage_events in place (ALTER TABLE and
-- SQLite's documented writable_schema edit of its definition): the table is never copied, and your indexes, views
-- and triggers on it stay as they are. Apply with `sqlite3 DB < FILE`, `sqlite3 -bail DB < FILE` or Python's
-- executescript: the final stamp is guarded, so unless the table ends in the state of revision {end}, everything
-- the script did is rolled back (an error printed before it says why) and the database stays at {start}."""


def delimited(pairs) -> list[tuple[str, str]]:
    """Each (old, new) text edit anchored on what may precede a column name in a CREATE TABLE, so that a column
    of the operator's whose name ends the same way (cached_prompt_tokens) is never edited."""
    return [(f"{d}{old}", f"{d}{new}") for old, new in pairs for d in (" ", "\t", "\n", ",", "(")]


def sqlite_offline_schema_change() -> None:
    op.get_context().impl.static_output(SQLITE_SCRIPT_HEADER.format(direction="upgrade", start="0001", end="0002"))
    op.execute(f"ALTER TABLE {TABLE} ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0")
    sqlite_offline_edit(*delimited((f"{s} INTEGER NOT NULL", f"{s} INTEGER") for s in SPLITS))
    sqlite_offline_edit(  # a BUILD-144 table made by create_all() has the column without its DEFAULT 0
        *delimited([("total_tokens INTEGER NOT NULL", "total_tokens INTEGER NOT NULL DEFAULT 0")]),
        unless=" AND sql NOT LIKE '%total_tokens INTEGER NOT NULL DEFAULT%'",
    )


# --- downgrade -----------------------------------------------------------------------------------------


def hold_over_statement() -> sa.Insert:
    """Copy the rows the old schema cannot hold, skipping any a resumed downgrade already holds."""
    h = holdover.c
    return holdover.insert().from_select(
        [h.event_id, h.provider, h.model, h.role, h.created_at, h.prompt_tokens, h.completion_tokens, h.total_tokens],
        sa.select(events.c.id, events.c.provider, events.c.model, events.c.role, events.c.created_at,
                  prompt, completion, total)
        .where(NOT_HOLDABLE, ~sa.exists().where(h.event_id == events.c.id)),
    )  # fmt: skip


def placeholders_statement() -> sa.Update:
    """NULL splits of held-over rows read 0 in the old schema (never a guessed split)."""
    return (
        events.update()
        .where(events.c.id.in_(sa.select(holdover.c.event_id)), sa.or_(prompt.is_(None), completion.is_(None)))
        .values(prompt_tokens=sa.func.coalesce(prompt, 0), completion_tokens=sa.func.coalesce(completion, 0))
    )


def downgrade_schema(columns: dict[str, dict] | None = None, copy_from=None) -> None:
    with op.batch_alter_table(TABLE, copy_from=copy_from) as batch:
        for split in SPLITS:
            batch.alter_column(split, **as_it_is(split, columns), existing_nullable=True, nullable=False)
        batch.drop_column("total_tokens")


def downgrade() -> None:
    dialect = context.get_context().dialect.name
    if context.is_offline_mode():
        offline_downgrade()
        return
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    columns = {c["name"]: c for c in inspector.get_columns(TABLE)}
    if "total_tokens" not in columns:
        raise CommandError(
            f"{TABLE} has no total_tokens although the database is stamped 0002 (stamped without being migrated?): "
            "there is nothing to downgrade; run 'python -m autopack verify' for the commands that fix it; "
            "nothing was changed."
        )
    has_holdover = inspector.has_table(HOLDOVER)
    refuse_objects_reading_total_tokens(bind, TRIGGER)
    refuse_downgrade_that_would_lose(bind, columns, has_holdover)
    refuse_columns_rewritten_on_update(bind)
    if system_versioned(bind):
        bind.exec_driver_sql("SET SESSION system_versioning_alter_history = KEEP")
    hooks = update_hooks(bind, TRIGGER)  # read before: after a failure the transaction takes no more queries
    try:
        set_aside_and_downgrade(bind, dialect, columns, has_holdover)
    except sa.exc.DBAPIError as error:
        if explained_by_the_environment(error):
            raise
        raise CommandError(failed_midway(error, hooks, dialect, online=False, step="downgrade")) from None


def refuse_downgrade_that_would_lose(bind, columns: dict[str, dict], has_holdover: bool) -> None:
    """What the downgrade, or the upgrade after it, could not give back: refused before any change."""
    relaxed = [s for s in SPLITS if columns[s]["nullable"]]
    if len(relaxed) < len(SPLITS):
        raise CommandError(
            f"{TABLE}'s {', '.join(s for s in SPLITS if s not in relaxed)} is still NOT NULL although the database "
            "is stamped 0002 (stamped without being migrated?): run 'python -m autopack verify' for the commands "
            "that fix it; nothing was changed."
        )
    limit = integer_limit(bind.dialect.name, None)
    wide = first_ids(bind, sa.select(events.c.id).where(wide_split_sum > limit))
    if wide:  # the next upgrade would refuse these rows' sums: the round trip would stop halfway
        raise CommandError(
            f"Rows of {TABLE} whose prompt_tokens + completion_tokens exceed what an INTEGER total can hold (ids "
            f"{some(wide)}) would stop the next upgrade: the round trip would not be lossless, so the downgrade "
            "refuses; correct those splits first; nothing was changed."
        )
    if integer_limit(bind.dialect.name, columns["total_tokens"]["type"]) > limit:  # the operator widened it
        big = first_ids(bind, sa.select(events.c.id).where(total > limit))
        if big:
            raise CommandError(
                f"total_tokens is {columns['total_tokens']['type']} here and rows hold totals the INTEGER column "
                f"the next upgrade re-creates cannot (ids {some(big)}): the round trip would not be lossless, so "
                "the downgrade refuses; nothing was changed."
            )
    if system_versioned(bind):  # history keeps every old version, NULL splits included: NOT NULL cannot take them
        versions = bind.exec_driver_sql(
            f"SELECT COUNT(*) FROM {TABLE} FOR SYSTEM_TIME ALL WHERE prompt_tokens IS NULL OR completion_tokens IS NULL"
        ).scalar()
        if versions:
            raise CommandError(
                f"{TABLE} is system-versioned and {versions} row versions (history included) hold NULL splits, "
                "which the pre-BUILD-144 NOT NULL columns cannot take: the downgrade refuses; keep this revision, "
                "or remove system versioning first; nothing was changed."
            )
    if has_holdover:  # kept by an upgrade: a held row whose event changed again must not be overwritten
        h = holdover.c
        stale = (
            bind.execute(
                sa.select(h.event_id)
                .join(events, events.c.id == h.event_id)
                .where(
                    NOT_HOLDABLE,
                    ~sa.and_(
                        prompt.is_not_distinct_from(h.prompt_tokens),
                        completion.is_not_distinct_from(h.completion_tokens),
                        total == h.total_tokens,
                    ),
                )
                .order_by(h.event_id)
                .limit(6)
            )
            .scalars()
            .all()
        )
        if stale:
            raise CommandError(
                f"{HOLDOVER} still holds rows an earlier upgrade kept (ids {some(stale)}) whose events have changed "
                "again: setting them aside now would mix old and new values; compare each with llm_usage_events, "
                f"delete the held row once resolved, and re-run; nothing was changed."
            )


def set_aside_and_downgrade(bind, dialect: str, columns: dict[str, dict], has_holdover: bool) -> None:
    held_before = bind.execute(sa.select(sa.func.count()).select_from(holdover)).scalar_one() if (
        has_holdover) else 0  # fmt: skip
    for statement in create_holdover(dialect):
        bind.exec_driver_sql(statement)
    bind.execute(hold_over_statement())
    # counted, not taken from INSERT ... SELECT's rowcount, which psycopg reports as -1
    held = bind.execute(sa.select(sa.func.count()).select_from(holdover)).scalar_one()
    if held_before:
        log.info("%s already held %d rows (an interrupted downgrade, or rows an upgrade kept)", HOLDOVER, held_before)
    if held:
        bind.execute(placeholders_statement())
        log.info(
            "Set aside %d rows the pre-BUILD-144 schema cannot hold (NULL splits or a total that is not their sum) "
            "in %s; their NULL splits read 0 until 'alembic upgrade head' restores them",
            held - held_before, HOLDOVER,
        )  # fmt: skip
    prove_set_aside(bind)
    if not held:
        op.drop_table(HOLDOVER)
        log.info("No rows needed setting aside: every row's total is the sum of its splits")
    if dialect == "sqlite":
        sqlite_downgrade_schema(bind)
    else:
        downgrade_schema(columns)


def not_set_aside() -> sa.Select:
    """Rows the pre-BUILD-144 schema cannot hold that are not in the set-aside table (after the placeholders)."""
    unheld = ~events.c.id.in_(sa.select(holdover.c.event_id))
    return sa.select(events.c.id).where(sa.or_(prompt.is_(None), completion.is_(None), sa.and_(NOT_HOLDABLE, unheld)))


def prove_set_aside(bind) -> None:
    """Before the splits turn NOT NULL and total_tokens goes: every row the old schema cannot hold is held."""
    left = first_ids(bind, not_set_aside())
    if left:
        raise CommandError(
            f"Rows of {TABLE} the pre-BUILD-144 schema cannot hold were not set aside (ids {some(left)}): a trigger "
            f"or rule on the table or another writer interfered; nothing was changed."
        )


def sqlite_downgrade_schema(bind) -> None:
    """NOT NULL back in place (no row holds a NULL split any more) and DROP COLUMN; else a rebuild."""
    try:
        sqlite_edit_definition(
            bind,
            TABLE,
            lambda sql: add_not_null(add_not_null(sql, SPLITS[0]), SPLITS[1]),
            {split: {"notnull": 1} for split in SPLITS},
        )
        bind.exec_driver_sql(f"ALTER TABLE {TABLE} DROP COLUMN total_tokens")
        return
    except (NotEditableInPlace, sa.exc.OperationalError) as reason:
        sqlite_rebuild(bind, str(reason).splitlines()[0], downgrade_schema, dropped_columns=("total_tokens",))


def sqlite_rebuild(bind, reason: str, change: Callable[[], None], dropped_columns: tuple[str, ...] = ()) -> None:
    """Alembic's batch rebuild, with the operator's indexes, views and triggers kept; refused in one sentence
    when the table's definition holds what a rebuild cannot carry over."""
    losses = sqlite_rebuild_losses(bind, TABLE)
    if losses:
        raise CommandError(
            f"{TABLE} cannot be changed in place ({reason}) and rebuilding it would lose {' and '.join(losses)} "
            "from its definition: write prompt_tokens and completion_tokens as plain 'INTEGER NOT NULL' columns in "
            "its CREATE TABLE (or make the change by hand), then re-run; nothing was changed."
        )
    log.info("      %s is rebuilt (%s)", TABLE, reason)
    with sqlite_objects_kept(bind, TABLE, log, dropped_columns=dropped_columns):
        change()
