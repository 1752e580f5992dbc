"""PostgreSQL default mode: the backfill as one table rewrite, in the migration's transaction.

Why. A full-table ``UPDATE`` leaves every old row version behind (the table ends about twice its size until a
``VACUUM FULL``) and writes about four times the WAL the replicas replay. ``ALTER TABLE … ALTER COLUMN
total_tokens TYPE <its type> USING (<the backfill rule>)`` writes each row once into a new file, rebuilds the
indexes, and the old file goes at commit: the table keeps its size, and the WAL is one copy of it
(https://www.postgresql.org/docs/current/sql-altertable.html: "… the table and/or its indexes will be rewritten",
and a ``USING`` clause always rewrites). It runs under the ACCESS EXCLUSIVE lock the schema change already
holds, so the mode stays one atomic transaction; ``ANALYZE`` follows, since the rewrite drops the column's
statistics. Disk peaks at the old plus the new copy until commit.

When not. The rewrite cannot run, or would not do what the UPDATE does, when:
- something depends on ``total_tokens`` (possible only where the column already existed): a view, materialized
  view, rule, ``BEGIN ATOMIC`` function, row-level security policy, trigger definition or generated column makes
  PostgreSQL refuse to change the column's type; a CHECK constraint on it would be re-checked on every row;
- the operator's triggers or rules run on each UPDATE of the table: a rewrite fires none of them;
- the table is in a publication: logical replication sends UPDATEs, never a rewrite, so subscribers would keep
  total 0.
Then the batched UPDATE runs (``batched_backfill``) and the report says why. (A column of another table typed
with this table's row type stops the ``ADD COLUMN`` already, on either path: that is one sentence, nothing changed.)
"""

import logging

import sqlalchemy as sa

from autopack.migrations.backfill_rule import NEEDS_TOTAL, RULE, new_total
from autopack.migrations.batched_backfill import backfill as batched_backfill
from autopack.migrations.plan import Plan
from autopack.migrations.progress import while_running
from autopack.migrations.table_inspection import PG_FAMILY, publications_of
from autopack.migrations.usage_table import TABLE, events

log = logging.getLogger("alembic.build144")

# what depends on total_tokens, in the table or any partition or child, that stops or changes a type rewrite; the
# column's own default, indexes and the constraints they back (rebuilt by the rewrite) and extended statistics are not
DEPENDENTS_OF_TOTAL = f"""{PG_FAMILY}
SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid)
FROM pg_depend d
JOIN family f ON d.refobjid = f.relid
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid AND a.attname = 'total_tokens'
WHERE d.refclassid = 'pg_class'::regclass
  AND d.classid <> 'pg_statistic_ext'::regclass
  AND NOT (d.classid = 'pg_class'::regclass
           AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = d.objid AND c.relkind IN ('i', 'I')))
  AND NOT (d.classid = 'pg_constraint'::regclass
           AND EXISTS (SELECT 1 FROM pg_constraint c WHERE c.oid = d.objid AND c.contype IN ('p', 'u', 'x')))
  AND NOT (d.classid = 'pg_attrdef'::regclass
           AND EXISTS (SELECT 1 FROM pg_attrdef ad WHERE ad.oid = d.objid AND ad.adrelid = d.refobjid
                       AND ad.adnum = d.refobjsubid))
ORDER BY 1
"""
TOTAL_TYPE = """
SELECT format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = CAST(:table AS regclass) AND attname = 'total_tokens' AND NOT attisdropped
"""


def why_not_rewrite(bind: sa.Connection, plan: Plan, hooks: list[tuple[str, bool]]) -> list[str]:
    """What on the table makes the batched UPDATE the right backfill (empty: one rewrite is)."""
    reasons = []
    if plan.has_total:
        found = bind.execute(sa.text(DEPENDENTS_OF_TOTAL), {"table": TABLE}).scalars().all()
        reasons += [f"{', '.join(found)} depend{'s' if len(found) == 1 else ''} on total_tokens"] if found else []
    names = [name for name, _ in hooks]
    reasons += [f"{', '.join(names)} must run on each UPDATE"] if names else []
    publications = publications_of(bind)
    reasons += [f"publication {', '.join(publications)} replicates UPDATEs, not a rewrite"] if publications else []
    return reasons


def rewrite_statement(column_type: str) -> str:
    # bare column names: on a partitioned table PostgreSQL applies USING to each partition, where the parent's
    # name would be a missing FROM entry
    columns = (sa.column("total_tokens"), sa.column("prompt_tokens"), sa.column("completion_tokens"))
    rule = new_total(*columns).compile(bind=None, compile_kwargs={"literal_binds": True})
    return f"ALTER TABLE {TABLE} ALTER COLUMN total_tokens TYPE {column_type} USING ({rule})"


def backfill(bind: sa.Connection, plan: Plan, hooks: list[tuple[str, bool]]) -> int:
    """The backfill of the default mode on PostgreSQL, after the schema change (whose lock it runs under):
    one table rewrite, or the batched UPDATE where that is the right one; returns the rows whose total it wrote."""
    reasons = why_not_rewrite(bind, plan, hooks)
    if not reasons:
        filled = bind.execute(sa.select(sa.func.count()).select_from(events).where(NEEDS_TOTAL)).scalar_one()
        if not filled:  # counted under the schema change's lock: no row needs a total, so nothing to rewrite
            log.info("[2/3] Backfilled 0 rows: no row needs a total, the table was not rewritten")
            return 0
        column_type = bind.execute(sa.text(TOTAL_TYPE), {"table": TABLE}).scalar_one()
        log.info("      backfill: one table rewrite, %s of %s rows to fill", f"{filled:,}", f"{plan.rows:,}")
        with while_running(log, "table rewrite", plan.options.progress_every):
            bind.exec_driver_sql(rewrite_statement(column_type))
        bind.exec_driver_sql(f"ANALYZE {TABLE}")  # the rewrite dropped the column's statistics
        log.info("[2/3] Backfilled %d rows in one table rewrite, then ANALYZE: %s", filled, RULE)
        return filled
    log.info("      backfill by batched UPDATE instead of one table rewrite: %s", "; ".join(reasons))
    return batched_backfill(bind.execute, plan.first_id, plan.last_id, plan.rows, plan.options)
