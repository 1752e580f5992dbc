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

import logging
import re

import sqlalchemy as sa
from alembic.util import CommandError

from autopack.migrations.build144 import engines
from autopack.migrations.build144.backfill_rule import kept_survey
from autopack.migrations.build144.messages import LEAVES, refusal
from autopack.migrations.build144.usage_table import TABLE
from autopack.migrations.runtime.options import Options

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
    return engines.of(bind).doctor_index_state(bind)


def not_ours(what: str) -> CommandError:
    return refusal("index_not_ours", index=INDEX, what=what, table=TABLE, column=COLUMN)


def ensure(bind: sa.Connection, options: Options) -> None:
    """Build the index unless the table has it (see the module's docstring for each engine and mode); the
    preflight check has refused an impostor already."""
    state = found(bind)
    if state == "valid":
        log.info("      Index: %s already there (adopted)", INDEX)
        return
    kept_survey(bind)  # building it takes time, during which MariaDB's writers go on: the report scans afresh
    how = engines.of(bind).build_doctor_index(bind, state, options)
    log.info("      Index: built %s on %s (%s)%s, which the pre-BUILD-144 schema declares", INDEX, TABLE, COLUMN, how)


STAYS = LEAVES["doctor index stays"]
