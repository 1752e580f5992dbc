"""``llm_usage_events`` as the revisions see it: its columns, declared once, and a light table to query it.

Revisions never import the application's models (they change; a revision must not): like MLflow's and
Airflow's trees, they describe the table they change here, with ``sa.table()`` for queries and full
``sa.Column`` definitions only where DDL is written from them.
"""

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

TABLE = "llm_usage_events"
SPLITS = ("prompt_tokens", "completion_tokens")
# the baseline's indexes: is_doctor_call's too (upstream's model declared it with the column, before BUILD-144)
INDEXED = ("id", "provider", "model", "run_id", "created_at", "is_doctor_call")
# the helper CHECKs of the PostgreSQL online downgrade (online_downgrade), one per split
NOT_NULL_CHECKS = {split: f"build144_{split}_not_null" for split in SPLITS}
DROP_NOT_NULL_CHECKS = f"ALTER TABLE {TABLE} " + ", ".join(
    f"DROP CONSTRAINT IF EXISTS {name}" for name in NOT_NULL_CHECKS.values()
)
# the online mode's own trigger (and its function) on the table: never one of the operator's readers or hooks.
# 'zz_': PostgreSQL fires a table's BEFORE ROW triggers in name order, so the fill runs last and sums the splits as
# the operator's own triggers leave them (MariaDB fires them in creation order: the fill is created last)
FILL_TRIGGER = "zz_llm_usage_events_build144_fill_total"
EARLIER_FILL_TRIGGER = "llm_usage_events_build144_fill_total"  # its name until 2026-12: still recognised, dropped
# VARCHAR without a length, as Autopack always declared it; MySQL/MariaDB need one.
VARCHAR = sa.String().with_variant(sa.String(255), "mysql", "mariadb")


def baseline_columns() -> list[sa.Column]:
    """The columns of the pre-BUILD-144 table (revision 0001): splits NOT NULL, no total_tokens."""
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", VARCHAR, nullable=False),
        sa.Column("model", VARCHAR, nullable=False),
        sa.Column("run_id", VARCHAR, nullable=True),
        sa.Column("phase_id", VARCHAR, nullable=True),
        sa.Column("role", VARCHAR, nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("is_doctor_call", sa.Boolean(), nullable=False),
        sa.Column("doctor_model", VARCHAR, nullable=True),
        sa.Column("doctor_action", VARCHAR, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_llm_usage_events"),
    ]


def total_tokens_column() -> sa.Column:
    """BUILD-144's column: INTEGER NOT NULL DEFAULT 0 (a server default, so old code's INSERTs still work)."""
    return sa.Column("total_tokens", sa.Integer(), nullable=False, server_default=sa.text("0"))


def as_it_is(split: str, columns: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Alembic's existing_* arguments for ``split`` as the table reflects it (INTEGER, no default, no comment when
    the table is not read, as offline): MariaDB's MODIFY COLUMN restates the whole column from them, so a BIGINT
    split stays BIGINT."""
    existing = columns.get(split, {})
    default = existing.get("default")
    return {
        "existing_type": existing.get("type", sa.Integer()),
        "existing_server_default": sa.text(default) if default is not None else None,
        "existing_comment": existing.get("comment"),
    }


def baseline_table() -> sa.Table:
    """The table as revision 0001 leaves it, indexes included: what SQLite's batch mode copies from offline."""
    table = sa.Table(TABLE, sa.MetaData(), *baseline_columns())
    for column in INDEXED:
        sa.Index(f"ix_{TABLE}_{column}", table.c[column])
    return table


def build144_table() -> sa.Table:
    """The table as revision 0002 leaves it: what an offline SQLite downgrade copies from."""
    table = baseline_table()
    table.c.prompt_tokens.nullable = table.c.completion_tokens.nullable = True
    table.append_column(total_tokens_column())
    return table


# For queries: only the columns the revisions read or write. The id binds as BIGINT, so that an operator's
# BIGINT id past 2^31 binds as one.
events = sa.table(
    TABLE,
    sa.column("id", sa.BigInteger),
    sa.column("provider", sa.String),
    sa.column("model", sa.String),
    sa.column("role", sa.String),
    sa.column("created_at", sa.DateTime),
    sa.column("prompt_tokens", sa.Integer),
    sa.column("completion_tokens", sa.Integer),
    sa.column("total_tokens", sa.Integer),
)
prompt, completion, total = events.c.prompt_tokens, events.c.completion_tokens, events.c.total_tokens


def first_ids(bind: sa.Connection, rows: sa.Select) -> list[int]:
    """Up to 6 ids of ``rows`` (a select of event ids), in order: enough for ``some`` to name 5 and say 'more'.
    Ordered by ``id + 0``: one sequential scan and a top-6 sort, where ``ORDER BY id`` lets PostgreSQL walk the
    whole primary-key index when no row matches (the usual case), at about twice the cost."""
    return list(bind.execute(rows.order_by(events.c.id + 0).limit(6)).scalars().all())


def some(ids: list[int]) -> str:
    """Ids for a message: the first 5, then 'and more' (``first_ids`` reads 6: whether there are more, not how many)."""
    return ", ".join(map(str, ids[:5])) + (" and more" if len(ids) > 5 else "")
