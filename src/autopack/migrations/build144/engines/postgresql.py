"""BUILD-144 on PostgreSQL. The default mode's backfill: one table rewrite, in the migration's transaction.

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

import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

from autopack.migrations.build144 import doctor_index, fill_trigger, holdover, offline_scripts, online_backfill
from autopack.migrations.build144.backfill_rule import NEEDS_TOTAL, RULE, new_total, split_sum
from autopack.migrations.build144.batched_backfill import backfill as batched_backfill
from autopack.migrations.build144.messages import LEAVES, NOTHING_CHANGED, refusal
from autopack.migrations.build144.online_backfill import with_lock_retries
from autopack.migrations.build144.online_downgrade import online_downgrade
from autopack.migrations.build144.plan import Plan
from autopack.migrations.build144.usage_table import DROP_NOT_NULL_CHECKS, TABLE, events
from autopack.migrations.runtime.options import SCRIPT_STATEMENT_TIMEOUT, Options
from autopack.migrations.runtime.progress import while_running

log = logging.getLogger("alembic.build144")

OWN_TRIGGERS = ", ".join(f"'{name}'" for name in fill_trigger.PG_NAMES)  # never the operator's reader or hook
# the table and everything an ALTER TABLE or UPDATE of it reaches: its partitions and INHERITS children, any depth
FAMILY = """WITH RECURSIVE family(relid) AS (
    SELECT CAST(CAST(:table AS regclass) AS oid)
    UNION SELECT i.inhrelid FROM pg_inherits i JOIN family f ON i.inhparent = f.relid)"""
UPDATE_TRIGGERS = f"""{FAMILY}
SELECT 'trigger ' || t.tgname, (t.tgtype & 1) = 1 FROM pg_trigger t JOIN family f ON t.tgrelid = f.relid
WHERE NOT t.tgisinternal AND t.tgname NOT IN ({OWN_TRIGGERS}) AND (t.tgtype & 16) = 16 AND t.tgenabled IN ('O', 'A')
  AND t.tgparentid = 0
"""  # (tgtype & 1): FOR EACH ROW; (tgtype & 16): TRIGGER_TYPE_UPDATE; tgenabled O/A: fires in this session;
# tgparentid 0: not a partition's clone of its parent's trigger (PostgreSQL 13+), so each trigger is named once
UPDATE_RULES = f"""{FAMILY}
SELECT 'rule ' || r.rulename, false FROM pg_rewrite r JOIN family f ON r.ev_class = f.relid
WHERE r.ev_type = '2' AND r.ev_enabled IN ('O', 'A')
"""  # ev_type 2: ON UPDATE


# what depends on total_tokens, in the table or any partition or child, that stops or changes a type rewrite; the
# column's own default, indexes and the constraints they back (rebuilt by the rewrite) and extended statistics are not
DEPENDENTS_OF_TOTAL = f"""{FAMILY}
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


# --- the seven steps ---------------------------------------------------------------------------------------

NAME = "postgresql"
ONLINE = True
ONLINE_DOWNGRADE = True  # NOT VALID CHECKs validated while the application runs
TRANSACTIONAL_DDL = True  # a failed schema change rolls back with the transaction
TRANSACTIONAL_DDL_MADE_REAL = False  # Alembic is told DDL is transactional: the connection set-up makes it so
TRIGGERS_FIRE_IN_NAME_ORDER = True  # BEFORE triggers after the fill trigger's name would see no total
# `autopack plan`'s estimate: the whole default-mode run per million rows on the reference machine (benchmarks/)
SECONDS_PER_MILLION_ROWS = {"upgrade": 5.1, "downgrade": 1.1}
LOGICAL_REPLICATION = True


def inspect(bind: sa.Connection) -> dict[str, bool]:
    return {"system_versioned": False}


def change_schema(bind: sa.Connection, plan: Plan, hooks: list[tuple[str, bool]], new_schema: Callable) -> None:
    """Catalog-only ALTERs, after what an interrupted online run left (its fill trigger, an online downgrade's
    CHECKs, which would refuse the NULL splits the restore puts back), all in the one transaction."""
    fill_trigger.drop(bind)
    bind.exec_driver_sql(DROP_NOT_NULL_CHECKS)
    new_schema(plan)


def online_upgrade(plan: Plan) -> int:
    """One short transaction, under ``online_lock_timeout`` and retried: the catalog-only ALTER, no leftover CHECKs,
    the fill trigger; then ``online_backfill``'s committed batches."""

    def schema_change(connection: sa.Connection, changed: str) -> None:
        steps = [*alter_statements(plan), DROP_NOT_NULL_CHECKS, *fill_trigger_statements()]
        with_lock_retries(connection, steps, plan.options, changed=changed)

    return online_backfill.online_upgrade(plan, schema_change)


def alter_statements(plan: Plan) -> list[str]:
    """The catalog-only ALTER TABLE of the plan, as one statement (none when there is nothing to change)."""
    alter = ["ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0"] if plan.add_total else []
    alter += ["ALTER COLUMN total_tokens SET DEFAULT 0"] if plan.add_default else []
    alter += [f"ALTER COLUMN {split} DROP NOT NULL" for split in plan.relax]
    return [f"ALTER TABLE {TABLE} {', '.join(alter)}"] if alter else []


def downgrade(bind: sa.Connection, plan: Plan, old_schema: Callable) -> None:
    """Online: ``online_downgrade`` (no scan under ACCESS EXCLUSIVE). Otherwise in the one transaction: the fill
    trigger dropped, writers held off (reads go on) so that none writes between the set-aside and the ALTERs."""
    if plan.online:
        online_downgrade(plan)
        return
    fill_trigger.drop(bind)  # an online upgrade's, if finish-online never ran: its column goes
    bind.exec_driver_sql(f"LOCK TABLE {TABLE} IN EXCLUSIVE MODE")
    holdover.set_aside(bind)
    old_schema(plan)


def path(bind: sa.Connection, plan: Plan, direction: str, hooks: list[tuple[str, bool]]) -> str:
    """The way the run would take, for ``autopack plan`` (read only)."""
    if direction == "downgrade" and plan.online:
        return (
            "online: NOT VALID CHECKs (one short transaction), rows set aside, VALIDATE while reads and writes go "
            "on, then SET NOT NULL without a scan and total_tokens dropped (one short transaction)"
        )
    if direction == "downgrade":
        return (
            "one transaction: writers wait (LOCK TABLE ... IN EXCLUSIVE MODE, reads go on), rows set aside, splits "
            "NOT NULL again (a scan under ACCESS EXCLUSIVE), total_tokens dropped"
        )
    if plan.online:
        return (
            f"online: catalog-only ALTER and the fill trigger in one short transaction, then committed batches of "
            f"{plan.options.rows_per_batch:,} rows (pausing for replicas), the index CREATE INDEX CONCURRENTLY if "
            "missing"
        )
    reasons = why_not_rewrite(bind, plan, hooks)
    fill = (
        f"a batched UPDATE ({'; '.join(reasons)})" if reasons else "one table rewrite (ALTER COLUMN ... USING), ANALYZE"
    )
    return f"one transaction: catalog-only ALTERs, then the backfill as {fill}"


def offline_script(plan: Plan, direction: str, change_schema: Callable) -> None:
    """Checks as ``DO`` blocks that raise, so the script's transaction aborts before its stamp."""
    scripts = offline_scripts
    scripts.say_the_plan(plan, direction)
    op.execute("SET LOCAL row_security = off")  # every row seen; a role that row-level security would filter fails
    if direction == "upgrade":
        offline_check(NOT_OUR_INDEX_LITERAL, scripts.NOT_OUR_INDEX)
        change_schema()
        script_backfill()
        scripts.restore_set_aside(holdover_create_statements())
        op.execute(
            f"{doctor_index.DEFAULT_MODE_CREATE}CREATE INDEX IF NOT EXISTS {doctor_index.INDEX} ON {TABLE} "
            f"({doctor_index.COLUMN})"
        )
        offline_check(scripts.literal_sql(sa.select(events.c.id).where(NEEDS_TOTAL)), scripts.STILL_TO_FILL)
        return
    offline_check(READERS_LITERAL, scripts.READERS_MESSAGE)
    scripts.restamp_retired_offline()
    for statement in holdover_create_statements():
        op.execute(statement)
    op.execute(holdover.hold_over_statement())
    op.execute(holdover.placeholders_statement())
    offline_check(scripts.literal_sql(holdover.not_set_aside()), scripts.NOT_SET_ASIDE)
    for statement in fill_trigger_drop_statements():  # an online upgrade's, if finish-online never ran
        if statement.startswith("DROP FUNCTION"):  # the online mode's own trigger function: no client calls it
            statement = f"-- squawk-ignore ban-drop-function\n{statement}"
        op.execute(statement)
    change_schema()


def script_preamble() -> None:
    """Nothing before the transaction."""


def script_timeouts(options: Options) -> None:
    """Scripts open their transaction with both limits, as squawk's require-lock-timeout and
    require-statement-timeout ask: a script waiting for the table never queues every session behind it for
    longer than lock_timeout, and the rewrite never runs past statement_timeout (both from -x)."""
    from alembic import context

    context.execute(f"SET LOCAL lock_timeout = '{options.lock_timeout}'")
    context.execute(f"SET LOCAL statement_timeout = '{options.statement_timeout or SCRIPT_STATEMENT_TIMEOUT}'")


SCRIPT_BACKFILL = """DO $build144$ BEGIN
  IF EXISTS ({triggers}) OR EXISTS ({rules}) OR EXISTS ({publications}) THEN
    {update};
  ELSE
    {rewrite};
  END IF;
END $build144$"""


def script_backfill() -> None:
    """The backfill as the live upgrade makes it: one table rewrite that keeps the table's size, unless UPDATE
    triggers or rules on the table, or a publication of it, need each row UPDATEd."""
    op.get_context().impl.static_output(
        "-- The backfill: one table rewrite (ALTER COLUMN ... TYPE ... USING the rule), or an UPDATE where the "
        "table's UPDATE triggers, rules or publications need one; then ANALYZE."
    )
    literal_text = offline_scripts.literal_text
    op.execute(
        SCRIPT_BACKFILL.format(
            triggers=literal_text(UPDATE_TRIGGERS, table=TABLE).strip(),
            rules=literal_text(UPDATE_RULES, table=TABLE),
            publications=literal_text(PUBLISHED, table=TABLE).strip(),
            update=offline_scripts.literal_sql(events.update().where(NEEDS_TOTAL).values(total_tokens=split_sum)),
            rewrite=rewrite_statement("INTEGER"),
        )
    )
    op.execute(f"ANALYZE {TABLE}")


CHECK = "DO $build144$ BEGIN IF EXISTS ({query}) THEN RAISE EXCEPTION '{message}'; END IF; END $build144$"


def offline_check(query: str, message: str) -> None:
    """A ``DO`` block that raises, aborting the script's transaction, when ``query`` finds a row."""
    text = f"BUILD-144 script refused: {message}; nothing was changed"
    op.execute(CHECK.format(query=query, message=text.replace("'", "''")))


def failure_leaves(plan: Plan, direction: str) -> str:
    """The default mode is one transaction; online, what committed stays and a re-run finishes."""
    if plan.online:
        return LEAVES["online upgrade resumes" if direction == "upgrade" else "online downgrade finishes"]
    return NOTHING_CHANGED


def stop_leaves(online: bool) -> str:
    return LEAVES["online stop" if online else "upgrade rolled back"]


# --- what the checks ask of the table ----------------------------------------------------------------------

ID_GENERATOR_FIX = (
    f"ALTER TABLE {TABLE} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY, then SELECT setval("
    f"pg_get_serial_sequence('{TABLE}', 'id'), max(id)) FROM {TABLE}"
)
PUBLICATIONS = """
SELECT p.pubname, c.relreplident, pt.rowfilter
FROM pg_publication p
JOIN pg_publication_tables pt ON pt.pubname = p.pubname
JOIN pg_class c ON c.oid = CAST(:table AS regclass)
WHERE pt.tablename = :name AND pt.schemaname = (SELECT n.nspname FROM pg_namespace n WHERE n.oid = c.relnamespace)
  AND p.pubupdate
"""
# publications that send UPDATEs of the table or of any partition or child (pg_publication_tables lists the leaf
# partitions of a partitioned table unless it is published via its root)
PUBLISHED = f"""{FAMILY}
SELECT DISTINCT pt.pubname FROM pg_publication_tables pt JOIN pg_publication p ON p.pubname = pt.pubname
JOIN family f ON f.relid = CAST(CAST(format('%I.%I', pt.schemaname, pt.tablename) AS regclass) AS oid)
WHERE p.pubupdate
"""


READERS = f"""
WITH rels AS (  -- the table, and its partitions or child tables: a trigger on one of them reads the column too
    SELECT CAST(:table AS regclass)::oid AS oid
    UNION SELECT relid FROM pg_partition_tree(CAST(:table AS regclass))
    UNION SELECT inhrelid FROM pg_inherits WHERE inhparent = CAST(:table AS regclass)
), cols AS (
    SELECT a.attrelid, a.attnum FROM pg_attribute a JOIN rels r ON r.oid = a.attrelid
    WHERE a.attname = 'total_tokens' AND NOT a.attisdropped
)
SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid)
FROM pg_depend d JOIN cols c ON d.refobjid = c.attrelid AND d.refobjsubid = c.attnum
WHERE d.refclassid = 'pg_class'::regclass
  AND d.deptype = 'n'  -- views, rules, trigger WHEN clauses, CHECKs, generated columns, BEGIN ATOMIC functions
UNION
SELECT DISTINCT 'index ' || ic.relname || ' (an expression or partial index)'
FROM pg_depend d JOIN cols c ON d.refobjid = c.attrelid AND d.refobjsubid = c.attnum
JOIN pg_index i ON i.indexrelid = d.objid JOIN pg_class ic ON ic.oid = d.objid
WHERE d.classid = 'pg_class'::regclass AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL)
UNION
SELECT DISTINCT 'trigger ' || t.tgname || ' on ' || t.tgrelid::regclass::text || ' (function ' || p.proname || ')'
FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
WHERE t.tgrelid IN (SELECT oid FROM rels) AND NOT t.tgisinternal AND t.tgname NOT IN ({OWN_TRIGGERS})
  AND p.prosrc ~ '\\mtotal_tokens\\M'
"""

ID = """
SELECT a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid),
  EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = a.attrelid AND NOT t.tgisinternal AND (t.tgtype & 7) = 7)
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = CAST(:table AS regclass) AND a.attname = 'id' AND NOT a.attisdropped
"""  # (tgtype & 7) = 7: a BEFORE INSERT row trigger, which may fill the id itself
READERS_LITERAL = READERS.replace("CAST(:table AS regclass)", f"'{TABLE}'::regclass")  # for the offline scripts
# an index of the name that is not ours: the offline upgrade refuses it
NOT_OUR_INDEX_LITERAL = f"""SELECT 1 FROM pg_class i JOIN pg_index x ON x.indexrelid = i.oid
  WHERE i.relname = '{doctor_index.INDEX}'
  AND i.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = '{TABLE}'::regclass)
  AND (x.indrelid <> '{TABLE}'::regclass OR NOT x.indisvalid OR pg_get_indexdef(x.indexrelid)
       !~ '^CREATE INDEX {doctor_index.INDEX} ON (ONLY )?\\S+ USING btree \\({doctor_index.COLUMN}\\)$')"""


def update_hooks(bind: sa.Connection) -> list[tuple[str, bool]]:
    """(description, fires once per row) of every user trigger and rule that runs on an UPDATE of the table."""
    triggers = bind.execute(sa.text(UPDATE_TRIGGERS), {"table": TABLE}).all()
    rules = bind.execute(sa.text(UPDATE_RULES), {"table": TABLE}).all()
    return [(name, bool(per_row)) for name, per_row in [*triggers, *rules]]


def check_constraints(bind: sa.Connection) -> list[tuple[str, str]]:
    return [(c["name"] or "(unnamed)", c["sqltext"]) for c in sa.inspect(bind).get_check_constraints(TABLE)]


def count_violations(bind: sa.Connection, sql: str) -> int:
    with bind.begin_nested():  # an expression that fails on the probe row must not end the transaction
        return bind.exec_driver_sql(sql.replace("%", "%%")).scalar()  # a CHECK's modulo or LIKE: not a placeholder


def objects_reading_total_tokens(bind: sa.Connection) -> list[str]:
    return [r[0] for r in bind.execute(sa.text(READERS), {"table": TABLE})]


def publications_refusing_updates(bind: sa.Connection) -> list[tuple[str, str]]:
    """(publication, why) for each publication that publishes UPDATEs while the table's replica identity cannot
    carry them: REPLICA IDENTITY NOTHING, or a row filter on columns outside the identity. PostgreSQL would
    refuse the backfill's UPDATE."""
    found = []
    for name, identity, row_filter in bind.execute(sa.text(PUBLICATIONS), {"table": TABLE, "name": TABLE}):
        filtered = row_filter and identity != "f" and re.search(r"\b(?!id\b)[a-z_]+\b", row_filter.lower())
        if identity == "n" or filtered:
            why = "REPLICA IDENTITY NOTHING" if identity == "n" else f"a row filter ({row_filter}) outside its identity"
            found.append((name, why))
    return found


def publications_of(bind: sa.Connection) -> list[str]:
    """The publications that send UPDATEs of the table, its partitions or its children."""
    return sorted(bind.execute(sa.text(PUBLISHED), {"table": TABLE}).scalars())


def columns_rewritten_on_update(bind: sa.Connection) -> list[str]:
    return []


def case_sensitive_names(bind: sa.Connection) -> bool:
    return True  # a quoted name keeps its case


SEARCH_PATH = True  # the table is looked for in the first schema of a search_path
CASE_SENSITIVE_AS = "PostgreSQL"  # how a refusal names the engine that tells two spellings apart


def rename_statement(name: str) -> str:
    """What renames the table ``name`` (quoted as it is spelled) to its own spelling."""
    return f"ALTER TABLE {name} RENAME TO {TABLE}"


def names_in_other_case(bind: sa.Connection) -> list[str]:
    """The tables the search_path reaches (where SQLAlchemy and Alembic look), and foreign or partitioned ones."""
    sql = (
        "SELECT c.relname FROM pg_class c WHERE lower(c.relname) = %s AND c.relname <> %s "
        "AND c.relkind IN ('r', 'p', 'f') AND pg_table_is_visible(c.oid) ORDER BY 1"
    )
    return list(bind.exec_driver_sql(sql, (TABLE, TABLE)).scalars().all())


def rename_to_own_case(bind: sa.Connection) -> str | None:
    return None  # refused instead: two spellings are two tables here


def id_not_generated(bind: sa.Connection) -> str | None:
    """An identity, serial or other non-constant default, or a BEFORE INSERT trigger (trusted to fill it)."""
    found = bind.execute(sa.text(ID), {"table": TABLE}).first()
    if found is None:
        return "there is no id column, so the recorder cannot write"
    identity, generated, default, before_insert = found
    if identity or generated or before_insert or (default is not None and not CONSTANT.fullmatch(default)):
        return None
    return (
        "it has no identity, serial or sequence default"
        + (f" (only DEFAULT {default})" if default else "")
        + ", so every event the recorder writes fails"
    )


# a default that is one constant value for every row (0, '0'::integer, (-1), NULL): no key for a second row
CONSTANT = re.compile(r"\(*('?-?[\d.]+'?|NULL)\)*(::[\w ]+)?", re.IGNORECASE)


def integer_limit(total_type: sa.types.TypeEngine | None) -> int:
    return 2**63 - 1 if isinstance(total_type, sa.BigInteger) else 2**31 - 1


def doctor_index_state(bind: sa.Connection) -> tuple[str | None, str | None]:
    named = bind.execute(sa.text(doctor_index.PG_NAMED), {"table": TABLE, "index": doctor_index.INDEX}).one_or_none()
    if named is None:
        return None, None
    ours, table, definition, valid = named
    if not (ours and doctor_index.PG_PLAIN.fullmatch(definition)):
        return None, f"on {table}: {definition}"
    return ("valid" if valid else "invalid"), None


def build_doctor_index(bind: sa.Connection, state: str | None, options: Options) -> str:
    """Online: ``CREATE INDEX CONCURRENTLY`` outside any transaction (writers go on), read back before the stamp.
    Default mode: in the one transaction, after dropping the INVALID index an interrupted concurrent build left."""
    index, column = doctor_index.INDEX, doctor_index.COLUMN
    if options.online:
        with op.get_context().autocommit_block(), concurrent_failures_in_one_sentence():
            build_concurrently(bind, state, options)
        if doctor_index.found(bind) != "valid":
            raise refusal("doctor_index_still_invalid", index=index)
        return " concurrently"
    if state == "invalid":
        log.info("      dropping the INVALID %s an interrupted concurrent build left, to build it again", index)
        bind.exec_driver_sql(f"{doctor_index.DEFAULT_MODE_DROP}DROP INDEX {index}")
    bind.exec_driver_sql(f"{doctor_index.DEFAULT_MODE_CREATE}CREATE INDEX {index} ON {TABLE} ({column})")
    return ""


def partitioned(bind: sa.Connection) -> bool:
    query = "SELECT relkind = 'p' FROM pg_class WHERE oid = CAST(:table AS regclass)"
    return bool(bind.execute(sa.text(query), {"table": TABLE}).scalar())


def build_concurrently(bind: sa.Connection, state: str | None, options: Options) -> None:
    """In autocommit: writers go on while each index is built."""
    index, column, stays = doctor_index.INDEX, doctor_index.COLUMN, doctor_index.STAYS
    if partitioned(bind):  # the parent's index, catalog only, under a short lock wait with retries
        with_lock_retries(bind, [f"CREATE INDEX IF NOT EXISTS {index} ON ONLY {TABLE} ({column})"], options, stays)
        attach_partitions(bind, options)
        return
    if state == "invalid":
        log.info("      dropping the INVALID %s an interrupted concurrent build left, to build it again", index)
        bind.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
    bind.exec_driver_sql(f"CREATE INDEX CONCURRENTLY {index} ON {TABLE} ({column})")


def partition_index(partition: str) -> str:
    """A name of its own for each partition's index, within PostgreSQL's 63 characters (a hash of the whole name,
    so partitions whose names share a long beginning never share an index name)."""
    return f"{partition[:30]}_{hashlib.md5(partition.encode()).hexdigest()[:8]}_{doctor_index.COLUMN}_idx"


def attach_partitions(bind: sa.Connection, options: Options) -> None:
    """Each partition without an index attached to the parent's gets one, built concurrently, then attached."""
    index, column = doctor_index.INDEX, doctor_index.COLUMN
    for qualified, schema, name, sub_partitioned, attached in bind.execute(
        sa.text(doctor_index.PG_PARTITIONS), {"table": TABLE, "index": index}
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
            bind.exec_driver_sql(f"CREATE INDEX CONCURRENTLY {partition_index(name)} ON {qualified} ({column})")
        with_lock_retries(bind, [f"ALTER INDEX {index} ATTACH PARTITION {child}"], options, doctor_index.STAYS)
        log.info("      partition %s: index built concurrently and attached", qualified)


@contextmanager
def concurrent_failures_in_one_sentence() -> Iterator[None]:
    """A concurrent build that fails leaves an INVALID index (or none): say so, and what re-running does."""
    try:
        yield
    except sa.exc.DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0]
        raise refusal("doctor_index_concurrently_failed", index=doctor_index.INDEX, reason=reason) from None


def fill_trigger_statements() -> list[str]:
    """In the caller's one transaction; ``ENABLE ALWAYS`` so that replicated rows get their totals too."""
    name = fill_trigger.FILL_TRIGGER
    return [
        fill_trigger.PG_FUNCTION,
        *fill_trigger.PG_DROP_TRIGGERS,
        f"CREATE TRIGGER {name} BEFORE INSERT OR UPDATE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION {name}()",
        f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {name}",  # replicated rows too (apply workers)
        f"DROP FUNCTION IF EXISTS {fill_trigger.EARLIER_FILL_TRIGGER}()",
    ]


def fill_trigger_drop_statements() -> list[str]:
    return [*fill_trigger.PG_DROP_TRIGGERS, *(f"DROP FUNCTION IF EXISTS {name}()" for name in fill_trigger.PG_NAMES)]


def fill_trigger_installed(bind: sa.Connection) -> bool:
    query = "SELECT COUNT(*) FROM pg_trigger WHERE tgname IN :names AND tgrelid = CAST(:table AS regclass)"
    statement = sa.text(query).bindparams(sa.bindparam("names", expanding=True))
    return bool(bind.execute(statement, {"names": list(fill_trigger.PG_NAMES), "table": TABLE}).scalar())


def holdover_create_statements() -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {holdover.HOLDOVER} AS {holdover.SELECT_HELD} WITH NO DATA",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {holdover.HOLDOVER}_event_id ON {holdover.HOLDOVER} (event_id)",
    ]


def make_holdover_replicable(bind: sa.Connection) -> None:
    """The set-aside table gets a replica identity (FULL: it has no primary key), so that where a ``FOR ALL
    TABLES`` publication sends it, the DELETE of rows the next upgrade restores is not refused ("does not have a
    replica identity and publishes deletes"). A table an earlier build made gets it before such a DELETE."""
    held = holdover.HOLDOVER
    identity = bind.exec_driver_sql(f"SELECT relreplident FROM pg_class WHERE oid = '{held}'::regclass").scalar()
    if identity != "f":
        bind.exec_driver_sql(f"ALTER TABLE {held} REPLICA IDENTITY FULL")
