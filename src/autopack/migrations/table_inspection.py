"""What is on and around ``llm_usage_events`` as it really is: constraints, readers, hooks, publications.

The table an operator has is not always the one this tree would have made: a CHECK constraint may still
forbid NULL splits, a view or trigger may read the column a downgrade drops, a trigger may run on every
UPDATE. These functions read the catalogs of each engine and return what they find; ``preflight_checks``
decides what to refuse, and in which words.
"""

import re

import sqlalchemy as sa

from autopack.migrations.fill_trigger import MARIADB_NAMES, PG_NAMES
from autopack.migrations.usage_table import NOT_NULL_CHECKS, TABLE

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def integer_limit(dialect: str, total_type: sa.types.TypeEngine | None) -> int:
    """The largest total ``total_tokens`` can hold: SQLite and BIGINT columns 64-bit, INTEGER 32-bit."""
    if dialect == "sqlite" or isinstance(total_type, sa.BigInteger):
        return INT64_MAX
    return INT32_MAX


def _probe_row(bind: sa.Connection, columns: list[str], has_total: bool) -> str:
    """SQL for one row as a total-only event would look: the first row's other values (or NULLs), NULL splits."""
    dialect = bind.dialect
    quote = dialect.identifier_preparer.quote
    null_int = sa.cast(sa.null(), sa.Integer).compile(dialect=dialect)
    values = []
    for name in columns:
        if name in ("prompt_tokens", "completion_tokens"):
            values.append(f"{null_int} AS {quote(name)}")
        elif name == "total_tokens" and has_total:
            values.append(f"COALESCE(NULLIF(e.{quote(name)}, 0), 1) AS {quote(name)}")
        else:
            values.append(f"e.{quote(name)} AS {quote(name)}")
    first = f"SELECT * FROM {quote(TABLE)} ORDER BY 1 LIMIT 1"
    return f"SELECT {', '.join(values)} FROM (SELECT 1 AS one) d LEFT JOIN ({first}) e ON 1 = 1"


def check_constraints(bind: sa.Connection) -> list[tuple[str, str]]:
    """(name, expression) of every CHECK constraint on the table (column-level ones included on MariaDB)."""
    if bind.dialect.name in ("mysql", "mariadb"):
        return [
            (name, clause)
            for name, clause in bind.exec_driver_sql(
                "SELECT CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                "WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                (TABLE,),
            )
        ]
    return [(c["name"] or "(unnamed)", c["sqltext"]) for c in sa.inspect(bind).get_check_constraints(TABLE)]


def checks_forbidding_total_only(bind: sa.Connection) -> list[str]:
    """CHECK constraints that a total-only row (NULL splits, a positive total) would violate, as 'name (expr)'.

    Each constraint's own expression is evaluated on such a row, inside a SAVEPOINT-free read: a CHECK fails
    only when its expression is FALSE, so ``prompt_tokens >= 0`` passes a NULL and ``prompt_tokens IS NOT
    NULL`` does not."""
    columns = [c["name"] for c in sa.inspect(bind).get_columns(TABLE)]
    probe = _probe_row(bind, columns, "total_tokens" in columns)
    forbidding = []
    for name, expression in check_constraints(bind):
        if name in NOT_NULL_CHECKS.values():  # an interrupted online downgrade's: the upgrade drops them
            continue
        if not re.search(r"\b(prompt_tokens|completion_tokens)\b", expression, re.IGNORECASE):
            continue
        sql = f"SELECT COUNT(*) FROM ({probe}) probe WHERE NOT ({expression})"
        if bind.dialect.name == "postgresql":
            with bind.begin_nested():
                violated = bind.exec_driver_sql(sql).scalar()
        else:
            violated = bind.exec_driver_sql(sql.replace("%", "%%") if "mysql" in bind.dialect.name else sql).scalar()
        if violated:
            forbidding.append(f"{name} ({expression})")
    return forbidding


# --- objects that read total_tokens (the downgrade drops it) -----------------------------------------------

# the fill trigger under every name it has had, as SQL lists: never one of the operator's readers or hooks
OWN_PG_TRIGGERS = ", ".join(f"'{name}'" for name in PG_NAMES)
OWN_MARIADB_TRIGGERS = ", ".join(f"'{name}'" for name in MARIADB_NAMES)
PG_READERS = f"""
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
WHERE t.tgrelid IN (SELECT oid FROM rels) AND NOT t.tgisinternal AND t.tgname NOT IN ({OWN_PG_TRIGGERS})
  AND p.prosrc ~ '\\mtotal_tokens\\M'
"""

MYSQL_READERS = f"""
SELECT CONCAT('view ', TABLE_NAME) FROM information_schema.VIEWS
WHERE TABLE_SCHEMA = DATABASE() AND VIEW_DEFINITION LIKE '%%total_tokens%%'
UNION ALL
SELECT CONCAT('trigger ', TRIGGER_NAME) FROM information_schema.TRIGGERS
WHERE TRIGGER_SCHEMA = DATABASE() AND ACTION_STATEMENT LIKE '%%total_tokens%%'
  AND TRIGGER_NAME NOT IN ({OWN_MARIADB_TRIGGERS})
UNION ALL
SELECT CONCAT('generated column ', COLUMN_NAME) FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND GENERATION_EXPRESSION LIKE '%%total_tokens%%'
UNION ALL
SELECT CONCAT('CHECK constraint ', CONSTRAINT_NAME) FROM information_schema.CHECK_CONSTRAINTS
WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = %s AND CHECK_CLAUSE LIKE '%%total_tokens%%'
"""


# the same queries with the table named literally, for the offline scripts' checks
PG_READERS_LITERAL = PG_READERS.replace("CAST(:table AS regclass)", f"'{TABLE}'::regclass")
MYSQL_READERS_LITERAL = MYSQL_READERS.replace("%s", f"'{TABLE}'").replace("%%", "%")


def objects_reading_total_tokens(bind: sa.Connection) -> list[str]:
    """Views, triggers (WHEN, body, trigger function), rules, generated columns and CHECKs that refer to
    ``total_tokens``: after the downgrade drops it, each would break the old code's writes or reads."""
    word = re.compile(r"\btotal_tokens\b", re.IGNORECASE)
    if bind.dialect.name == "sqlite":
        found = [
            f"{kind} {name}"
            for kind, name, sql in bind.exec_driver_sql(
                "SELECT type, name, sql FROM sqlite_master WHERE type IN ('view', 'trigger') AND sql IS NOT NULL"
            )
            if word.search(sql)
        ]
        for name, sql in bind.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (TABLE,)
        ):
            expression = any(c[1] == -2 for c in bind.exec_driver_sql(f'PRAGMA index_xinfo("{name}")'))
            if word.search(sql) and (expression or re.search(r"\bWHERE\b", sql, re.IGNORECASE)):
                found.append(f"index {name} (an expression or partial index)")
        (table_sql,) = bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
        ).one()
        if len(word.findall(table_sql)) > 1:  # besides its own definition: a CHECK or a generated column
            found.append(f"a CHECK constraint or generated column in {TABLE}'s definition")
        return found
    if bind.dialect.name == "postgresql":
        return [r[0] for r in bind.execute(sa.text(PG_READERS), {"table": TABLE})]
    return [r[0] for r in bind.exec_driver_sql(MYSQL_READERS, (TABLE, TABLE))]


# --- what runs when the backfill UPDATEs a row ---------------------------------------------------------------


# the table and everything an ALTER TABLE or UPDATE of it reaches: its partitions and INHERITS children, any depth
PG_FAMILY = """WITH RECURSIVE family(relid) AS (
    SELECT CAST(CAST(:table AS regclass) AS oid)
    UNION SELECT i.inhrelid FROM pg_inherits i JOIN family f ON i.inhparent = f.relid)"""
PG_UPDATE_TRIGGERS = f"""{PG_FAMILY}
SELECT 'trigger ' || t.tgname, (t.tgtype & 1) = 1 FROM pg_trigger t JOIN family f ON t.tgrelid = f.relid
WHERE NOT t.tgisinternal AND t.tgname NOT IN ({OWN_PG_TRIGGERS}) AND (t.tgtype & 16) = 16 AND t.tgenabled IN ('O', 'A')
  AND t.tgparentid = 0
"""  # (tgtype & 1): FOR EACH ROW; (tgtype & 16): TRIGGER_TYPE_UPDATE; tgenabled O/A: fires in this session;
# tgparentid 0: not a partition's clone of its parent's trigger (PostgreSQL 13+), so each trigger is named once
PG_UPDATE_RULES = f"""{PG_FAMILY}
SELECT 'rule ' || r.rulename, false FROM pg_rewrite r JOIN family f ON r.ev_class = f.relid
WHERE r.ev_type = '2' AND r.ev_enabled IN ('O', 'A')
"""  # ev_type 2: ON UPDATE


def update_hooks(bind: sa.Connection) -> list[tuple[str, bool]]:
    """(description, fires once per row) of every user trigger and rule that runs on an UPDATE of the table."""
    dialect = bind.dialect.name
    if dialect == "sqlite":
        return [
            (f"trigger {name}", True)
            for name, sql in bind.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (TABLE,)
            )
            if re.search(r"\bUPDATE\b(\s+OF\b[^O]*)?\s+ON\b", sql, re.IGNORECASE)
        ]
    if dialect == "postgresql":
        triggers = bind.execute(sa.text(PG_UPDATE_TRIGGERS), {"table": TABLE}).all()
        rules = bind.execute(sa.text(PG_UPDATE_RULES), {"table": TABLE}).all()
        return [(name, bool(per_row)) for name, per_row in [*triggers, *rules]]
    return [
        (f"trigger {name}", True)
        for (name,) in bind.exec_driver_sql(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
            "AND EVENT_OBJECT_TABLE = %s AND EVENT_MANIPULATION = 'UPDATE' "
            f"AND TRIGGER_NAME NOT IN ({OWN_MARIADB_TRIGGERS})",
            (TABLE,),
        )
    ]


PG_PUBLICATIONS = """
SELECT p.pubname, c.relreplident, pt.rowfilter
FROM pg_publication p
JOIN pg_publication_tables pt ON pt.pubname = p.pubname
JOIN pg_class c ON c.oid = CAST(:table AS regclass)
WHERE pt.tablename = :name AND pt.schemaname = (SELECT n.nspname FROM pg_namespace n WHERE n.oid = c.relnamespace)
  AND p.pubupdate
"""
# publications that send UPDATEs of the table or of any partition or child (pg_publication_tables lists the leaf
# partitions of a partitioned table unless it is published via its root)
PG_PUBLISHED = f"""{PG_FAMILY}
SELECT DISTINCT pt.pubname FROM pg_publication_tables pt JOIN pg_publication p ON p.pubname = pt.pubname
JOIN family f ON f.relid = CAST(CAST(format('%I.%I', pt.schemaname, pt.tablename) AS regclass) AS oid)
WHERE p.pubupdate
"""


def publications_refusing_updates(bind: sa.Connection) -> list[tuple[str, str]]:
    """(publication, why) for each publication that publishes UPDATEs while the table's replica identity cannot
    carry them: REPLICA IDENTITY NOTHING, or a row filter on columns outside the identity. PostgreSQL would
    refuse the backfill's UPDATE."""
    if bind.dialect.name != "postgresql":
        return []
    found = []
    for name, identity, row_filter in bind.execute(sa.text(PG_PUBLICATIONS), {"table": TABLE, "name": TABLE}):
        filtered = row_filter and identity != "f" and re.search(r"\b(?!id\b)[a-z_]+\b", row_filter.lower())
        if identity == "n" or filtered:
            why = "REPLICA IDENTITY NOTHING" if identity == "n" else f"a row filter ({row_filter}) outside its identity"
            found.append((name, why))
    return found


def publications_of(bind: sa.Connection) -> list[str]:
    """The publications that send UPDATEs of the table, its partitions or its children (PostgreSQL)."""
    return sorted(bind.execute(sa.text(PG_PUBLISHED), {"table": TABLE}).scalars())


def system_versioned(bind: sa.Connection) -> bool:
    if bind.dialect.name not in ("mysql", "mariadb"):
        return False
    return bool(
        bind.exec_driver_sql(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
            "AND TABLE_TYPE = 'SYSTEM VERSIONED'",
            (TABLE,),
        ).scalar()
    )


def columns_rewritten_on_update(bind: sa.Connection) -> list[str]:
    """MariaDB/MySQL columns with ``ON UPDATE CURRENT_TIMESTAMP``: every UPDATE the migration makes would rewrite
    them (an event's created_at moved to today)."""
    if bind.dialect.name not in ("mysql", "mariadb"):
        return []
    return list(
        bind.exec_driver_sql(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
            "AND LOWER(EXTRA) LIKE %s",
            (TABLE, "%on update%"),
        )
        .scalars()
        .all()
    )


# --- the table's name and its id, as the application needs them ------------------------------------------------


def case_sensitive_names(bind: sa.Connection) -> bool:
    """Whether the engine treats ``LLM_Usage_Events`` and ``llm_usage_events`` as two tables: PostgreSQL (a quoted
    name keeps its case), MariaDB/MySQL with ``lower_case_table_names = 0`` (the Linux default); not SQLite."""
    if bind.dialect.name == "sqlite":
        return False
    if bind.dialect.name == "postgresql":
        return True
    return bind.exec_driver_sql("SELECT @@lower_case_table_names").scalar() == 0


NAMES_IN_OTHER_CASE = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table' AND lower(name) = ? AND name <> ? ORDER BY name",
    # the tables the search_path reaches (where SQLAlchemy and Alembic look), and foreign or partitioned ones
    "postgresql": "SELECT c.relname FROM pg_class c WHERE lower(c.relname) = %s AND c.relname <> %s "
    "AND c.relkind IN ('r', 'p', 'f') AND pg_table_is_visible(c.oid) ORDER BY 1",
    # information_schema compares names without case: BINARY tells the spellings apart
    "mysql": "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
    "AND TABLE_TYPE <> 'VIEW' AND LOWER(TABLE_NAME) = %s AND BINARY TABLE_NAME <> %s ORDER BY 1",
}


def names_in_other_case(bind: sa.Connection) -> list[str]:
    """Tables whose name is ``llm_usage_events`` in other letter case (``LLM_Usage_Events``: a dump from a Windows or
    macOS server, a quoted name), where SQLAlchemy and Alembic look for the table."""
    sql = NAMES_IN_OTHER_CASE["mysql" if bind.dialect.name == "mariadb" else bind.dialect.name]
    return list(bind.exec_driver_sql(sql, (TABLE, TABLE)).scalars().all())


def rows_in(bind: sa.Connection, name: str) -> int:
    quote = bind.dialect.identifier_preparer.quote_identifier  # always quoted: the name as it is spelled
    return bind.exec_driver_sql(f"SELECT COUNT(*) FROM {quote(name)}").scalar()


def rename_to_own_case(bind: sa.Connection) -> str | None:
    """SQLite treats ``LLM_Usage_Events`` and ``llm_usage_events`` as one table, but SQLAlchemy's reflection and this
    tree's catalog reads look the name up as spelled: rename it to ``llm_usage_events`` (through a scratch name:
    SQLite refuses a rename that only changes letter case; views, triggers and foreign keys follow the rename).
    Inside the caller's transaction; the old name, or None when there was nothing to rename."""
    if bind.dialect.name != "sqlite":
        return None
    found = names_in_other_case(bind)
    if not found:
        return None
    scratch = f"{TABLE}_build144_renaming"
    bind.exec_driver_sql(f'ALTER TABLE "{found[0]}" RENAME TO "{scratch}"')
    bind.exec_driver_sql(f'ALTER TABLE "{scratch}" RENAME TO "{TABLE}"')
    return found[0]


PG_ID = """
SELECT a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid),
  EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = a.attrelid AND NOT t.tgisinternal AND (t.tgtype & 7) = 7)
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = CAST(:table AS regclass) AND a.attname = 'id' AND NOT a.attisdropped
"""  # (tgtype & 7) = 7: a BEFORE INSERT row trigger, which may fill the id itself
MYSQL_ID = """
SELECT LOWER(c.EXTRA), c.COLUMN_DEFAULT, (SELECT COUNT(*) FROM information_schema.TRIGGERS t
  WHERE t.EVENT_OBJECT_SCHEMA = DATABASE() AND t.EVENT_OBJECT_TABLE = %s AND t.ACTION_TIMING = 'BEFORE'
  AND t.EVENT_MANIPULATION = 'INSERT')
FROM information_schema.COLUMNS c WHERE c.TABLE_SCHEMA = DATABASE() AND c.TABLE_NAME = %s AND c.COLUMN_NAME = 'id'
"""
# what gives the id a generator, per engine: the recorder's INSERTs leave id out (SQLAlchemy's integer key)
ID_GENERATOR = {
    "sqlite": "copy the rows into a table declared with id INTEGER PRIMARY KEY (a rowid table), the only id SQLite "
    "fills in",
    "postgresql": f"ALTER TABLE {TABLE} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY, then SELECT setval("
    f"pg_get_serial_sequence('{TABLE}', 'id'), max(id)) FROM {TABLE}",
    "mysql": f"ALTER TABLE {TABLE} MODIFY id <its type> NOT NULL AUTO_INCREMENT",
}


def id_generator_fix(dialect: str) -> str:
    return ID_GENERATOR["mysql" if dialect == "mariadb" else dialect]


# a default that is one constant value for every row (0, '0'::integer, (-1), NULL): no key for a second row
CONSTANT = re.compile(r"\(*('?-?[\d.]+'?|NULL)\)*(::[\w ]+)?", re.IGNORECASE)


def id_not_generated(bind: sa.Connection) -> str | None:
    """Why the database does not fill in ``id`` for an INSERT that leaves it out, as the recorder's do (SQLAlchemy
    expects the database to generate an integer primary key), or None when it does: on SQLite the id must be the
    rowid's alias (a rowid table whose only key is ``id INTEGER PRIMARY KEY``), on PostgreSQL an identity, serial
    or other non-constant default, on MariaDB/MySQL AUTO_INCREMENT or a sequence's default. A BEFORE INSERT
    trigger on a server is trusted to fill it."""
    dialect = bind.dialect.name
    if dialect == "sqlite":
        info = bind.exec_driver_sql(f'PRAGMA table_info("{TABLE}")').all()
        if not any(column[1] == "id" for column in info):
            return "there is no id column, so the recorder cannot write"
        without_rowid = bind.exec_driver_sql(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?", (TABLE,)
        ).scalar()
        if without_rowid:
            return "the table is WITHOUT ROWID, so SQLite fills in no key and every event the recorder writes fails"
        key = [column[1] for column in sorted(info, key=lambda c: c[5]) if column[5]]
        pk_index = bind.exec_driver_sql(f"SELECT 1 FROM pragma_index_list('{TABLE}') WHERE origin = 'pk'").first()
        if key != ["id"] or pk_index is not None:  # a key with an index of its own is not the rowid
            not_null = next(column[3] for column in info if column[1] == "id")
            return (
                "it is not the rowid's alias, which only a column declared exactly 'id INTEGER PRIMARY KEY' is "
                "(INT, BIGINT, a PRIMARY KEY DESC or a key of several columns is not), "
                + (
                    "so every event the recorder writes fails on NOT NULL"
                    if not_null
                    else "so SQLite stores every event the recorder writes with a NULL id (no key to find it by; a "
                    "downgrade cannot set such rows aside)"
                )
            )
        return None
    if dialect == "postgresql":
        found = bind.execute(sa.text(PG_ID), {"table": TABLE}).first()
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
    found = bind.exec_driver_sql(MYSQL_ID, (TABLE, TABLE)).first()
    if found is None:
        return "there is no id column, so the recorder cannot write"
    extra, default, before_insert = found
    if "auto_increment" in (extra or "") or before_insert or (default is not None and not CONSTANT.fullmatch(default)):
        return None
    return (
        "it is not AUTO_INCREMENT and has no sequence default"
        + (f" (only DEFAULT {default})" if default else "")
        + ", so every event the recorder writes fails"
    )
