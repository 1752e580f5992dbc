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

Only a plain index of that exact name on this table's ``is_doctor_call`` is adopted; anything else under the name
(other columns, UNIQUE, partial, another access method, another table's index, the name in other letter case where
names ignore case) is the operator's: refused in one sentence, nothing changed. Online, every lock the steps take
is waited for at most ``online_lock_timeout``, retried, like the BUILD-144 online steps. After a build the index
is read back: an index PostgreSQL still reports INVALID fails the run (the revision stays 0002) instead of being
stamped. The downgrade drops the index only from this table (concurrently in online mode where PostgreSQL can).
The ``--sql`` scripts cannot look before they run: they check inside the database what they would create or drop
(``offline_scripts``' checks and SQLite's stamp guard) and stop, changing nothing, where the name is not ours.
"""

import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

from autopack.migrations.offline_scripts import offline_check, sqlite_guard
from autopack.migrations.online_backfill import with_lock_retries
from autopack.migrations.options import Options
from autopack.migrations.usage_table import TABLE

log = logging.getLogger("alembic.build144")

INDEX = f"ix_{TABLE}_is_doctor_call"
COLUMN = "is_doctor_call"
# the default mode is one transaction, where CONCURRENTLY cannot run: squawk is told so at each such statement
DEFAULT_MODE_CREATE = "-- squawk-ignore require-concurrent-index-creation\n"
DEFAULT_MODE_DROP = "-- squawk-ignore require-concurrent-index-deletion\n"
# what carries the name, per engine: (its table, its definition, whether it is the plain index 0003 makes, valid)
PG_NAMED = """
SELECT t.oid = CAST(:table AS regclass), t.relname, pg_get_indexdef(x.indexrelid), x.indisvalid
FROM pg_class i JOIN pg_index x ON x.indexrelid = i.oid JOIN pg_class t ON t.oid = x.indrelid
WHERE i.relname = :index AND i.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = CAST(:table AS regclass))
"""
PG_PLAIN = re.compile(rf"CREATE INDEX {INDEX} ON (ONLY )?\S+ USING btree \({COLUMN}\)")
SQLITE_NAMED = "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND name = :index COLLATE NOCASE"
SQLITE_PLAIN = re.compile(rf'CREATE INDEX "?{INDEX}"? ON "?{TABLE}"? \("?{COLUMN}"?\)', re.IGNORECASE)
MARIADB_NAMED = """
SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME, SUB_PART, INDEX_TYPE, COLLATION FROM information_schema.STATISTICS
WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table AND LOWER(INDEX_NAME) = LOWER(:index) ORDER BY SEQ_IN_INDEX
"""
PG_PARTITIONS = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), quote_ident(n.nspname), c.relname, c.relkind = 'p',
       EXISTS (SELECT 1 FROM pg_inherits ih JOIN pg_index x ON x.indexrelid = ih.inhrelid
               WHERE ih.inhparent = CAST(:index AS regclass) AND x.indrelid = c.oid) AS attached
FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE h.inhparent = CAST(:table AS regclass) ORDER BY c.relname
"""


def found(bind: sa.Connection) -> str | None:
    """``'valid'``, ``'invalid'`` (PostgreSQL: an interrupted concurrent build or drop) or ``None``; anything else
    under the name is refused in one sentence."""
    dialect = bind.dialect.name
    if dialect == "postgresql":
        named = bind.execute(sa.text(PG_NAMED), {"table": TABLE, "index": INDEX}).one_or_none()
        if named is None:
            return None
        ours, table, definition, valid = named
        if not (ours and PG_PLAIN.fullmatch(definition)):
            raise not_ours(f"on {table}: {definition}")
        return "valid" if valid else "invalid"
    if dialect in ("mysql", "mariadb"):
        rows = bind.execute(sa.text(MARIADB_NAMED), {"table": TABLE, "index": INDEX}).all()
        if not rows:
            return None
        name, non_unique, column, sub_part, kind, order = rows[0]
        if not (
            len(rows) == 1
            and (name, non_unique, column, sub_part, kind, order) == (INDEX, 1, COLUMN, None, "BTREE", "A")
        ):
            columns = ", ".join(str(r[2]) for r in rows)
            raise not_ours(f"{name} on {TABLE} ({columns}), {kind}{'' if non_unique else ', UNIQUE'}")
        return "valid"
    named = bind.execute(sa.text(SQLITE_NAMED), {"index": INDEX}).one_or_none()
    if named is None:
        return None
    name, table, definition = named
    if not (name == INDEX and table == TABLE and SQLITE_PLAIN.fullmatch(" ".join(str(definition).split()))):
        raise not_ours(f"{name} on {table}: {definition}")
    return "valid"


def not_ours(what: str) -> CommandError:
    return CommandError(
        f"An index named like {INDEX} already exists ({what}), which is not the plain index on {TABLE} "
        f"({COLUMN}) that revision 0003 adopts: rename or drop it, then re-run the same command; nothing was changed."
    )


def partitioned(bind: sa.Connection) -> bool:
    query = "SELECT relkind = 'p' FROM pg_class WHERE oid = CAST(:table AS regclass)"
    return bool(bind.execute(sa.text(query), {"table": TABLE}).scalar())


def create(bind: sa.Connection, options: Options) -> None:
    """Build the index unless the table has it (see the module's docstring for each engine and mode)."""
    state = found(bind)
    dialect = bind.dialect.name
    if state == "valid":
        log.info("[1/1] Index: %s already there (adopted)", INDEX)
        return
    if dialect == "postgresql" and options.online:
        with op.get_context().autocommit_block(), concurrent_failures_in_one_sentence("Building", "0002"):
            build_concurrently(bind, state, options)
        if found(bind) != "valid":
            raise CommandError(
                f"{INDEX} was built but PostgreSQL still reports it INVALID: the revision stays 0002 and {TABLE} "
                "keeps its rows; re-running the same command builds what is missing."
            )
    elif dialect == "postgresql":
        if state == "invalid":
            bind.exec_driver_sql(f"{DEFAULT_MODE_DROP}DROP INDEX {INDEX}")
        bind.exec_driver_sql(f"{DEFAULT_MODE_CREATE}CREATE INDEX {INDEX} ON {TABLE} ({COLUMN})")
    elif dialect in ("mysql", "mariadb") and options.online:  # metadata lock waits as short as the online steps'
        statement = f"CREATE INDEX {INDEX} ON {TABLE} ({COLUMN}) ALGORITHM=INPLACE LOCK=NONE"
        with_lock_retries(bind, [statement], options)
    else:
        bind.exec_driver_sql(f"CREATE INDEX {INDEX} ON {TABLE} ({COLUMN})")
    how = (" concurrently" if dialect == "postgresql" else " in place, writers going on") if options.online else ""
    log.info("[1/1] Index: built %s on %s (%s)%s", INDEX, TABLE, COLUMN, how)


def build_concurrently(bind: sa.Connection, state: str | None, options: Options) -> None:
    """PostgreSQL online mode, in autocommit: writers go on while each index is built."""
    if partitioned(bind):  # the parent's index, catalog only, under a short lock wait with retries
        with_lock_retries(bind, [f"CREATE INDEX IF NOT EXISTS {INDEX} ON ONLY {TABLE} ({COLUMN})"], options)
        attach_partitions(bind, options)
        return
    if state == "invalid":
        log.info("      dropping the INVALID %s an interrupted concurrent build left, to build it again", INDEX)
        bind.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
    bind.exec_driver_sql(f"CREATE INDEX CONCURRENTLY {INDEX} ON {TABLE} ({COLUMN})")


def partition_index(partition: str) -> str:
    """A name of its own for each partition's index, within PostgreSQL's 63 characters (a hash of the whole name,
    so partitions whose names share a long beginning never share an index name)."""
    return f"{partition[:30]}_{hashlib.md5(partition.encode()).hexdigest()[:8]}_{COLUMN}_idx"


def attach_partitions(bind: sa.Connection, options: Options) -> None:
    """Each partition without an index attached to the parent's gets one, built concurrently, then attached."""
    for qualified, schema, name, sub_partitioned, attached in bind.execute(
        sa.text(PG_PARTITIONS), {"table": TABLE, "index": INDEX}
    ).all():
        if attached:
            continue
        if sub_partitioned:
            raise CommandError(
                f"partition {qualified} of {TABLE} is itself partitioned, which -x online=true does not index "
                "concurrently: run 'alembic upgrade head' without it (CREATE INDEX in one transaction); the partitions "
                "indexed so far keep their index, which that run adopts."
            )
        child = f"{schema}.{partition_index(name)}"
        valid = bind.execute(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:ix)"), {"ix": child}
        ).scalar()
        if valid is False:
            bind.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {child}")
        if valid is not True:
            bind.exec_driver_sql(f"CREATE INDEX CONCURRENTLY {partition_index(name)} ON {qualified} ({COLUMN})")
        with_lock_retries(bind, [f"ALTER INDEX {INDEX} ATTACH PARTITION {child}"], options)
        log.info("      partition %s: index built concurrently and attached", qualified)


@contextmanager
def concurrent_failures_in_one_sentence(doing: str, stays: str) -> Iterator[None]:
    """A concurrent build or drop that fails leaves an INVALID index (or none): say so, and what re-running does."""
    try:
        yield
    except sa.exc.DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0]
        raise CommandError(
            f"{doing} {INDEX} concurrently failed ({reason}; it waits for every older transaction, see "
            f"pg_stat_activity, at most -x lock_timeout): the revision stays {stays} and {TABLE} keeps its rows "
            "(the index may be left INVALID); re-running the same command drops what it left and finishes."
        ) from None


def drop(bind: sa.Connection, options: Options) -> None:
    """Drop the index from this table only (an index of that name elsewhere is not ours)."""
    if found(bind) is None:
        log.info("[1/1] Index: %s not there, nothing to drop", INDEX)
        return
    dialect = bind.dialect.name
    if dialect == "postgresql" and options.online and not partitioned(bind):  # a partitioned one cannot go so
        with op.get_context().autocommit_block(), concurrent_failures_in_one_sentence("Dropping", "0003"):
            bind.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
    elif dialect in ("mysql", "mariadb"):
        bind.exec_driver_sql(f"DROP INDEX {INDEX} ON {TABLE}")
    else:
        bind.exec_driver_sql(f"{DEFAULT_MODE_DROP if dialect == 'postgresql' else ''}DROP INDEX {INDEX}")
    log.info("[1/1] Index: dropped %s", INDEX)


def invalid(bind: sa.Connection) -> bool:
    """PostgreSQL: whether the index is there but INVALID (for ``verify``)."""
    if bind.dialect.name != "postgresql":
        return False
    named = bind.execute(sa.text(PG_NAMED), {"table": TABLE, "index": INDEX}).one_or_none()
    return named is not None and named[0] and not named[3]


# --- the --sql scripts: checked inside the database, since a script cannot look before it is written ---------

PG_NOT_OURS = f"""SELECT 1 FROM pg_class i JOIN pg_index x ON x.indexrelid = i.oid
  WHERE i.relname = '{INDEX}' AND i.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = '{TABLE}'::regclass)
  AND (x.indrelid <> '{TABLE}'::regclass OR NOT x.indisvalid
       OR pg_get_indexdef(x.indexrelid) !~ '^CREATE INDEX {INDEX} ON (ONLY )?\\S+ USING btree \\({COLUMN}\\)$')"""
MARIADB_NOT_OURS = f"""SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = '{TABLE}' AND LOWER(INDEX_NAME) = '{INDEX}' AND (BINARY INDEX_NAME <> '{INDEX}' OR NON_UNIQUE = 0
  OR COLUMN_NAME <> '{COLUMN}' OR SEQ_IN_INDEX > 1 OR SUB_PART IS NOT NULL OR INDEX_TYPE <> 'BTREE')"""
SQLITE_OURS = f"""(SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = '{INDEX}' COLLATE NOCASE) = 1
  AND EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = '{INDEX}' AND tbl_name = '{TABLE}'
      AND sql = 'CREATE INDEX {INDEX} ON {TABLE} ({COLUMN})')"""
NOT_OURS_MESSAGE = (
    f"an index named {INDEX} exists that is not a valid plain index on {TABLE} ({COLUMN}) (another table's, other "
    "columns, or INVALID after an interrupted concurrent build): rename or drop it, or run the online command"
)


def offline(upgrade: bool, dialect: str) -> None:
    """The ``--sql`` statements of 0003, for a database at the revision before."""
    if dialect == "postgresql":
        offline_check(dialect, PG_NOT_OURS, NOT_OURS_MESSAGE)
    elif dialect in ("mysql", "mariadb") and upgrade:  # MariaDB's index names are the table's own: DROP ... ON it
        offline_check(dialect, MARIADB_NOT_OURS, NOT_OURS_MESSAGE)
    elif dialect == "sqlite" and not upgrade:  # what the DROP would take that is not ours, remembered for the guard
        op.execute(
            "CREATE TEMP TABLE IF NOT EXISTS build144_not_our_index AS SELECT name FROM sqlite_master WHERE "
            f"type = 'index' AND name = '{INDEX}' COLLATE NOCASE AND NOT (name = '{INDEX}' AND tbl_name = '{TABLE}')"
        )
    if upgrade:
        lint = DEFAULT_MODE_CREATE if dialect == "postgresql" else ""
        op.execute(f"{lint}CREATE INDEX IF NOT EXISTS {INDEX} ON {TABLE} ({COLUMN})")
        if dialect == "sqlite":  # an index of that name on another table would have been kept: the stamp says so
            sqlite_guard("0003", SQLITE_OURS, f"{INDEX} is not the plain index on {TABLE} ({COLUMN})")
    elif dialect in ("mysql", "mariadb"):
        op.execute(f"DROP INDEX IF EXISTS {INDEX} ON {TABLE}")
    else:
        op.execute(f"{DEFAULT_MODE_DROP if dialect == 'postgresql' else ''}DROP INDEX IF EXISTS {INDEX}")
        if dialect == "sqlite":
            sqlite_guard("0002", "NOT EXISTS (SELECT 1 FROM temp.build144_not_our_index)", f"{INDEX} was not ours")
