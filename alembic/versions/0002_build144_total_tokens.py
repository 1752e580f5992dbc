"""BUILD-144: every token counted — total_tokens always populated, token splits nullable.

Upgrade, doing only what the table is missing: add ``total_tokens INTEGER NOT NULL DEFAULT 0`` (or just its
DEFAULT 0), make ``prompt_tokens`` / ``completion_tokens`` nullable (a provider that reports only a total is
recorded total-only, never as a guessed split), backfill the totals (``backfill_rule``: a non-zero total is
never changed), put back the rows an earlier downgrade set aside, build ``ix_llm_usage_events_is_doctor_call`` where
the table lacks it (``doctor_index``: the pre-BUILD-144 schema declares it, revision 0001 makes it on an empty
database, but databases upstream's own script upgraded never got it), and report what the table now holds.
Downgrade, losing nothing: set aside the rows the old schema cannot hold, splits NOT NULL again, drop
``total_tokens``; the is_doctor_call index stays (it is the old schema's). Everything that would go wrong is
refused in one sentence before any change (``preflight_checks``). Each engine's way of doing it is its strategy,
one module each in ``autopack.migrations.build144.engines``, chosen once below.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-02
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from autopack.migrations.build144 import doctor_index, engines, holdover
from autopack.migrations.build144.offline_scripts import offline_script
from autopack.migrations.build144.plan import Plan, offline_plan, plan_from_table
from autopack.migrations.build144.preflight_checks import refuse_what_would_go_wrong
from autopack.migrations.build144.report import failures_in_one_sentence, report
from autopack.migrations.build144.table_inspection import update_hooks
from autopack.migrations.build144.usage_aggregate import drop_usage_aggregate, drop_usage_aggregate_in_script
from autopack.migrations.build144.usage_table import (
    SPLITS,
    TABLE,
    as_it_is,
    baseline_table,
    build144_table,
    total_tokens_column,
)
from autopack.migrations.runtime.options import options_of_this_run

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.build144")


def upgrade() -> None:
    if context.is_offline_mode():  # a script for a DBA, written for a database at 0001
        plan = offline_plan(context.get_context().dialect.name, options_of_this_run())
        offline_script(plan, "upgrade", change_schema=lambda: new_schema(plan, copy_from=baseline_table()))
        return
    bind = op.get_bind()
    engine = engines.of(bind)  # the engine's strategy, chosen once: engines/sqlite.py, postgresql.py, mariadb.py
    plan = plan_from_table(bind, options_of_this_run())  # 1. find the state
    plan = refuse_what_would_go_wrong(bind, plan, "upgrade")  # ... refuse, before any change, what would fail;
    # its one scan counts the rows, their ids and the totals that would overflow
    hooks = update_hooks(bind)  # the operator's triggers the backfill's UPDATEs will fire
    keep_history(bind, plan)
    with failures_in_one_sentence(plan, hooks, "upgrade"):
        if plan.online:  # steps 2-4 with the schema change and each batch committed at once
            filled = engine.online_upgrade(plan)
            doctor_index.ensure(bind, plan.options)  # concurrently (PostgreSQL) or in place (MariaDB), if missing
        else:  # steps 2-4 in the migration's one transaction, proven before it commits
            engine.change_schema(bind, plan, hooks, new_schema)  # 2. change the schema
            log.info("[1/3] Schema: %s", plan.describe())
            filled = engine.backfill(bind, plan, hooks)  # 3. backfill
            if plan.has_holdover:
                holdover.restore(bind)  # 4. restore the rows an earlier downgrade set aside
            doctor_index.ensure(bind, plan.options)  # the baseline's index, if the table lacks it
    proving = None if plan.online else engine.failure_leaves(plan, "upgrade")  # online: each batch proven already
    report(bind, filled, hooks, proving)  # 5. report what the table now holds, proving no row still needs a total


def downgrade() -> None:
    if context.is_offline_mode():  # a script for a DBA, written for a database at 0002
        plan = offline_plan(context.get_context().dialect.name, options_of_this_run())
        drop_usage_aggregate_in_script(plan.dialect)
        offline_script(plan, "downgrade", change_schema=lambda: old_schema(plan, copy_from=build144_table()))
        return
    bind = op.get_bind()
    plan = plan_from_table(bind, options_of_this_run())  # 1. find the state
    refuse_what_would_go_wrong(bind, plan, "downgrade")  # ... and what the round trip could not give back
    drop_usage_aggregate(bind)  # the dashboard's hourly aggregate: its triggers read total_tokens
    keep_history(bind, plan, say=False)
    hooks = update_hooks(bind)  # read before: after a failure the transaction takes no more queries
    with failures_in_one_sentence(plan, hooks, "downgrade"):
        # 2. set aside what the old schema cannot hold, 3. splits NOT NULL again, total_tokens dropped
        engines.of(bind).downgrade(bind, plan, old_schema)


# --- the schema change as Alembic operations: the portable path the engines' strategies call ---------------


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
