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
import time
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError

from autopack.migration_ops import (
    PROGRESS_EVERY_S,
    NotEditableInPlace,
    Progress,
    add_default_zero,
    add_not_null,
    drop_not_null,
    id_batches,
    sqlite_edit_definition,
    sqlite_objects_kept,
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

events = sa.table(
    TABLE,
    sa.column("id", sa.Integer),
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


def new_total(old_total: sa.ColumnElement[int]) -> sa.ColumnElement[int]:
    """THE backfill rule: a total already there stays; a total of 0 becomes the sum of the splits (NULL as 0)."""
    return sa.case((old_total == 0, split_sum), else_=old_total)


# The rows the rule changes: a split is set, the total is 0, and the splits do not sum to 0 either.
NEEDS_TOTAL = sa.and_(total == 0, split_sum != 0)
# Rows the pre-BUILD-144 schema cannot hold as they are.
NOT_HOLDABLE = sa.or_(prompt.is_(None), completion.is_(None), total != prompt + completion)


def total_tokens_column() -> sa.Column:
    """BUILD-144's column: INTEGER NOT NULL DEFAULT 0 (a server default, so old code's INSERTs still work)."""
    return sa.Column("total_tokens", sa.Integer(), nullable=False, server_default=sa.text("0"))


def holdover_columns() -> tuple[sa.Column, ...]:
    return (
        sa.Column("event_id", sa.Integer(), primary_key=True),
        sa.Column("provider", VARCHAR, nullable=False),
        sa.Column("model", VARCHAR, nullable=False),
        sa.Column("role", VARCHAR, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
    )


holdover = sa.table(HOLDOVER, *(sa.column(c.name, c.type) for c in holdover_columns()))


def options() -> dict:
    x = context.get_x_argument(as_dictionary=True)
    online = x.get("online", "false").lower() in ("1", "true", "yes", "on")
    return {
        "online": online,
        "batch_rows": int(x.get("batch_rows", 20_000 if online else 100_000)),
        "online_lock_timeout": x.get("online_lock_timeout", "500ms"),
        "online_retries": int(x.get("online_retries", 20)),
        "progress_every": float(x.get("progress_every", PROGRESS_EVERY_S)),
    }


def backfill_batch() -> sa.Update:
    """The backfill rule applied to one primary-key range ``(low, high]``, to the rows it changes only."""
    return (
        events.update()
        .where(events.c.id > sa.bindparam("low"), events.c.id <= sa.bindparam("high"), NEEDS_TOTAL)
        .values(total_tokens=split_sum)
    )


def restore_statement() -> sa.Update:
    """Put held-over rows back, only onto the same event still carrying the placeholders the downgrade wrote."""
    h = holdover.c

    def held(column: sa.ColumnElement) -> sa.ScalarSelect:
        return sa.select(column).where(h.event_id == events.c.id).scalar_subquery()

    same_event = sa.exists().where(
        h.event_id == events.c.id,
        h.provider == events.c.provider,
        h.model == events.c.model,
        h.role == events.c.role,
        h.created_at == events.c.created_at,
        prompt == sa.func.coalesce(h.prompt_tokens, 0),
        completion == sa.func.coalesce(h.completion_tokens, 0),
    )
    return (
        events.update()
        .where(same_event)
        .values(
            prompt_tokens=held(h.prompt_tokens),
            completion_tokens=held(h.completion_tokens),
            total_tokens=held(h.total_tokens),
        )
    )


def survey(has_total: bool) -> sa.Select:
    """One scan for everything the upgrade reports and batches by, with the rule applied to the totals."""
    totals = new_total(total if has_total else sa.literal(0))
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


def batch_schema_change(add_total: bool, add_default: bool, relax: list[str], copy_from=None) -> None:
    """The change as Alembic operations: ALTERs on PostgreSQL and MySQL, a table rebuild on SQLite."""
    with op.batch_alter_table(TABLE, copy_from=copy_from) as batch:
        if add_total:
            batch.add_column(total_tokens_column())
        if add_default:
            batch.alter_column(
                "total_tokens",
                existing_type=sa.Integer(),
                existing_nullable=False,
                existing_server_default=None,
                server_default=sa.text("0"),
            )
        for split in relax:  # existing_*: MySQL's MODIFY COLUMN restates the whole column
            batch.alter_column(
                split, existing_type=sa.Integer(), existing_nullable=False, existing_server_default=None, nullable=True
            )


def sqlite_schema_change(bind, add_total: bool, add_default: bool, relax: list[str]) -> None:
    """In place when the table's definition allows it (no rebuild, indexes untouched), else a rebuild."""

    def edit(sql: str) -> str:
        for split in relax:
            sql = drop_not_null(sql, split)
        return add_default_zero(sql, "total_tokens") if add_default else sql

    try:
        if add_default or relax:
            sqlite_edit_definition(bind, TABLE, edit)
    except NotEditableInPlace as reason:
        log.info("      %s is rebuilt (%s)", TABLE, reason)
        with sqlite_objects_kept(bind, TABLE, log):
            batch_schema_change(add_total, add_default, relax)
        return
    if add_total:
        op.add_column(TABLE, total_tokens_column())


def backfill(execute: Callable[[sa.Update, dict], int], first, last, rows: int, opts: dict) -> int:
    progress = Progress(log, "backfill", rows, opts["progress_every"])
    filled = 0
    statement = backfill_batch()
    for low, high in id_batches(first, last, opts["batch_rows"]):
        filled += execute(statement, {"low": low, "high": high})
        progress.at((high - first + 1) / (last - first + 1))
    return filled


def restore_held_over(bind) -> int:
    held = bind.execute(sa.select(sa.func.count()).select_from(holdover)).scalar_one()
    restored = bind.execute(restore_statement()).rowcount
    bind.exec_driver_sql(f"DROP TABLE {HOLDOVER}")
    log.info("      Restored %d of %d rows set aside by the BUILD-144 downgrade", restored, held)
    if restored != held:
        log.warning(
            "      %d set-aside rows were not restored: their event was changed or its id reused after the "
            "downgrade; they keep their current values",
            held - restored,
        )
    return restored


def upgrade() -> None:
    if context.is_offline_mode():
        offline_upgrade()
        return
    opts = options()
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    columns = {c["name"]: c for c in inspector.get_columns(TABLE)}
    add_total, add_default, relax = changes_needed(columns)
    stats = bind.execute(survey(has_total=not add_total)).one()

    if opts["online"] and bind.dialect.name == "postgresql":
        filled, restored = online_upgrade(add_total, add_default, relax, stats, opts)
    else:
        if bind.dialect.name == "sqlite":
            sqlite_schema_change(bind, add_total, add_default, relax)
        else:
            batch_schema_change(add_total, add_default, relax)
        log.info("[1/3] Schema: %s", describe(add_total, add_default, relax))
        filled = backfill(lambda s, p: bind.execute(s, p).rowcount, stats.first, stats.last, stats.rows, opts)
        log_backfilled(filled)
        restored = restore_held_over(bind) if inspector.has_table(HOLDOVER) else 0
        if bind.dialect.name == "postgresql":  # left by an interrupted online run
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {TABLE}")
            bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {TRIGGER}()")
    if restored or opts["online"]:  # the survey no longer describes every row
        stats = bind.execute(survey(has_total=True)).one()
    log.info(
        "[3/3] Verification: total rows %d, exact splits %d, total-only (NULL splits) %d, sum of total_tokens %d",
        stats.rows, stats.exact, stats.total_only, stats.token_sum,
    )  # fmt: skip
    if stats.lost:
        log.warning(
            "%d rows have both splits NULL and total_tokens 0: their usage was lost before this migration "
            "and cannot be recovered",
            stats.lost,
        )


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


def with_lock_retries(connection, statements: list[str], opts: dict) -> None:
    """Run ``statements`` in one short transaction that gives up on a lock after ``online_lock_timeout``, so
    readers and writers never queue behind it for long; retry a few times, then fail with one sentence."""
    for attempt in range(1, opts["online_retries"] + 1):
        try:
            connection.exec_driver_sql("BEGIN")
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{opts['online_lock_timeout']}'")
            for statement in statements:
                connection.exec_driver_sql(statement)
            connection.exec_driver_sql("COMMIT")
            return
        except sa.exc.OperationalError as error:
            connection.exec_driver_sql("ROLLBACK")
            if getattr(error.orig, "sqlstate", None) != "55P03":
                raise
            log.info("      lock not granted within %s (attempt %d), retrying", opts["online_lock_timeout"], attempt)
            time.sleep(min(0.2 * attempt, 2.0))
    raise CommandError(
        f"Could not lock {TABLE} within online_lock_timeout={opts['online_lock_timeout']} in "
        f"{opts['online_retries']} attempts: a long transaction holds it (see pg_stat_activity); nothing was changed."
    )


def online_upgrade(add_total: bool, add_default: bool, relax: list[str], stats, opts: dict) -> tuple[int, int]:
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
        with_lock_retries(connection, statements, opts)
        log.info("[1/3] Schema (online, committed): %s", describe(add_total, add_default, relax))
        # rows written from here on get their total from the trigger; every earlier row has an id <= last
        first, last = connection.execute(sa.select(sa.func.min(events.c.id), sa.func.max(events.c.id))).one()
        filled = backfill(lambda s, p: connection.execute(s, p).rowcount, first, last, stats.rows, opts)
        log_backfilled(filled)
        restored = restore_held_over(connection) if sa.inspect(connection).has_table(HOLDOVER) else 0
        with_lock_retries(
            connection, [f"DROP TRIGGER IF EXISTS {TRIGGER} ON {TABLE}", f"DROP FUNCTION IF EXISTS {TRIGGER}()"], opts
        )
    return filled, restored


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
    """A script for any database at 0001: plain SQL, no reads in Python. The holdover table may or may not be
    there (an earlier downgrade leaves it only when it set rows aside), so it is created if missing, consumed
    and dropped."""
    batch_schema_change(True, False, list(SPLITS), copy_from=baseline_table())
    op.execute(events.update().where(NEEDS_TOTAL).values(total_tokens=split_sum))
    op.create_table(HOLDOVER, *holdover_columns(), if_not_exists=True)
    op.execute(restore_statement())
    op.drop_table(HOLDOVER)


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


def downgrade_schema(copy_from=None) -> None:
    with op.batch_alter_table(TABLE, copy_from=copy_from) as batch:
        for split in SPLITS:
            batch.alter_column(
                split, existing_type=sa.Integer(), existing_nullable=True, existing_server_default=None, nullable=False
            )
        batch.drop_column("total_tokens")


def downgrade() -> None:
    if context.is_offline_mode():
        op.create_table(HOLDOVER, *holdover_columns(), if_not_exists=True)
        op.execute(hold_over_statement())
        op.execute(placeholders_statement())
        downgrade_schema(copy_from=build144_table())
        return
    bind = op.get_bind()
    if sa.inspect(bind).has_table(HOLDOVER):
        # only an interrupted downgrade on an engine whose DDL is not transactional (MySQL) leaves one at 0002
        log.info("Resuming an interrupted downgrade: %s already holds rows", HOLDOVER)
    else:
        op.create_table(HOLDOVER, *holdover_columns())
    bind.execute(hold_over_statement())
    # counted, not taken from INSERT ... SELECT's rowcount, which psycopg reports as -1
    held = bind.execute(sa.select(sa.func.count()).select_from(holdover)).scalar_one()
    if held:
        bind.execute(placeholders_statement())
        log.info(
            "Set aside %d rows the pre-BUILD-144 schema cannot hold (NULL splits or a total that is not their sum) "
            "in %s; their NULL splits read 0 until 'alembic upgrade head' restores them",
            held, HOLDOVER,
        )  # fmt: skip
    else:
        op.drop_table(HOLDOVER)
        log.info("No rows needed setting aside: every row's total is the sum of its splits")
    if bind.dialect.name == "sqlite":
        sqlite_downgrade_schema(bind)
    else:
        downgrade_schema()


def sqlite_downgrade_schema(bind) -> None:
    """NOT NULL back in place (no row holds a NULL split any more) and DROP COLUMN; else a rebuild."""
    try:
        sqlite_edit_definition(bind, TABLE, lambda sql: add_not_null(add_not_null(sql, SPLITS[0]), SPLITS[1]))
        bind.exec_driver_sql(f"ALTER TABLE {TABLE} DROP COLUMN total_tokens")
        return
    except (NotEditableInPlace, sa.exc.OperationalError) as reason:
        log.info("      %s is rebuilt (%s)", TABLE, str(reason).splitlines()[0])
    with sqlite_objects_kept(bind, TABLE, log, dropped_columns=("total_tokens",)):
        downgrade_schema()
