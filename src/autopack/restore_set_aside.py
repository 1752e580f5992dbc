"""``python -m autopack restore-set-aside``: put back rows a downgrade set aside and then did not finish.

A downgrade that stops after its set-aside step (MariaDB commits that step with its DDL; an interrupted online
downgrade commits it too) leaves the revision at 0002 with the set-aside rows' NULL splits reading 0 and their
values in ``llm_usage_events_build144_holdover``. ``alembic upgrade head`` then has nothing to run, so this command
does what the upgrade's restore step does (``holdover.restore``: onto the same event only, while it still carries
the placeholders) and reports, from the table, what it restored and what stays. ``verify`` names it.
"""

from dataclasses import dataclass

import sqlalchemy as sa

from autopack.migrations.build144 import holdover
from autopack.migrations.build144.messages import refusal
from autopack.migrations.build144.usage_table import TABLE

COMMAND = holdover.RESTORE_COMMAND


@dataclass(frozen=True)
class RestoredSetAside:
    restored: int
    left: int

    def sentence(self) -> str:
        stays = (
            f"{self.left} rows stay in {holdover.HOLDOVER} (their event changed since: compare them by hand)"
            if self.left
            else f"{holdover.HOLDOVER} is gone"
        )
        return f"Restored {self.restored} set-aside rows to {TABLE}; {stays}."


def restore_set_aside(connection: sa.Connection) -> RestoredSetAside:
    inspector = sa.inspect(connection)
    if "total_tokens" not in {c["name"] for c in inspector.get_columns(TABLE)}:
        raise refusal("restore_at_0001", table=TABLE)
    if not inspector.has_table(holdover.HOLDOVER):
        return RestoredSetAside(0, 0)
    restored = holdover.restore(connection)
    left = holdover.held_rows(connection) or 0
    if connection.dialect.name == "sqlite":
        connection.commit()
    return RestoredSetAside(restored, left)
