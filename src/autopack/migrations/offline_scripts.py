"""Offline (``--sql``) scripts for DBAs: plain SQL, no reads in Python, each checked before its stamp.

A script cannot read the table while it is written, so it is written for the state the revision starts from
(0001 upgrading, 0002 downgrading) and checks, inside the database, what Python checks online: PostgreSQL
with ``DO`` blocks that raise, MariaDB with a scalar subquery that fails ("Subquery returns more than 1
row", explained in a comment above it), SQLite with a guard on the stamp itself.

SQLite: a SQL file applied with plain ``sqlite3 DB < FILE`` carries on after an error and commits at the end;
so the scripts never rebuild the table (no RENAME that a view can break, no operator index or trigger dropped)
but edit it in place with SQLite's documented writable_schema procedure (https://www.sqlite.org/
lang_altertable.html, "Making Other Kinds Of Table Schema Changes"), and the stamp is guarded: a TEMP trigger
on alembic_version rolls the whole transaction back unless the table is in the state the new revision
promises at the moment Alembic's UPDATE stamps it.
"""

import re
from collections.abc import Callable

import sqlalchemy as sa
from alembic import context, op

from autopack.migrations import doctor_index, fill_trigger, holdover
from autopack.migrations.backfill_rule import NEEDS_TOTAL, RULE, split_sum
from autopack.migrations.options import SCRIPT_STATEMENT_TIMEOUT, Options
from autopack.migrations.plan import Plan
from autopack.migrations.postgres_rewrite import rewrite_statement
from autopack.migrations.retired_revisions import RETIRED
from autopack.migrations.table_inspection import (
    MYSQL_READERS_LITERAL,
    PG_PUBLISHED,
    PG_READERS_LITERAL,
    PG_UPDATE_RULES,
    PG_UPDATE_TRIGGERS,
)
from autopack.migrations.usage_table import SPLITS, TABLE, events

DOWNGRADE_PLAN = (
    f"set aside in {holdover.HOLDOVER} the rows the pre-BUILD-144 schema cannot hold; write 0 for their NULL "
    "splits; make prompt_tokens and completion_tokens NOT NULL; drop total_tokens"
)


def offline_upgrade(plan: Plan, change_schema: Callable[[], None]) -> None:
    """A script for a database at 0001. The set-aside table may or may not be there (an earlier downgrade leaves
    it only when it set rows aside), so it is created if missing; the rows it restores or finds superseded are
    deleted from it and the table is kept (plain SQL cannot drop it only when empty): a row the old code changed
    after the downgrade stays there for the operator. ``change_schema``: the portable path, for the servers."""
    dialect = plan.dialect
    words = f"{plan.describe(done=False)}; backfill {RULE}"
    op.get_context().impl.static_output(f"-- BUILD-144 plan ({plan.mode}): {words}")
    offline_preamble(dialect, "upgrade")
    if dialect == "sqlite":
        sqlite_offline_schema_change()
    else:
        change_schema()
    if dialect == "postgresql":
        postgres_script_backfill()
    else:
        op.execute(events.update().where(NEEDS_TOTAL).values(total_tokens=split_sum))
    for statement in holdover.create_statements(dialect):
        op.execute(statement)
    op.execute(holdover.restore_statement())
    op.execute(holdover.holdover.delete().where(holdover.done_with()))
    offline_doctor_index(dialect)
    # after every statement that can fire an operator's trigger: see the SQLite note above
    offline_refuse_unless(dialect, "0002", sa.select(events.c.id).where(NEEDS_TOTAL), "rows still need a total")


def offline_downgrade(plan: Plan, change_schema: Callable[[], None]) -> None:
    """A script for a database at 0002: set aside, placeholders, checked, then the schema back."""
    dialect = plan.dialect
    op.get_context().impl.static_output(f"-- BUILD-144 plan ({plan.mode}): {DOWNGRADE_PLAN}")
    offline_preamble(dialect, "downgrade")
    restamp_retired_offline()
    for statement in holdover.create_statements(dialect):
        op.execute(statement)
    op.execute(holdover.hold_over_statement())
    if dialect == "sqlite":  # DROP COLUMN before the UPDATE that can fire an operator's trigger (note above)
        op.execute(f"ALTER TABLE {TABLE} DROP COLUMN total_tokens")
        op.execute(holdover.placeholders_statement())
        sqlite_offline_edit(
            *delimited((f"{s} INTEGER,", f"{s} INTEGER NOT NULL,") for s in SPLITS),
            unless=f" AND NOT EXISTS (SELECT 1 FROM {TABLE} WHERE typeof(prompt_tokens) = 'null'"
            " OR typeof(completion_tokens) = 'null')",
        )
        offline_refuse_unless(dialect, "0001", None, "")
        return
    op.execute(holdover.placeholders_statement())
    offline_refuse_unless(
        dialect, "0001", holdover.not_set_aside(), "rows the old schema cannot hold were not set aside"
    )
    for statement in fill_trigger.drop_statements(dialect):  # an online upgrade's, if finish-online never ran
        if statement.startswith("DROP FUNCTION"):  # the online mode's own trigger function: no client calls it
            statement = f"-- squawk-ignore ban-drop-function\n{statement}"
        op.execute(statement)
    change_schema()


def restamp_retired_offline() -> None:
    """A database an earlier build of this tree stamped 0003 holds 0002's schema: stamped 0002 first, so that the
    script's final stamp (``WHERE version_num = '0002'``) applies to it too (``retired_revisions``)."""
    context = op.get_context()
    version = sa.table(context.version_table, sa.column("version_num", sa.String), schema=context.version_table_schema)
    op.get_context().impl.static_output("-- a database an earlier build of this tree stamped 0003 is at 0002")
    for old, new in RETIRED.items():
        op.execute(version.update().where(version.c.version_num == old).values(version_num=new))


def literal_sql(statement) -> str:
    return str(statement.compile(dialect=context.get_context().dialect, compile_kwargs={"literal_binds": True}))


def literal_text(sql: str, **names: str) -> str:
    """A catalog query written with bound names (``:table``) as plain SQL, for a script."""
    return literal_sql(sa.text(sql).bindparams(**{k: v for k, v in names.items() if f":{k}" in sql}))


def script_timeouts(dialect: str, options: Options) -> None:
    """PostgreSQL scripts open their transaction with both limits, as squawk's require-lock-timeout and
    require-statement-timeout ask: a script waiting for the table never queues every session behind it for
    longer than lock_timeout, and the rewrite never runs past statement_timeout (both from -x)."""
    if dialect == "postgresql":
        context.execute(f"SET LOCAL lock_timeout = '{options.lock_timeout}'")
        context.execute(f"SET LOCAL statement_timeout = '{options.statement_timeout or SCRIPT_STATEMENT_TIMEOUT}'")


PG_SCRIPT_BACKFILL = """DO $build144$ BEGIN
  IF EXISTS ({triggers}) OR EXISTS ({rules}) OR EXISTS ({publications}) THEN
    {update};
  ELSE
    {rewrite};
  END IF;
END $build144$"""


def postgres_script_backfill() -> None:
    """The backfill as the live upgrade makes it (``postgres_rewrite``): one table rewrite that keeps the table's
    size, unless UPDATE triggers or rules on the table, or a publication of it, need each row UPDATEd."""
    op.get_context().impl.static_output(
        "-- The backfill: one table rewrite (ALTER COLUMN ... TYPE ... USING the rule), or an UPDATE where the "
        "table's UPDATE triggers, rules or publications need one; then ANALYZE."
    )
    names = {"table": TABLE}
    op.execute(
        PG_SCRIPT_BACKFILL.format(
            triggers=literal_text(PG_UPDATE_TRIGGERS, **names).strip(),
            rules=literal_text(PG_UPDATE_RULES, **names),
            publications=literal_text(PG_PUBLISHED, **names).strip(),
            update=literal_sql(events.update().where(NEEDS_TOTAL).values(total_tokens=split_sum)),
            rewrite=rewrite_statement("INTEGER"),
        )
    )
    op.execute(f"ANALYZE {TABLE}")


PG_CHECK = "DO $build144$ BEGIN IF EXISTS ({query}) THEN RAISE EXCEPTION '{message}'; END IF; END $build144$"
MYSQL_CHECK = "SELECT (SELECT 1 UNION ALL SELECT 2 FROM DUAL WHERE EXISTS ({query})) AS build144_check"
MYSQL_ON_UPDATE = f"""SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = '{TABLE}' AND LOWER(EXTRA) LIKE '%on update%'"""
MYSQL_NARROWING = f"""SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = '{TABLE}' AND COLUMN_NAME IN ('prompt_tokens', 'completion_tokens')
  AND (DATA_TYPE <> 'int' OR COLUMN_COMMENT <> '' OR COALESCE(COLUMN_DEFAULT, 'NULL') <> 'NULL')"""


ON_UPDATE_MESSAGE = (
    "a column of llm_usage_events has ON UPDATE CURRENT_TIMESTAMP: every UPDATE of the script would rewrite it; "
    "drop that clause first"
)


def offline_check(dialect: str, query: str, message: str) -> None:
    """A statement that fails, so the script stops (PostgreSQL: its transaction aborts), when ``query`` finds a
    row. MariaDB has no DO block: there the failure is 'Subquery returns more than 1 row', explained above it."""
    text = f"BUILD-144 script refused: {message}; nothing was changed"
    if dialect == "postgresql":
        op.execute(PG_CHECK.format(query=query, message=text.replace("'", "''")))
    else:
        explanation = f"-- If the next statement fails with 'Subquery returns more than 1 row': {message}."
        op.get_context().impl.static_output(explanation)
        op.execute(MYSQL_CHECK.format(query=query))


INDEX, COLUMN = doctor_index.INDEX, doctor_index.COLUMN
PG_NOT_OUR_INDEX = f"""SELECT 1 FROM pg_class i JOIN pg_index x ON x.indexrelid = i.oid
  WHERE i.relname = '{INDEX}' AND i.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = '{TABLE}'::regclass)
  AND (x.indrelid <> '{TABLE}'::regclass OR NOT x.indisvalid
       OR pg_get_indexdef(x.indexrelid) !~ '^CREATE INDEX {INDEX} ON (ONLY )?\\S+ USING btree \\({COLUMN}\\)$')"""
MYSQL_NOT_OUR_INDEX = f"""SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = '{TABLE}' AND LOWER(INDEX_NAME) = '{INDEX}' AND (BINARY INDEX_NAME <> '{INDEX}' OR NON_UNIQUE = 0
  OR COLUMN_NAME <> '{COLUMN}' OR SEQ_IN_INDEX > 1 OR SUB_PART IS NOT NULL OR INDEX_TYPE <> 'BTREE'
  OR COALESCE(COLLATION, '') <> 'A')"""
SQLITE_OUR_INDEX = doctor_index.SQLITE_PLAIN
NOT_OUR_INDEX = (
    f"an index named {INDEX} exists that is not a valid plain index on {TABLE} ({COLUMN}) (another table's, other "
    "columns, or INVALID after an interrupted concurrent build): rename or drop it, or run the online command"
)


def offline_doctor_index(dialect: str) -> None:
    """The index the pre-BUILD-144 schema declares, for a table that lacks it (``doctor_index``); the servers'
    scripts refused an impostor in their preamble, SQLite's stamp is guarded (an index of the name on another
    table would have been kept by IF NOT EXISTS)."""
    lint = doctor_index.DEFAULT_MODE_CREATE if dialect == "postgresql" else ""
    op.execute(f"{lint}CREATE INDEX IF NOT EXISTS {INDEX} ON {TABLE} ({COLUMN})")
    if dialect == "sqlite":
        sqlite_guard("0002", SQLITE_OUR_INDEX, f"{INDEX} is not the plain index on {TABLE} ({COLUMN})", "index")


def offline_preamble(dialect: str, direction: str) -> None:
    if dialect == "postgresql":  # every row seen; a role that row-level security would filter fails here
        op.execute("SET LOCAL row_security = off")
    elif dialect in ("mysql", "mariadb"):
        op.execute("SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'STRICT_ALL_TABLES')")
        if direction == "upgrade":
            offline_check(dialect, MYSQL_ON_UPDATE, ON_UPDATE_MESSAGE)
            narrowing = "prompt_tokens or completion_tokens is not a plain INT column (BIGINT, a default or a comment)"
            offline_check(dialect, MYSQL_NARROWING, f"{narrowing}: the script would narrow it; use the online command")
    if direction == "upgrade" and dialect != "sqlite":  # an index of the name that is not ours: refused
        offline_check(dialect, PG_NOT_OUR_INDEX if dialect == "postgresql" else MYSQL_NOT_OUR_INDEX, NOT_OUR_INDEX)
    if direction == "downgrade" and dialect != "sqlite":
        readers = PG_READERS_LITERAL if dialect == "postgresql" else MYSQL_READERS_LITERAL
        readers_message = (
            "a view, trigger, rule, CHECK or generated column reads total_tokens, which the downgrade drops"
        )
        offline_check(dialect, readers, f"{readers_message}: drop or rewrite it first")


def offline_refuse_unless(dialect: str, version: str, left: sa.Select | None, message: str) -> None:
    """The last check before Alembic's stamp: SQLite guards the stamp itself; the servers check the rows."""
    if dialect == "sqlite":
        sqlite_stamp_guard(version, STATE_0002 if version == "0002" else STATE_0001)
    elif left is not None:
        offline_check(dialect, literal_sql(left), f"{message} (a trigger or rule on the table?)")


# --- SQLite: in place, stamped only if the table really ended as intended (see the module's docstring) ----

STATE_0002 = f"""(SELECT count(*) FROM pragma_table_info('{TABLE}')
      WHERE name = 'total_tokens' AND "notnull" = 1 AND dflt_value = '0') = 1
  AND (SELECT count(*) FROM pragma_table_info('{TABLE}')
      WHERE name IN ('prompt_tokens', 'completion_tokens') AND "notnull" = 0) = 2
  AND NOT EXISTS (SELECT 1 FROM {TABLE}
      WHERE total_tokens = 0 AND COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0) <> 0)"""
STATE_0001 = f"""NOT EXISTS (SELECT 1 FROM pragma_table_info('{TABLE}') WHERE name = 'total_tokens')
  AND (SELECT count(*) FROM pragma_table_info('{TABLE}')
      WHERE name IN ('prompt_tokens', 'completion_tokens') AND "notnull" = 1) = 2
  AND NOT EXISTS (SELECT 1 FROM {TABLE}
      WHERE typeof(prompt_tokens) = 'null' OR typeof(completion_tokens) = 'null')"""


def sqlite_stamp_guard(version: str, state: str) -> None:
    sqlite_guard(version, state, f"{TABLE} did not end in the state of revision {version} (see the script header)")


def sqlite_guard(version: str, state: str, why: str, name: str = "") -> None:
    """The stamp to ``version`` rolls the whole script back, saying ``why``, unless ``state`` holds."""
    trigger = f"build144_stamp_guard_{version}{name and '_'}{name}"
    op.execute(
        f"CREATE TEMP TRIGGER IF NOT EXISTS {trigger} BEFORE UPDATE ON main.{op.get_context().version_table} "
        f"WHEN NEW.version_num = '{version}' AND NOT ({state}) BEGIN SELECT RAISE(ROLLBACK, "
        f"'BUILD-144 script: {why}; everything this script did is rolled back'); END"
    )


def sqlite_offline_edit(*replacements: tuple[str, str], unless: str = "") -> None:
    """SQLite's documented writable_schema edit of the table's CREATE text; then this connection and every other
    re-read the schema, so nothing that follows (ALTER TABLE's offsets, the stamp guard) sees a stale one."""

    def literal(value: str) -> str:  # a tab or newline as char(9) / char(10), so the script stays one line each
        parts = re.split(r"([\t\n])", value)
        return " || ".join(f"char({ord(p)})" if p in "\t\n" and p else f"'{p}'" for p in parts if p)

    text = "sql"
    for old, new in replacements:
        text = f"replace({text}, {literal(old)}, {literal(new)})"
    op.execute("PRAGMA writable_schema = ON")
    op.execute(f"UPDATE sqlite_master SET sql = {text} WHERE type = 'table' AND name = '{TABLE}'{unless}")
    op.execute("PRAGMA writable_schema = RESET")  # this connection re-reads the schema (and the flag goes off)
    op.execute("CREATE TABLE build144_schema_reload (x INTEGER)")  # a schema change: every other connection too
    op.execute("DROP TABLE build144_schema_reload")


SQLITE_SCRIPT_HEADER = """-- BUILD-144 {direction} script for SQLite, for a database at revision {start}.
-- Needs SQLite >= 3.35 and no other process using the database. Changes llm_usage_events in place (ALTER TABLE and
-- SQLite's documented writable_schema edit of its definition): the table is never copied, and your indexes, views
-- and triggers on it stay as they are. Apply with `sqlite3 DB < FILE`, `sqlite3 -bail DB < FILE` or Python's
-- executescript: the final stamp is guarded, so unless the table ends in the state of revision {end}, everything
-- the script did is rolled back (an error printed before it says why) and the database stays at {start}."""


def delimited(pairs) -> list[tuple[str, str]]:
    """Each (old, new) text edit anchored on what may precede a column name in a CREATE TABLE, so that a column
    of the operator's whose name ends the same way (cached_prompt_tokens) is never edited."""
    return [(f"{d}{old}", f"{d}{new}") for old, new in pairs for d in (" ", "\t", "\n", ",", "(")]


def sqlite_offline_schema_change() -> None:
    op.get_context().impl.static_output(SQLITE_SCRIPT_HEADER.format(direction="upgrade", start="0001", end="0002"))
    op.execute(f"ALTER TABLE {TABLE} ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0")
    sqlite_offline_edit(*delimited((f"{s} INTEGER NOT NULL", f"{s} INTEGER") for s in SPLITS))
    sqlite_offline_edit(  # a BUILD-144 table made by create_all() has the column without its DEFAULT 0
        *delimited([("total_tokens INTEGER NOT NULL", "total_tokens INTEGER NOT NULL DEFAULT 0")]),
        unless=" AND sql NOT LIKE '%total_tokens INTEGER NOT NULL DEFAULT%'",
    )
