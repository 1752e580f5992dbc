"""BUILD-144: every token counted — total_tokens always populated, token splits nullable.

Upgrade, doing only what the table is missing:
  1. adds ``total_tokens INTEGER NOT NULL DEFAULT 0`` (or just its DEFAULT 0, if an older script added
     the column without one) and makes ``prompt_tokens`` / ``completion_tokens`` nullable, so a
     provider that reports only a total is recorded as total-only (splits NULL) instead of a guessed
     split;
  2. backfills ``total_tokens = COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)`` on rows
     that have a split and a total of 0. A non-zero total is never changed: on a total-only row it is
     the only record of that usage;
  3. puts back, exactly, the rows that an earlier downgrade of this revision set aside;
  4. logs a report: total rows, exact-split rows, total-only rows, the sum of total_tokens, and how
     many rows had lost their usage before this migration (both splits NULL, total 0).

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.build144")

TABLE = "llm_usage_events"
HOLDOVER = "llm_usage_events_build144_holdover"
SPLITS = ("prompt_tokens", "completion_tokens")

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

# Rows the pre-BUILD-144 schema cannot hold as they are.
NOT_HOLDABLE = sa.or_(prompt.is_(None), completion.is_(None), total != prompt + completion)

holdover_columns = (
    sa.Column("event_id", sa.Integer(), primary_key=True),
    sa.Column("provider", sa.String(), nullable=False),
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("role", sa.String(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("prompt_tokens", sa.Integer(), nullable=True),
    sa.Column("completion_tokens", sa.Integer(), nullable=True),
    sa.Column("total_tokens", sa.Integer(), nullable=False),
)
holdover = sa.table(HOLDOVER, *(sa.column(c.name, c.type) for c in holdover_columns))


def baseline_table() -> sa.Table:
    """The table as revision 0001 leaves it: what SQLite's batch mode copies from when it cannot reflect (--sql)."""
    table = sa.Table(
        TABLE,
        sa.MetaData(),
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("run_id", sa.String()),
        sa.Column("phase_id", sa.String()),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("is_doctor_call", sa.Boolean(create_constraint=False), nullable=False),
        sa.Column("doctor_model", sa.String()),
        sa.Column("doctor_action", sa.String()),
        sa.PrimaryKeyConstraint("id", name="pk_llm_usage_events"),
    )
    for column in ("id", "provider", "model", "run_id", "created_at"):
        sa.Index(f"ix_{TABLE}_{column}", table.c[column])
    return table


def backfill_statement() -> sa.Update:
    """The backfill rule: rows with a split and no total get the sum of their splits; no other row changes."""
    return (
        events.update()
        .where(total == 0, sa.or_(prompt.is_not(None), completion.is_not(None)), split_sum != 0)
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


def report_statement() -> sa.Select:
    both_null = sa.and_(prompt.is_(None), completion.is_(None))

    def count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    return sa.select(
        sa.func.count(),
        count(sa.and_(prompt.is_not(None), completion.is_not(None))),
        count(sa.and_(both_null, total > 0)),
        sa.func.coalesce(sa.func.sum(total), 0),
        count(sa.and_(both_null, total == 0)),
    ).select_from(events)


@contextmanager
def sqlite_views_and_triggers_kept() -> Iterator[None]:
    """SQLite's table rebuild cannot rename the new table into place while a view names it, and drops the
    table's triggers: set the operator's views and triggers aside around the rebuild and recreate them as they
    were, in their original order."""
    if context.is_offline_mode() or op.get_bind().dialect.name != "sqlite":
        yield
        return
    kept = (
        op.get_bind()
        .exec_driver_sql(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('view', 'trigger') AND sql IS NOT NULL "
            "ORDER BY rowid"
        )
        .all()
    )
    for kind, name, _ in reversed(kept):
        op.execute(f'DROP {kind.upper()} "{name}"')
    yield
    for _, _, sql in kept:
        op.execute(sql)


def schema_changes(inspector: sa.Inspector | None) -> tuple[bool, bool, list[str]]:
    """(add total_tokens, add its DEFAULT 0, splits to relax) for this table; offline: the baseline's."""
    if inspector is None:
        return True, False, list(SPLITS)
    columns = {c["name"]: c for c in inspector.get_columns(TABLE)}
    has_total = "total_tokens" in columns
    needs_default = has_total and columns["total_tokens"]["default"] is None
    return not has_total, needs_default, [s for s in SPLITS if not columns[s]["nullable"]]


def upgrade() -> None:
    offline = context.is_offline_mode()
    bind = None if offline else op.get_bind()
    inspector = None if offline else sa.inspect(bind)
    add_total, add_default, relax = schema_changes(inspector)

    done = []
    copy_from = baseline_table() if offline else None
    with sqlite_views_and_triggers_kept(), op.batch_alter_table(TABLE, copy_from=copy_from) as batch:
        if add_total:
            batch.add_column(sa.Column("total_tokens", sa.Integer(), nullable=False, server_default=sa.text("0")))
            done.append("added total_tokens INTEGER NOT NULL DEFAULT 0")
        if add_default:
            batch.alter_column(
                "total_tokens", existing_type=sa.Integer(), existing_nullable=False, server_default=sa.text("0")
            )
            done.append("set DEFAULT 0 on total_tokens")
        for split in relax:
            batch.alter_column(split, existing_type=sa.Integer(), existing_nullable=False, nullable=True)
        if relax:
            done.append(f"made {' and '.join(relax)} nullable")
    log.info("[1/3] Schema: %s", "; ".join(done) or "already BUILD-144, nothing to change")

    backfilled = op.get_bind().execute(backfill_statement()).rowcount if not offline else None
    if offline:
        op.execute(backfill_statement())
        return
    log.info(
        "[2/3] Backfilled %d rows: total_tokens = COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0) "
        "where total_tokens was 0 and a split is set (non-zero totals untouched)",
        backfilled,
    )
    if inspector.has_table(HOLDOVER):
        held = bind.execute(sa.select(sa.func.count()).select_from(holdover)).scalar_one()
        restored = bind.execute(restore_statement()).rowcount
        op.drop_table(HOLDOVER)
        log.info("      Restored %d of %d rows set aside by the BUILD-144 downgrade", restored, held)
        if restored != held:
            log.warning(
                "      %d set-aside rows were not restored: their event was changed or its id reused after the "
                "downgrade; they keep their current values",
                held - restored,
            )

    rows, exact, total_only, token_sum, lost = bind.execute(report_statement()).one()
    log.info(
        "[3/3] Verification: total rows %d, exact splits %d, total-only (NULL splits) %d, sum of total_tokens %d",
        rows, exact, total_only, token_sum,
    )  # fmt: skip
    if lost:
        log.warning(
            "%d rows have both splits NULL and total_tokens 0: their usage was lost before this migration "
            "and cannot be recovered",
            lost,
        )


def downgrade() -> None:
    bind = op.get_bind()
    if sa.inspect(bind).has_table(HOLDOVER):
        raise CommandError(
            f"{HOLDOVER} already exists (left by an earlier downgrade): run 'alembic upgrade head' to restore "
            "its rows first; nothing was changed."
        )
    op.create_table(HOLDOVER, *holdover_columns)
    h = holdover.c
    bind.execute(
        holdover.insert().from_select(
            [h.event_id, h.provider, h.model, h.role, h.created_at, h.prompt_tokens, h.completion_tokens,
             h.total_tokens],
            sa.select(events.c.id, events.c.provider, events.c.model, events.c.role, events.c.created_at,
                      prompt, completion, total).where(NOT_HOLDABLE),
        )
    )  # fmt: skip
    # counted, not taken from INSERT ... SELECT's rowcount, which psycopg reports as -1
    held = bind.execute(sa.select(sa.func.count()).select_from(holdover)).scalar_one()
    if held:
        bind.execute(
            events.update()
            .where(sa.or_(prompt.is_(None), completion.is_(None)))
            .values(prompt_tokens=sa.func.coalesce(prompt, 0), completion_tokens=sa.func.coalesce(completion, 0))
        )
        log.info(
            "Set aside %d rows the pre-BUILD-144 schema cannot hold (NULL splits or a total that is not their sum) "
            "in %s; their NULL splits read 0 until 'alembic upgrade head' restores them",
            held, HOLDOVER,
        )  # fmt: skip
    else:
        op.drop_table(HOLDOVER)
        log.info("No rows needed setting aside: every row's total is the sum of its splits")

    with sqlite_views_and_triggers_kept(), op.batch_alter_table(TABLE) as batch:
        for split in SPLITS:
            batch.alter_column(split, existing_type=sa.Integer(), existing_nullable=True, nullable=False)
        batch.drop_column("total_tokens")
