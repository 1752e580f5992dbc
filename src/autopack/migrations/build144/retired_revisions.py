"""Revisions an earlier build of this tree had and this one does not, and what a database they left needs.

``0003`` built ``ix_llm_usage_events_is_doctor_call`` after BUILD-144, on the wrong belief that upstream Autopack
added the index later; upstream declared it with the column, before BUILD-144, so the index is now part of the
baseline (0001) and made sure of by BUILD-144's upgrade (0002). A database an earlier build brought to 0003 holds
0002's schema: it is restamped 0002 (one log line) before Alembic reads the revision, so ``current``, ``upgrade
head``, ``downgrade -1``, ``stamp`` and ``init_db()`` work on it as on any database at 0002.

That earlier build's 0002 did not make the index, and its ``downgrade -1`` from 0003 dropped it: a database it
left at 0002 lacks the index while stamped head. An upgrade finds that (or an INVALID index an interrupted build
left) and runs 0002's upgrade again, which does only what is missing, instead of saying "Nothing to do".
"""

import logging

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext

from autopack.migrations.build144 import doctor_index
from autopack.migrations.build144.messages import refusal

log = logging.getLogger("alembic.build144")

# retired revision -> the revision holding its schema
RETIRED = {"0003": "0002"}
WHY = "0003 only built ix_llm_usage_events_is_doctor_call, now part of the baseline and of BUILD-144's upgrade"


def holding(revision: str) -> str:
    """The revision whose schema ``revision`` stands for (itself unless retired)."""
    return RETIRED.get(revision, revision)


def refuse_retired_arguments(revisions: str | list[str] | None) -> None:
    """A command naming a retired revision (``upgrade 0001:0003 --sql``, ``stamp 0003``: an earlier README's
    commands) is one sentence naming the revision to use, before anything is written."""
    named = [revisions] if isinstance(revisions, str) else list(revisions or [])
    for argument in named:
        for part in str(argument).replace(":", " ").replace("@", " ").split():
            bare = part.split("+")[0].split("-")[0]
            if bare in RETIRED:
                raise refusal("retired_revision", bare=bare, why=WHY, instead=RETIRED[bare])


def restamp_retired(context: MigrationContext, upgrading: bool) -> None:
    """Restamp a retired revision as the revision holding its schema; when ``upgrading``, step a head whose table
    lacks what 0002's upgrade makes back to 0001, so that this run finishes it. Run inside the command's own
    transaction: a refusal later in the run rolls it back with everything else."""
    connection = context.connection
    assert connection is not None
    version = sa.table(context.version_table, sa.column("version_num", sa.String), schema=context.version_table_schema)
    heads = context.get_current_heads()
    for head in heads:
        if head not in RETIRED:
            continue
        new = RETIRED[head]
        stamp = version.delete() if new in heads else version.update().values(version_num=new)
        write(connection, stamp.where(version.c.version_num == head), head)
        log.info("The database was stamped %s by an earlier build of this tree: restamped %s (%s)", head, new, WHY)
    heads = context.get_current_heads()
    if upgrading and heads == ("0002",) and index_to_finish(connection):
        write(connection, version.update().values(version_num="0001").where(version.c.version_num == "0002"), "0002")
        log.info(
            "The database is stamped 0002 but %s is missing or INVALID (an earlier build of this tree made it in a "
            "revision 0003 and dropped it on 'downgrade -1'): running 0002's upgrade again, which does only what is "
            "missing",
            doctor_index.INDEX,
        )


def index_to_finish(connection: sa.Connection) -> bool:
    """Whether the table lacks the baseline's index (or has it INVALID); an impostor is left to ``verify``."""
    if not sa.inspect(connection).has_table(doctor_index.TABLE):
        return False
    state, impostor = doctor_index.what_carries_the_name(connection)
    return impostor is None and state != "valid"


def write(connection: sa.Connection, statement: sa.Executable, stamped: str) -> None:
    try:
        with connection.begin_nested():
            connection.execute(statement)
    except sa.exc.DBAPIError:
        raise refusal("cannot_restamp_retired", stamped=stamped, why=WHY) from None
