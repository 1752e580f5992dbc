"""Baseline: llm_usage_events as it was before BUILD-144.

What it is: the table Autopack created before BUILD-144: ``prompt_tokens`` and ``completion_tokens``
NOT NULL, no ``total_tokens``, with its six indexes — ``is_doctor_call``'s included: upstream's model declared it
with the column (2025-12-02), four weeks before BUILD-144.

Existing databases: databases made by ``Base.metadata.create_all()`` or by Autopack's old standalone
script already have the table but no ``alembic_version``. On those this revision creates nothing:
it recognises which known state the table is in, logs it, and adopts it; BUILD-144 (0002) then does
only what is missing (the is_doctor_call index included: upstream's script that added the doctor columns to
older databases never made it). A table that matches none of the known states is refused with a message and
nothing is changed.

Downgrade: drops the table it created (and an empty BUILD-144 holdover table), and only while it holds no
rows: with rows in either it refuses in one sentence and changes nothing. A failed 0002 upgrade on MariaDB or
in PostgreSQL online mode leaves the database at 0001, where ``alembic downgrade -1`` would otherwise delete
every usage row; this baseline never drops data it did not create.

Revision ID: 0001
Revises:
Create Date: 2025-12-01
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError

from autopack.migrations.build144.holdover import drop_with_the_baseline
from autopack.migrations.build144.messages import refusal
from autopack.migrations.build144.usage_table import INDEXED, TABLE, baseline_columns
from autopack.migrations.runtime.engine_traits import where_new_tables_go

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.build144")

BASELINE_COLUMNS = {column.name for column in baseline_columns() if isinstance(column, sa.Column)}
TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens", "total_tokens")

# The four states operators' databases are known to be in, by (has total_tokens, splits nullable).
KNOWN_STATES = {
    (False, False): "pre-BUILD-144 (splits NOT NULL, no total_tokens)",
    (False, True): "intermediate release (splits nullable, no total_tokens)",
    (True, False): "old BUILD-144 script (total_tokens added, splits still NOT NULL)",
    (True, True): "full BUILD-144 schema made by create_all()",
}


def refuse(reason: str) -> CommandError:
    return refusal("unknown_schema", table=TABLE, reason=reason)


def legacy_state(columns: dict[str, dict]) -> str:
    """Name the known state of an existing, unversioned table, or refuse it with one sentence."""
    missing = sorted(BASELINE_COLUMNS - columns.keys())
    if missing:
        raise refuse(f"missing {', '.join(missing)}")
    not_integer = [c for c in TOKEN_COLUMNS if c in columns and not isinstance(columns[c]["type"], sa.Integer)]
    if not_integer:
        raise refuse(f"{', '.join(not_integer)} not INTEGER")
    if "total_tokens" in columns and columns["total_tokens"]["nullable"]:
        raise refuse("total_tokens is nullable")
    prompt_nullable = columns["prompt_tokens"]["nullable"]
    if prompt_nullable != columns["completion_tokens"]["nullable"]:
        raise refuse("only one of prompt_tokens/completion_tokens is nullable")
    return KNOWN_STATES[("total_tokens" in columns, bool(prompt_nullable))]


def upgrade() -> None:
    if not context.is_offline_mode():
        bind = op.get_bind()
        inspector = sa.inspect(bind)
        if inspector.has_table(TABLE):
            columns = {c["name"]: c for c in inspector.get_columns(TABLE)}
            log.info("Adopting existing %s, detected state: %s", TABLE, legacy_state(columns))
            return
        where = where_new_tables_go(bind)  # a search_path or database the operator did not expect shows here
        if where is not None:
            log.info("No %s found: creating it in %s", TABLE, where)
    op.create_table(TABLE, *baseline_columns())
    for column in INDEXED:
        op.create_index(f"ix_{TABLE}_{column}", TABLE, [column])


def downgrade() -> None:
    bind = None if context.is_offline_mode() else op.get_bind()
    if bind is not None and sa.inspect(bind).has_table(TABLE):
        refuse_to_drop_rows(TABLE, bind.execute(sa.select(sa.func.count()).select_from(sa.table(TABLE))).scalar_one())
    drop_with_the_baseline(bind, refuse=refuse_to_drop_rows)  # an empty set-aside table BUILD-144 may have left
    op.drop_table(TABLE)  # its indexes with it (an adopted table may lack some of the baseline's)


def refuse_to_drop_rows(table: str, rows: int) -> None:
    if rows:
        raise refusal("baseline_would_drop_rows", table=table, rows=rows)
