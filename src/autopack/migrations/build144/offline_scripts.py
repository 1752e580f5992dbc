"""Offline (``--sql``) scripts for DBAs: plain SQL, no reads in Python, each checked before its stamp.

A script cannot read the table while it is written, so it is written for the state the revision starts from
(0001 upgrading, 0002 downgrading) and checks, inside the database, what Python checks online: PostgreSQL
with ``DO`` blocks that raise, MariaDB with a scalar subquery that fails ("Subquery returns more than 1
row", explained in a comment above it), SQLite with a guard on the stamp itself. Each engine's script is its
strategy's ``offline_script``; the pieces they share are here.

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

from autopack.migrations.build144 import doctor_index, engines, holdover
from autopack.migrations.build144.backfill_rule import RULE
from autopack.migrations.build144.plan import Plan
from autopack.migrations.build144.retired_revisions import RETIRED
from autopack.migrations.build144.usage_table import SPLITS, TABLE

DOWNGRADE_PLAN = (
    f"set aside in {holdover.HOLDOVER} the rows the pre-BUILD-144 schema cannot hold; write 0 for their NULL "
    "splits; make prompt_tokens and completion_tokens NOT NULL; drop total_tokens"
)
# what the servers' scripts check, in the words a failed check prints
INDEX, COLUMN = doctor_index.INDEX, doctor_index.COLUMN
NOT_OUR_INDEX = (
    f"an index named {INDEX} exists that is not a valid plain index on {TABLE} ({COLUMN}) (another table's, other "
    "columns, or INVALID after an interrupted concurrent build): rename or drop it, or run the online command"
)
READERS_MESSAGE = (
    "a view, trigger, rule, CHECK or generated column reads total_tokens, which the downgrade drops: drop or rewrite "
    "it first"
)
STILL_TO_FILL = "rows still need a total (a trigger or rule on the table?)"
NOT_SET_ASIDE = "rows the old schema cannot hold were not set aside (a trigger or rule on the table?)"


def offline_script(plan: Plan, direction: str, change_schema: Callable[[], None]) -> None:
    """The script for a database at 0001 (``upgrade``) or 0002 (``downgrade``), in the engine's words.
    ``change_schema``: the portable path, for the servers."""
    engines.named(plan.dialect).offline_script(plan, direction, change_schema)


def say_the_plan(plan: Plan, direction: str) -> None:
    words = f"{plan.describe(done=False)}; backfill {RULE}" if direction == "upgrade" else DOWNGRADE_PLAN
    op.get_context().impl.static_output(f"-- BUILD-144 plan ({plan.mode}): {words}")


def restore_set_aside(create_statements: list[str]) -> None:
    """The upgrade's restore. The set-aside table may or may not be there (an earlier downgrade leaves it only when
    it set rows aside), so it is created if missing; the rows it restores or finds superseded are deleted from it
    and the table is kept (plain SQL cannot drop it only when empty): a row the old code changed after the
    downgrade stays there for the operator."""
    for statement in create_statements:
        op.execute(statement)
    op.execute(holdover.restore_statement())
    op.execute(holdover.holdover.delete().where(holdover.done_with()))


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
