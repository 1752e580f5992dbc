"""Index is_doctor_call, as upstream Autopack's model declares it: ``ix_llm_usage_events_is_doctor_call``.

Upgrade: build the index unless the table already has it (databases made by a later Autopack's
``create_all()`` do: adopted as they are). PostgreSQL with ``-x online=true`` builds it with
``CREATE INDEX CONCURRENTLY``, so writers go on, and rebuilds an INVALID one an interrupted build left;
elsewhere it is an ordinary index. Downgrade: drop it. The engines' details: ``autopack.migrations.doctor_index``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import context, op

from autopack.migrations import doctor_index
from autopack.migrations.options import options_of_this_run

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if context.is_offline_mode():  # a script for a DBA: it checks inside the database what it cannot look at now
        doctor_index.offline(upgrade=True, dialect=context.get_context().dialect.name)
        return
    doctor_index.create(op.get_bind(), options_of_this_run())


def downgrade() -> None:
    if context.is_offline_mode():
        doctor_index.offline(upgrade=False, dialect=context.get_context().dialect.name)
        return
    doctor_index.drop(op.get_bind(), options_of_this_run())
