"""``ix_llm_usage_events_is_doctor_call``: part of the pre-BUILD-144 schema, made sure of by BUILD-144's upgrade.

Upstream Autopack's model has declared ``is_doctor_call`` with ``index=True`` since the column appeared, four weeks
before BUILD-144; its own script that added the doctor columns to older databases did not create the index. So
revision 0001 creates it with the table on an empty database, and 0002's upgrade (``ensure``) builds it on a table
that lacks it — whichever way the table came to the tree (unversioned and adopted, stamped 0001 by hand, an old
script's) — and adopts the one that is there. 0002's downgrade leaves it: the pre-BUILD-144 model declares it.

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
names ignore case) is the operator's: refused in one sentence before any change (a preflight check). Online, every
lock the steps take is waited for at most ``online_lock_timeout``, retried, like the BUILD-144 online steps. After a
concurrent build the index is read back: an index PostgreSQL still reports INVALID fails the run (the revision
stays 0001, a re-run resumes) instead of being stamped. The ``--sql`` scripts cannot look before they run: they
check inside the database what they would create (``offline_scripts``) and stop, changing nothing, where the name
is not ours.
"""

import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

from autopack.migrations.messages import LEAVES, refusal
from autopack.migrations.online_backfill import with_lock_retries
from autopack.migrations.options import Options
from autopack.migrations.usage_table import TABLE

log = logging.getLogger("alembic.build144")

INDEX = f"ix_{TABLE}_is_doctor_call"
COLUMN = "is_doctor_call"
# the default mode is one transaction, where CONCURRENTLY cannot run: squawk is told so at each such statement
DEFAULT_MODE_CREATE = "-- squawk-ignore require-concurrent-index-creation\n"
DEFAULT_MODE_DROP = "-- squawk-ignore require-concurrent-index-deletion\n"
# what carries the name, per engine: (its table, its definition, whether it is the plain index declared, valid)
PG_NAMED = """
SELECT t.oid = CAST(:table AS regclass), t.relname, pg_get_indexdef(x.indexrelid), x.indisvalid
FROM pg_class i JOIN pg_index x ON x.indexrelid = i.oid JOIN pg_class t ON t.oid = x.indrelid
WHERE i.relname = :index AND i.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = CAST(:table AS regclass))
"""
PG_PLAIN = re.compile(rf"CREATE INDEX {INDEX} ON (ONLY )?\S+ USING btree \({COLUMN}\)")
SQLITE_NAMED = "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND name = :index COLLATE NOCASE"
# what the index is, as SQLite itself reads it (not how its CREATE text was typed): the one index of the name in any
# letter case, on this table, not UNIQUE, not partial, one key column, is_doctor_call, ascending, default collation
SQLITE_PLAIN = f"""(SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = '{INDEX}' COLLATE NOCASE) = 1
  AND EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = '{INDEX}' AND tbl_name = '{TABLE}')
  AND EXISTS (SELECT 1 FROM pragma_index_list('{TABLE}') WHERE name = '{INDEX}' AND "unique" = 0 AND partial = 0)
  AND (SELECT count(*) FROM pragma_index_xinfo('{INDEX}') WHERE key = 1) = 1
  AND EXISTS (SELECT 1 FROM pragma_index_xinfo('{INDEX}')
      WHERE key = 1 AND name = '{COLUMN}' AND "desc" = 0 AND coll = 'BINARY')"""
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
    """``'valid'``, ``'invalid'`` (PostgreSQL: an interrupted concurrent build) or ``None``; anything else under
    the name is refused in one sentence."""
    state, impostor = what_carries_the_name(bind)
    if impostor is not None:
        raise not_ours(impostor)
    return state


def what_carries_the_name(bind: sa.Connection) -> tuple[str | None, str | None]:
    """What carries the name: (``'valid'`` / ``'invalid'`` / ``None``, None), or (None, what the impostor is)."""
    dialect = bind.dialect.name
    if dialect == "postgresql":
        named = bind.execute(sa.text(PG_NAMED), {"table": TABLE, "index": INDEX}).one_or_none()
        if named is None:
            return None, None
        ours, table, definition, valid = named
        if not (ours and PG_PLAIN.fullmatch(definition)):
            return None, f"on {table}: {definition}"
        return ("valid" if valid else "invalid"), None
    if dialect in ("mysql", "mariadb"):
        rows = bind.execute(sa.text(MARIADB_NAMED), {"table": TABLE, "index": INDEX}).all()
        if not rows:
            return None, None
        name, non_unique, column, sub_part, kind, order = rows[0]
        if not (
            len(rows) == 1
            and (name, non_unique, column, sub_part, kind, order) == (INDEX, 1, COLUMN, None, "BTREE", "A")
        ):
            columns = ", ".join(f"{r[2]}{' DESC' if r[5] == 'D' else ''}{f'({r[3]})' if r[3] else ''}" for r in rows)
            return None, f"{name} on {TABLE} ({columns}), {kind}{'' if non_unique else ', UNIQUE'}"
        return "valid", None
    named = bind.execute(sa.text(SQLITE_NAMED), {"index": INDEX}).one_or_none()
    if named is None:
        return None, None
    name, table, definition = named
    if not bind.exec_driver_sql(f"SELECT {SQLITE_PLAIN}").scalar():
        return None, f"{name} on {table}: {definition}"
    return "valid", None


def not_ours(what: str) -> CommandError:
    return refusal("index_not_ours", index=INDEX, what=what, table=TABLE, column=COLUMN)


def partitioned(bind: sa.Connection) -> bool:
    query = "SELECT relkind = 'p' FROM pg_class WHERE oid = CAST(:table AS regclass)"
    return bool(bind.execute(sa.text(query), {"table": TABLE}).scalar())


def ensure(bind: sa.Connection, options: Options) -> None:
    """Build the index unless the table has it (see the module's docstring for each engine and mode); the
    preflight check has refused an impostor already."""
    state = found(bind)
    dialect = bind.dialect.name
    if state == "valid":
        log.info("      Index: %s already there (adopted)", INDEX)
        return
    if dialect == "postgresql" and options.online:
        with op.get_context().autocommit_block(), concurrent_failures_in_one_sentence():
            build_concurrently(bind, state, options)
        if found(bind) != "valid":
            raise refusal("doctor_index_still_invalid", index=INDEX)
    elif dialect == "postgresql":
        if state == "invalid":
            log.info("      dropping the INVALID %s an interrupted concurrent build left, to build it again", INDEX)
            bind.exec_driver_sql(f"{DEFAULT_MODE_DROP}DROP INDEX {INDEX}")
        bind.exec_driver_sql(f"{DEFAULT_MODE_CREATE}CREATE INDEX {INDEX} ON {TABLE} ({COLUMN})")
    elif dialect in ("mysql", "mariadb") and options.online:  # metadata lock waits as short as the online steps'
        statement = f"CREATE INDEX {INDEX} ON {TABLE} ({COLUMN}) ALGORITHM=INPLACE LOCK=NONE"
        with_lock_retries(bind, [statement], options, STAYS)
    else:
        bind.exec_driver_sql(f"CREATE INDEX {INDEX} ON {TABLE} ({COLUMN})")
    how = (" concurrently" if dialect == "postgresql" else " in place, writers going on") if options.online else ""
    log.info("      Index: built %s on %s (%s)%s, which the pre-BUILD-144 schema declares", INDEX, TABLE, COLUMN, how)


def build_concurrently(bind: sa.Connection, state: str | None, options: Options) -> None:
    """PostgreSQL online mode, in autocommit: writers go on while each index is built."""
    if partitioned(bind):  # the parent's index, catalog only, under a short lock wait with retries
        with_lock_retries(bind, [f"CREATE INDEX IF NOT EXISTS {INDEX} ON ONLY {TABLE} ({COLUMN})"], options, STAYS)
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
            raise refusal("sub_partitioned_partition", partition=qualified, table=TABLE)
        child = f"{schema}.{partition_index(name)}"
        valid = bind.execute(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:ix)"), {"ix": child}
        ).scalar()
        if valid is False:
            bind.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {child}")
        if valid is not True:
            bind.exec_driver_sql(f"CREATE INDEX CONCURRENTLY {partition_index(name)} ON {qualified} ({COLUMN})")
        with_lock_retries(bind, [f"ALTER INDEX {INDEX} ATTACH PARTITION {child}"], options, STAYS)
        log.info("      partition %s: index built concurrently and attached", qualified)


STAYS = LEAVES["doctor index stays"]


@contextmanager
def concurrent_failures_in_one_sentence() -> Iterator[None]:
    """A concurrent build that fails leaves an INVALID index (or none): say so, and what re-running does."""
    try:
        yield
    except sa.exc.DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0]
        raise refusal("doctor_index_concurrently_failed", index=INDEX, reason=reason) from None
