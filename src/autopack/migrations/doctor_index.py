"""Revision 0003's index, ``ix_llm_usage_events_is_doctor_call``: the one upstream Autopack's model declares.

Legacy databases made by a later Autopack's ``create_all()`` already have it, others do not; the upgrade looks
on the table itself (by name) and builds only what is missing:

- PostgreSQL, default mode: ``CREATE INDEX`` in the migration's one transaction (writers wait for the build,
  as for the rest of the default mode).
- PostgreSQL, ``-x online=true``: ``CREATE INDEX CONCURRENTLY`` outside any transaction, so writers go on. A
  concurrent build that fails or is stopped leaves an INVALID index behind; the next run drops it
  (``DROP INDEX CONCURRENTLY``) and builds it again. A partitioned table cannot be indexed concurrently as a
  whole: its parent gets the index ``ON ONLY`` itself (catalog only), each partition its own, built
  concurrently and attached; a re-run builds only the partitions still missing one.
- MariaDB: ``CREATE INDEX``, which InnoDB builds in place while writers go on; online mode asks for exactly
  that (``ALGORITHM=INPLACE LOCK=NONE``), so a server that cannot refuses instead of locking.
- SQLite: ``CREATE INDEX`` in the migration's transaction.

An index of that name on other columns is the operator's: refused in one sentence, nothing changed. The
downgrade drops the index only from this table (concurrently in online mode where PostgreSQL can).
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

from autopack.migrations.usage_table import TABLE

log = logging.getLogger("alembic.build144")

INDEX = f"ix_{TABLE}_is_doctor_call"
COLUMN = "is_doctor_call"
# the default mode is one transaction, where CONCURRENTLY cannot run: squawk is told so at each such statement
DEFAULT_MODE_CREATE = "-- squawk-ignore require-concurrent-index-creation\n"
DEFAULT_MODE_DROP = "-- squawk-ignore require-concurrent-index-deletion\n"
PG_INDEX_STATE = """
SELECT x.indisvalid, c.relkind = 'p' AS partitioned
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
WHERE x.indrelid = CAST(:table AS regclass) AND i.relname = :index
"""
PG_PARTITIONS = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relname, c.relkind = 'p',
       (SELECT quote_ident(xn.nspname) || '.' || quote_ident(xc.relname) FROM pg_inherits ih
        JOIN pg_class xc ON xc.oid = ih.inhrelid JOIN pg_namespace xn ON xn.oid = xc.relnamespace
        JOIN pg_index x ON x.indexrelid = ih.inhrelid
        WHERE ih.inhparent = CAST(:index AS regclass) AND x.indrelid = c.oid) AS attached
FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE h.inhparent = CAST(:table AS regclass) ORDER BY c.relname
"""


def found(bind: sa.Connection) -> str | None:
    """``'valid'``, ``'invalid'`` (an interrupted concurrent build) or ``None``; refuses one on other columns."""
    ours = [ix for ix in sa.inspect(bind).get_indexes(TABLE) if ix["name"] == INDEX]
    if not ours:
        return None
    if ours[0]["column_names"] != [COLUMN]:
        columns = ", ".join(str(c) for c in ours[0]["column_names"])
        raise CommandError(
            f"{TABLE} already has an index named {INDEX} on ({columns}), not on ({COLUMN}): rename or drop it, "
            "then re-run the same command; nothing was changed."
        )
    if bind.dialect.name == "postgresql":
        valid, _ = bind.execute(sa.text(PG_INDEX_STATE), {"table": TABLE, "index": INDEX}).one()
        return "valid" if valid else "invalid"
    return "valid"


def partitioned(bind: sa.Connection) -> bool:
    query = "SELECT relkind = 'p' FROM pg_class WHERE oid = CAST(:table AS regclass)"
    return bool(bind.execute(sa.text(query), {"table": TABLE}).scalar())


def create(bind: sa.Connection, online: bool) -> None:
    """Build the index unless the table has it (see the module's docstring for each engine and mode)."""
    state = found(bind)
    dialect = bind.dialect.name
    if state == "valid":
        log.info("[1/1] Index: %s already there (adopted)", INDEX)
        return
    if dialect == "postgresql" and online:
        with op.get_context().autocommit_block(), concurrent_failures_in_one_sentence():
            build_concurrently(bind, state)
    elif dialect == "postgresql":
        if state == "invalid":
            bind.exec_driver_sql(f"{DEFAULT_MODE_DROP}DROP INDEX {INDEX}")
        bind.exec_driver_sql(f"{DEFAULT_MODE_CREATE}CREATE INDEX {INDEX} ON {TABLE} ({COLUMN})")
    elif dialect in ("mysql", "mariadb"):
        online_only = " ALGORITHM=INPLACE LOCK=NONE" if online else ""
        bind.exec_driver_sql(f"CREATE INDEX {INDEX} ON {TABLE} ({COLUMN}){online_only}")
    else:
        bind.exec_driver_sql(f"CREATE INDEX {INDEX} ON {TABLE} ({COLUMN})")
    how = (" concurrently" if dialect == "postgresql" else " in place, writers going on") if online else ""
    log.info("[1/1] Index: built %s on %s (%s)%s", INDEX, TABLE, COLUMN, how)


def build_concurrently(bind: sa.Connection, state: str | None) -> None:
    """PostgreSQL online mode, in autocommit: writers go on while each index is built."""
    if partitioned(bind):
        bind.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {INDEX} ON ONLY {TABLE} ({COLUMN})")
        attach_partitions(bind)
        return
    if state == "invalid":
        log.info("      dropping the INVALID %s an interrupted concurrent build left, to build it again", INDEX)
        bind.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
    bind.exec_driver_sql(f"CREATE INDEX CONCURRENTLY {INDEX} ON {TABLE} ({COLUMN})")


def attach_partitions(bind: sa.Connection) -> None:
    """Each partition without an index attached to the parent's gets one, built concurrently, then attached."""
    for qualified, name, sub_partitioned, attached in bind.execute(
        sa.text(PG_PARTITIONS), {"table": TABLE, "index": INDEX}
    ).all():
        if attached:
            continue
        if sub_partitioned:
            raise CommandError(
                f"partition {qualified} of {TABLE} is itself partitioned, which -x online=true does not index "
                "concurrently: run 'alembic upgrade head' without it (CREATE INDEX in one transaction)."
            )
        child = f"{name[:40]}_{COLUMN}_idx"
        schema = qualified.rsplit(".", 1)[0]
        state = bind.execute(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:ix)"), {"ix": f"{schema}.{child}"}
        ).scalar()
        if state is False:
            bind.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {schema}.{child}")
        if state is not True:
            bind.exec_driver_sql(f"CREATE INDEX CONCURRENTLY {child} ON {qualified} ({COLUMN})")
        bind.exec_driver_sql(f"ALTER INDEX {INDEX} ATTACH PARTITION {schema}.{child}")
        log.info("      partition %s: index built concurrently and attached", qualified)


@contextmanager
def concurrent_failures_in_one_sentence() -> Iterator[None]:
    """A concurrent build that fails leaves an INVALID index (or none) and the revision at 0002: say so."""
    try:
        yield
    except sa.exc.DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0]
        raise CommandError(
            f"Building {INDEX} concurrently failed ({reason}): the revision stays 0002 and {TABLE} keeps its rows; "
            "re-running the same command drops what the build left and builds it again."
        ) from None


def drop(bind: sa.Connection, online: bool) -> None:
    """Drop the index from this table only (an index of that name elsewhere is not ours)."""
    if found(bind) is None:
        log.info("[1/1] Index: %s not there, nothing to drop", INDEX)
        return
    dialect = bind.dialect.name
    if dialect == "postgresql" and online and not partitioned(bind):  # a partitioned index cannot go concurrently
        with op.get_context().autocommit_block():
            bind.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
    elif dialect in ("mysql", "mariadb"):
        bind.exec_driver_sql(f"DROP INDEX {INDEX} ON {TABLE}")
    else:
        bind.exec_driver_sql(f"{DEFAULT_MODE_DROP if dialect == 'postgresql' else ''}DROP INDEX {INDEX}")
    log.info("[1/1] Index: dropped %s", INDEX)


def script(upgrade: bool, dialect: str) -> str:
    """The ``--sql`` statement, for a database at the revision before: it cannot look, so IF [NOT] EXISTS."""
    if upgrade:
        lint = DEFAULT_MODE_CREATE if dialect == "postgresql" else ""
        return f"{lint}CREATE INDEX IF NOT EXISTS {INDEX} ON {TABLE} ({COLUMN})"
    if dialect in ("mysql", "mariadb"):
        return f"DROP INDEX IF EXISTS {INDEX} ON {TABLE}"
    return f"{DEFAULT_MODE_DROP if dialect == 'postgresql' else ''}DROP INDEX IF EXISTS {INDEX}"
