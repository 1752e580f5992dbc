"""Revisions an earlier build of this tree had and this one does not, each restamped as the one holding its schema.

``0003`` built ``ix_llm_usage_events_is_doctor_call`` after BUILD-144, on the wrong belief that upstream Autopack
added the index later; upstream declared it with the column, before BUILD-144, so the index is now part of the
baseline (0001) and made sure of by BUILD-144's upgrade (0002). A database an earlier build brought to 0003 holds
exactly 0002's schema: it is restamped 0002 (one log line) before Alembic reads the revision, so ``current``,
``upgrade head``, ``downgrade -1``, ``stamp`` and ``init_db()`` work on it as on any database at 0002.
"""

import logging

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext

log = logging.getLogger("alembic.build144")

# retired revision -> (the revision holding its schema, why)
RETIRED = {
    "0003": (
        "0002",
        "0003 only built ix_llm_usage_events_is_doctor_call, which is now part of the baseline and of BUILD-144's "
        "upgrade",
    ),
}


def holding(revision: str) -> str:
    """The revision whose schema ``revision`` stands for (itself unless retired)."""
    return RETIRED.get(revision, (revision, ""))[0]


def restamp_retired(context: MigrationContext) -> None:
    """Restamp a retired revision as the revision holding its schema, committed at once (the UPDATE is the same
    whoever runs it, so it needs no migration lock)."""
    connection = context.connection
    assert connection is not None
    version = sa.table(context.version_table, sa.column("version_num"), schema=context.version_table_schema)
    for head in context.get_current_heads():
        if head not in RETIRED:
            continue
        new, why = RETIRED[head]
        connection.execute(version.update().where(version.c.version_num == head).values(version_num=new))
        connection.commit()
        log.info("The database was stamped %s by an earlier build of this tree: restamped %s (%s)", head, new, why)
