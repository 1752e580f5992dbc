"""BUILD-144: every token counted — total_tokens always populated, token splits nullable.

Upgrade, doing only what the table is missing: add ``total_tokens INTEGER NOT NULL DEFAULT 0`` (or just its
DEFAULT 0), make ``prompt_tokens`` / ``completion_tokens`` nullable (a provider that reports only a total is
recorded total-only, never as a guessed split), backfill the totals (``backfill_rule``: a non-zero total is
never changed), put back the rows an earlier downgrade set aside, build ``ix_llm_usage_events_is_doctor_call`` where
the table lacks it (``doctor_index``: the pre-BUILD-144 schema declares it, revision 0001 makes it on an empty
database, but databases upstream's own script upgraded never got it), and report what the table now holds.
Downgrade, losing nothing: set aside the rows the old schema cannot hold, splits NOT NULL again, drop
``total_tokens``; the is_doctor_call index stays (it is the old schema's). Everything that would go wrong is
refused in one sentence before any change (``preflight_checks``). The engine strategies live in
``autopack.migrations``, one module each.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-02
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from autopack.migrations import (
    doctor_index,
    fill_trigger,
    holdover,
    mariadb_schema_change,
    postgres_rewrite,
    sqlite_schema_edit,
)
from autopack.migrations.batched_backfill import backfill, prove_backfilled
from autopack.migrations.offline_scripts import offline_downgrade, offline_upgrade
from autopack.migrations.online_backfill import drop_leftovers, online_upgrade
from autopack.migrations.online_downgrade import online_downgrade
from autopack.migrations.options import options_of_this_run
from autopack.migrations.plan import Plan, offline_plan, plan_from_table, with_rows_counted
from autopack.migrations.preflight_checks import refuse_what_would_go_wrong
from autopack.migrations.report import failures_in_one_sentence, report, what_a_failure_leaves
from autopack.migrations.table_inspection import update_hooks
from autopack.migrations.usage_table import SPLITS, TABLE, as_it_is, baseline_table, build144_table, total_tokens_column

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.build144")


def upgrade() -> None:
    if context.is_offline_mode():  # a script for a DBA, written for a database at 0001
        plan = offline_plan(context.get_context().dialect.name, options_of_this_run())
        offline_upgrade(plan, change_schema=lambda: new_schema(plan, copy_from=baseline_table()))
        return
    bind = op.get_bind()
    plan = plan_from_table(bind, options_of_this_run())  # 1. find the state
    refuse_what_would_go_wrong(bind, plan, "upgrade")  # ... and refuse, before any change, what would fail
    plan = with_rows_counted(bind, plan)
    hooks = update_hooks(bind)  # the operator's triggers the backfill's UPDATEs will fire
    keep_history(bind, plan)
    with failures_in_one_sentence(plan, hooks, "upgrade"):
        if plan.online:  # steps 2-4 with the schema change and each batch committed at once
            filled = online_upgrade(plan)
            doctor_index.ensure(bind, plan.options)  # concurrently (PostgreSQL) or in place (MariaDB), if missing
        else:  # steps 2-4 in the migration's one transaction, proven before it commits
            if plan.dialect == "postgresql":
                drop_leftovers(bind)  # of an interrupted online run: its fill trigger, an online downgrade's CHECKs
            change_schema(bind, plan, hooks)  # 2. change the schema
            filled = fill_totals(bind, plan, hooks)  # 3. backfill
            if plan.has_holdover:
                holdover.restore(bind)  # 4. restore the rows an earlier downgrade set aside
            doctor_index.ensure(bind, plan.options)  # the baseline's index, if the table lacks it
            prove_backfilled(bind, after=what_a_failure_leaves(plan, "upgrade"))
    report(bind, filled, hooks)  # 5. report what the table now holds


def downgrade() -> None:
    if context.is_offline_mode():  # a script for a DBA, written for a database at 0002
        plan = offline_plan(context.get_context().dialect.name, options_of_this_run())
        offline_downgrade(plan, change_schema=lambda: old_schema(plan, copy_from=build144_table()))
        return
    bind = op.get_bind()
    plan = plan_from_table(bind, options_of_this_run())  # 1. find the state
    refuse_what_would_go_wrong(bind, plan, "downgrade")  # ... and what the round trip could not give back
    keep_history(bind, plan, say=False)
    hooks = update_hooks(bind)  # read before: after a failure the transaction takes no more queries
    with failures_in_one_sentence(plan, hooks, "downgrade"):
        if plan.online:  # PostgreSQL: CHECKs validated while the application runs; no scan under ACCESS EXCLUSIVE
            online_downgrade(plan)
            return
        fill_trigger.drop(bind)  # an online upgrade's, if finish-online never ran: its column goes
        if plan.dialect == "postgresql":  # writers wait from here (reads go on): none writes between 2. and 3.
            bind.exec_driver_sql(f"LOCK TABLE {TABLE} IN EXCLUSIVE MODE")
        held = holdover.hold_over(bind, plan.dialect)  # 2. set aside what the old schema cannot hold
        holdover.prove_set_aside(bind)
        if plan.dialect in ("mysql", "mariadb"):  # 2. again and 3. under LOCK TABLES: DDL commits at once there
            mariadb_schema_change.downgrade_schema(bind, plan)
            if not holdover.held_rows(bind):
                op.drop_table(holdover.HOLDOVER)
                log.info("No rows needed setting aside: every row's total is the sum of its splits")
            return
        if not held:
            op.drop_table(holdover.HOLDOVER)
            log.info("No rows needed setting aside: every row's total is the sum of its splits")
        if plan.dialect == "sqlite":  # 3. splits NOT NULL again, total_tokens dropped
            sqlite_schema_edit.downgrade_in_place(bind, rebuild=lambda: old_schema(plan))
        else:
            old_schema(plan)


# --- the schema change and the backfill: the portable path, and the engine-specific ones called by name -----


def change_schema(bind: sa.Connection, plan: Plan, hooks: list[tuple[str, bool]]) -> None:
    if plan.dialect == "sqlite":  # in place by SQLite's documented procedure; a rebuild when it does not apply
        sqlite_schema_edit.upgrade_in_place(bind, plan, rebuild=lambda: new_schema(plan))
    elif plan.dialect == "postgresql":  # catalog-only ALTERs
        new_schema(plan)
    else:  # MariaDB: one ALTER that restates each split as it is, one table copy
        mariadb_schema_change.change_schema(bind, plan, hooks)
    log.info("[1/3] Schema: %s", plan.describe())


def fill_totals(bind: sa.Connection, plan: Plan, hooks: list[tuple[str, bool]]) -> int:
    if plan.dialect == "postgresql":  # one table rewrite (the table keeps its size), unless UPDATEs are needed
        return postgres_rewrite.backfill(bind, plan, hooks)
    if mariadb_schema_change.fills_in_copy(plan, hooks):  # the ALTER's table copy computed them
        return mariadb_schema_change.filled_in_copy(bind, plan)
    return backfill(bind.execute, plan.first_id, plan.last_id, plan.rows, plan.options)


def new_schema(plan: Plan, copy_from: sa.Table | None = None) -> None:
    """The change as Alembic operations (the portable path): ALTERs on PostgreSQL and MariaDB, a table rebuild on
    SQLite; ``copy_from`` when the table cannot be read (offline)."""
    with op.batch_alter_table(TABLE, copy_from=copy_from) as batch:
        if plan.add_total:
            batch.add_column(total_tokens_column())
        if plan.add_default:
            reflected = plan.columns["total_tokens"]["type"]
            default = {"existing_nullable": False, "existing_server_default": None, "server_default": sa.text("0")}
            batch.alter_column("total_tokens", existing_type=reflected, **default)
        for split in plan.relax:
            batch.alter_column(split, **as_it_is(split, plan.columns), existing_nullable=False, nullable=True)


def old_schema(plan: Plan, copy_from: sa.Table | None = None) -> None:
    """The reverse, portable: splits NOT NULL again (every NULL split is set aside by now), total_tokens dropped."""
    with op.batch_alter_table(TABLE, copy_from=copy_from) as batch:
        for split in SPLITS:
            batch.alter_column(split, **as_it_is(split, plan.columns), existing_nullable=True, nullable=False)
        batch.drop_column("total_tokens")


def keep_history(bind: sa.Connection, plan: Plan, say: bool = True) -> None:
    """MariaDB system-versioned table: ALTER needs this, and every row the backfill fills keeps its old version."""
    if plan.system_versioned:
        bind.exec_driver_sql("SET SESSION system_versioning_alter_history = KEEP")
        if say:
            log.info(
                "      %s is system-versioned: each row the backfill fills keeps its old version as history",
                TABLE,
            )
