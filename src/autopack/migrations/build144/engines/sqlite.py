"""BUILD-144 on SQLite: the table's definition changed in place, by SQLite's documented procedure; or rebuilt,
keeping what it can.

Why it is safe. SQLite's ALTER TABLE cannot drop NOT NULL or add a DEFAULT. Its documentation gives the
procedure for changes that "do not affect the on-disk content in any way" (https://www.sqlite.org/
lang_altertable.html, "Making Other Kinds Of Table Schema Changes"): edit the CREATE TABLE text in
``sqlite_master`` under ``PRAGMA writable_schema``, bump ``schema_version``, inside the caller's transaction.
Removing NOT NULL and adding a DEFAULT are such changes; adding NOT NULL back is one too once no row holds a
NULL (the downgrade proves that first). The edited text is created in a scratch in-memory database and must
come out with exactly the intended PRAGMA table_info fields, and the real table is checked again after the
edit; otherwise nothing is written and the table is rebuilt instead (Alembic's batch mode, the portable
path), with the operator's indexes, views and triggers recreated verbatim, or refused in one sentence when
the definition holds what a rebuild would lose.
"""

import logging
import re
import sqlite3
from collections.abc import Callable
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Connection, exc

from autopack.migrations.build144 import doctor_index, holdover, offline_scripts
from autopack.migrations.build144.backfill_rule import NEEDS_TOTAL, split_sum
from autopack.migrations.build144.batched_backfill import backfill as batched_backfill
from autopack.migrations.build144.messages import LEAVES, NOTHING_CHANGED, refusal
from autopack.migrations.build144.plan import Plan
from autopack.migrations.build144.usage_table import SPLITS, TABLE, events, total_tokens_column


class NotEditableInPlace(Exception):
    """The table's stored definition is not one the in-place edit recognises: rebuild the table instead."""


def _column(name: str) -> str:
    return rf"""(?P<col>(?<![\w"`\]])["`\[]?{re.escape(name)}["`\]]?\s+INTEGER)"""


def _edit_once(sql: str, pattern: str, replacement: str, what: str) -> str:
    edited, count = re.subn(pattern, replacement, sql, flags=re.IGNORECASE)
    if count != 1:
        raise NotEditableInPlace(f"{what}: found {count} matching column definitions")
    return edited


def drop_not_null(sql: str, column: str) -> str:
    return _edit_once(sql, _column(column) + r"\s+NOT\s+NULL\b", r"\g<col>", f"drop NOT NULL on {column}")


def add_not_null(sql: str, column: str) -> str:
    return _edit_once(sql, _column(column) + r"(?=\s*[,)])", r"\g<col> NOT NULL", f"add NOT NULL on {column}")


def add_default_zero(sql: str, column: str) -> str:
    return _edit_once(
        sql, _column(column) + r"\s+NOT\s+NULL(?=\s*[,)])", r"\g<col> NOT NULL DEFAULT 0", f"add DEFAULT 0 on {column}"
    )


def _table_info(connection: sqlite3.Connection, table: str) -> list[tuple]:
    return connection.execute(f'PRAGMA table_info("{table}")').fetchall()


def sqlite_edit_definition(
    connection: Connection, table: str, edit: Callable[[str], str], wanted: dict[str, dict[str, object]]
) -> None:
    """Change ``table``'s stored CREATE TABLE text by ``edit``, with SQLite's documented procedure for removing
    NOT NULL constraints and changing defaults (https://www.sqlite.org/lang_altertable.html#otheralter).

    The edited text is first created in a scratch in-memory database and must come out with every column as
    ``wanted`` says (``{"prompt_tokens": {"notnull": 0}}``: PRAGMA table_info's fields) and every other property
    of every column unchanged. Anything else — a text the edit misread, such as a comment that repeats a column
    definition — raises NotEditableInPlace before a byte is written. Runs inside the caller's transaction, so
    it commits or rolls back with the migration; the real table is checked again after the edit.
    """
    raw = connection.connection.driver_connection
    edited, expected = edited_definition(raw, table, edit, wanted)
    (version,) = raw.execute("PRAGMA schema_version").fetchone()
    raw.execute("PRAGMA writable_schema = ON")
    try:
        raw.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", (edited, table))
        raw.execute(f"PRAGMA schema_version = {version + 1}")
    except sqlite3.Error as error:  # e.g. SQLITE_DBCONFIG_DEFENSIVE forbids writing the schema
        raise NotEditableInPlace(f"the schema cannot be edited here: {error}") from None
    finally:
        raw.execute("PRAGMA writable_schema = OFF")
    if [tuple(c) for c in _table_info(raw, table)] != expected:
        raise RuntimeError(f"{table}'s definition did not take the edit; rolling back")


def edited_definition(
    raw: sqlite3.Connection, table: str, edit: Callable[[str], str], wanted: dict[str, dict[str, object]]
) -> tuple[str, list[tuple]]:
    """The edited CREATE TABLE text, proven in a scratch in-memory database to come out as ``wanted``, and the
    PRAGMA table_info it must give; NotEditableInPlace otherwise. Writes nothing."""
    (sql,) = raw.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    edited = edit(sql)
    scratch = sqlite3.connect(":memory:")
    try:
        scratch.execute(edited)
        after = _table_info(scratch, table)
    except (sqlite3.Error, NotEditableInPlace) as error:
        raise NotEditableInPlace(f"the edited definition does not parse: {error}") from None
    finally:
        scratch.close()
    expected = [_as_wanted(c, wanted.get(c[1], {})) for c in _table_info(raw, table)]
    if [tuple(c) for c in after] != expected:
        raise NotEditableInPlace("the edited definition does not come out as intended")
    return edited, expected


FIELDS = ("cid", "name", "type", "notnull", "dflt_value", "pk")


def _as_wanted(column: tuple, wanted: dict[str, object]) -> tuple:
    return tuple(wanted.get(field, value) for field, value in zip(FIELDS, column, strict=True))


# What Alembic's batch rebuild of a reflected SQLite table does not carry over.
REBUILD_LOSES = {
    "a CHECK constraint": r"\bCHECK\s*\(",
    "AUTOINCREMENT": r"\bAUTOINCREMENT\b",
    "a COLLATE clause": r"\bCOLLATE\b",
    "a generated column": r"\bGENERATED\b|\bAS\s*\(",
    "an ON CONFLICT clause": r"\bON\s+CONFLICT\b",
    "a foreign key action (ON DELETE / ON UPDATE / DEFERRABLE)": r"\bON\s+(DELETE|UPDATE)\b|\bDEFERRABLE\b",
}


def sqlite_rebuild_losses(connection: Connection, table: str) -> list[str]:
    """What a rebuild would drop from ``table``'s definition (comments and string literals aside)."""
    (sql,) = connection.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).one()
    code = re.sub(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'", " ", sql, flags=re.DOTALL)
    return [what for what, pattern in REBUILD_LOSES.items() if re.search(pattern, code, re.IGNORECASE)]


@contextmanager
def sqlite_objects_kept(connection: Connection, table: str, log: logging.Logger, dropped_columns: tuple[str, ...] = ()):
    """Around a SQLite table rebuild: drop the table's own indexes and every view and trigger, and recreate them
    verbatim afterwards (the rebuild cannot rename the new table into place while a view names it, and drops
    the table's triggers). Indexes are rebuilt once, after the copy; one on a column the change drops goes."""
    kept = connection.exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND "
        "(type IN ('view', 'trigger') OR (type = 'index' AND tbl_name = ?)) ORDER BY rowid",
        (table,),
    ).all()
    for kind, name, _ in reversed(kept):
        connection.exec_driver_sql(f'DROP {kind.upper()} "{name}"')
    yield
    for kind, name, sql in kept:
        gone = [c for c in dropped_columns if re.search(rf"\b{re.escape(c)}\b", sql)]
        if kind == "index" and gone:
            log.warning("      index %s was on %s, which the downgrade drops: not recreated", name, ", ".join(gone))
            continue
        connection.exec_driver_sql(sql)


# --- BUILD-144's changes, in place or by a rebuild ----------------------------------------------------------

log = logging.getLogger("alembic.build144")


def upgrade_edit(plan: Plan) -> tuple[Callable[[str], str], dict[str, dict[str, object]]]:
    """The upgrade's edit of the definition (splits nullable, total_tokens' DEFAULT 0) and what it must give."""

    def edit(sql: str) -> str:
        for split in plan.relax:
            sql = drop_not_null(sql, split)
        return add_default_zero(sql, "total_tokens") if plan.add_default else sql

    wanted = {split: {"notnull": 0} for split in plan.relax}
    wanted |= {"total_tokens": {"dflt_value": "0"}} if plan.add_default else {}
    return edit, wanted


def upgrade_in_place(bind: Connection, plan: Plan, rebuild: Callable[[], None]) -> None:
    """Splits nullable and total_tokens' DEFAULT 0 by editing the definition (no rebuild, indexes untouched),
    then ``ALTER TABLE … ADD COLUMN``; ``rebuild`` (the portable batch path) when the edit does not apply."""
    edit, wanted = upgrade_edit(plan)
    try:
        if plan.add_default or plan.relax:
            sqlite_edit_definition(bind, TABLE, edit, wanted)
    except NotEditableInPlace as reason:
        sqlite_rebuild(bind, str(reason), rebuild)
        return
    if plan.add_total:
        op.add_column(TABLE, total_tokens_column())


def downgrade_in_place(bind: Connection, rebuild: Callable[[], None]) -> None:
    """NOT NULL back on the splits by editing the definition (no row holds a NULL split any more: proven before)
    and ``ALTER TABLE … DROP COLUMN total_tokens``; ``rebuild`` when either does not apply."""
    try:
        sqlite_edit_definition(
            bind,
            TABLE,
            lambda sql: add_not_null(add_not_null(sql, SPLITS[0]), SPLITS[1]),
            {split: {"notnull": 1} for split in SPLITS},
        )
        bind.exec_driver_sql(f"ALTER TABLE {TABLE} DROP COLUMN total_tokens")
        return
    except (NotEditableInPlace, exc.OperationalError) as reason:
        sqlite_rebuild(bind, str(reason).splitlines()[0], rebuild, dropped_columns=("total_tokens",))


def sqlite_rebuild(bind: Connection, reason: str, change: Callable[[], None], dropped_columns=()) -> None:
    """Alembic's batch rebuild, with the operator's indexes, views and triggers kept; refused in one sentence
    when the table's definition holds what a rebuild cannot carry over."""
    losses = sqlite_rebuild_losses(bind, TABLE)
    if losses:
        raise refusal("sqlite_rebuild_would_lose", table=TABLE, reason=reason, losses=" and ".join(losses))
    log.info("      %s is rebuilt (%s)", TABLE, reason)
    with sqlite_objects_kept(bind, TABLE, log, dropped_columns=dropped_columns):
        change()


# --- the seven steps ---------------------------------------------------------------------------------------

NAME = "sqlite"
ONLINE = False  # one writer at a time: -x online=true is refused before any revision runs
ONLINE_DOWNGRADE = False
TRANSACTIONAL_DDL = True  # a failed schema change rolls back with the transaction
TRANSACTIONAL_DDL_MADE_REAL = True  # Alembic is told DDL is transactional: the connection set-up makes it so
TRIGGERS_FIRE_IN_NAME_ORDER = False  # BEFORE triggers after the fill trigger's name would see no total
# `autopack plan`'s estimate: the whole default-mode run per million rows on the reference machine (benchmarks/)
SECONDS_PER_MILLION_ROWS = {"upgrade": 1.3, "downgrade": 1.4}
LOGICAL_REPLICATION = False


def inspect(bind: Connection) -> dict[str, bool]:
    return {"system_versioned": False}


def change_schema(bind: Connection, plan: Plan, hooks: list[tuple[str, bool]], new_schema: Callable) -> None:
    """In place by SQLite's documented procedure; a rebuild (the portable path) when it does not apply."""
    upgrade_in_place(bind, plan, rebuild=lambda: new_schema(plan))


def backfill(bind: Connection, plan: Plan, hooks: list[tuple[str, bool]]) -> int:
    return batched_backfill(bind.execute, plan.first_id, plan.last_id, plan.rows, plan.options)


def online_upgrade(plan: Plan) -> int:
    raise refusal("online_mode_not_here", dialect=NAME)


def downgrade(bind: Connection, plan: Plan, old_schema: Callable) -> None:
    """Set aside, proven, then NOT NULL back on the splits and total_tokens dropped, in the one transaction."""
    if plan.online:  # refused before any revision runs, and here too
        raise refusal("online_mode_not_here", dialect=NAME)
    holdover.set_aside(bind)
    downgrade_in_place(bind, rebuild=lambda: old_schema(plan))


def path(bind: Connection, plan: Plan, direction: str, hooks: list[tuple[str, bool]]) -> str:
    """The way the run would take, for ``autopack plan`` (read only)."""
    if direction == "downgrade":
        return (
            "one transaction: rows the old schema cannot hold set aside, NOT NULL put back on the splits by editing "
            "the table's definition in place and total_tokens dropped with ALTER TABLE DROP COLUMN (the table "
            "rebuilt, keeping your indexes, views and triggers, where SQLite refuses either)"
        )
    change = "nothing to change in the schema"
    if plan.add_default or plan.relax:
        try:
            edited_definition(bind.connection.driver_connection, TABLE, *upgrade_edit(plan))
            change = "the table's definition edited in place (no copy, indexes untouched)"
        except NotEditableInPlace as reason:
            losses = sqlite_rebuild_losses(bind, TABLE)
            if losses:
                return f"refused: a rebuild ({reason}) would lose {' and '.join(losses)}"
            change = f"the table rebuilt ({reason}), your indexes, views and triggers recreated"
    added = ", then ALTER TABLE ADD COLUMN total_tokens" if plan.add_total else ""
    return f"one transaction: {change}{added}, then the backfill as batched UPDATEs"


def offline_script(plan: Plan, direction: str, change_schema: Callable) -> None:
    """In place, never a rebuild (a script applied with ``sqlite3 DB < FILE`` carries on after an error), and the
    stamp guarded: see ``offline_scripts``."""
    scripts = offline_scripts
    scripts.say_the_plan(plan, direction)
    if direction == "upgrade":
        scripts.sqlite_offline_schema_change()
        op.execute(events.update().where(NEEDS_TOTAL).values(total_tokens=split_sum))
        scripts.restore_set_aside(holdover_create_statements())
        op.execute(f"CREATE INDEX IF NOT EXISTS {doctor_index.INDEX} ON {TABLE} ({doctor_index.COLUMN})")
        why = f"{doctor_index.INDEX} is not the plain index on {TABLE} ({doctor_index.COLUMN})"
        scripts.sqlite_guard("0002", doctor_index.SQLITE_PLAIN, why, "index")
        # after every statement that can fire an operator's trigger
        scripts.sqlite_stamp_guard("0002", scripts.STATE_0002)
        return
    scripts.restamp_retired_offline()
    for statement in holdover_create_statements():
        op.execute(statement)
    op.execute(holdover.hold_over_statement())
    op.execute(f"ALTER TABLE {TABLE} DROP COLUMN total_tokens")  # before the UPDATE that can fire a trigger
    op.execute(holdover.placeholders_statement())
    scripts.sqlite_offline_edit(
        *scripts.delimited((f"{s} INTEGER,", f"{s} INTEGER NOT NULL,") for s in SPLITS),
        unless=f" AND NOT EXISTS (SELECT 1 FROM {TABLE} WHERE typeof(prompt_tokens) = 'null'"
        " OR typeof(completion_tokens) = 'null')",
    )
    scripts.sqlite_stamp_guard("0001", scripts.STATE_0001)


def script_preamble() -> None:
    """A rebuild's DROP TABLE must not cascade (a no-op inside BEGIN)."""
    from alembic import context

    context.execute("PRAGMA foreign_keys = OFF")


def script_timeouts(options: object) -> None:
    """A SQLite script waits as the ``sqlite3`` shell does."""


def failure_leaves(plan: Plan, direction: str) -> str:
    return NOTHING_CHANGED  # one transaction


def stop_leaves(online: bool) -> str:
    return LEAVES["online stop" if online else "upgrade rolled back"]  # online: before its refusal


# --- what the checks ask of the table ----------------------------------------------------------------------

ID_GENERATOR_FIX = (
    "copy the rows into a table declared with id INTEGER PRIMARY KEY (a rowid table), the only id SQLite fills in"
)
WORD = re.compile(r"\btotal_tokens\b", re.IGNORECASE)


def update_hooks(bind: Connection) -> list[tuple[str, bool]]:
    """(description, fires once per row) of every trigger that runs on an UPDATE of the table."""
    return [
        (f"trigger {name}", True)
        for name, sql in bind.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (TABLE,)
        )
        if re.search(r"\bUPDATE\b(\s+OF\b[^O]*)?\s+ON\b", sql, re.IGNORECASE)
    ]


def check_constraints(bind: Connection) -> list[tuple[str, str]]:
    return [(c["name"] or "(unnamed)", c["sqltext"]) for c in sa.inspect(bind).get_check_constraints(TABLE)]


def count_violations(bind: Connection, sql: str) -> int:
    return bind.exec_driver_sql(sql).scalar()


def objects_reading_total_tokens(bind: Connection) -> list[str]:
    found = [
        f"{kind} {name}"
        for kind, name, sql in bind.exec_driver_sql(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('view', 'trigger') AND sql IS NOT NULL"
        )
        if WORD.search(sql)
    ]
    for name, sql in bind.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (TABLE,)
    ):
        expression = any(c[1] == -2 for c in bind.exec_driver_sql(f'PRAGMA index_xinfo("{name}")'))
        if WORD.search(sql) and (expression or re.search(r"\bWHERE\b", sql, re.IGNORECASE)):
            found.append(f"index {name} (an expression or partial index)")
    (table_sql,) = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).one()
    if len(WORD.findall(table_sql)) > 1:  # besides its own definition: a CHECK or a generated column
        found.append(f"a CHECK constraint or generated column in {TABLE}'s definition")
    return found


def publications_refusing_updates(bind: Connection) -> list[tuple[str, str]]:
    return []


def publications_of(bind: Connection) -> list[str]:
    return []


def columns_rewritten_on_update(bind: Connection) -> list[str]:
    return []


def case_sensitive_names(bind: Connection) -> bool:
    return False  # LLM_Usage_Events and llm_usage_events are one table: renamed by the commands that change it


SEARCH_PATH = False  # the table is looked for in the first schema of a search_path
CASE_SENSITIVE_AS = "SQLite"  # how a refusal names the engine that tells two spellings apart


def rename_statement(name: str) -> str:
    """What renames the table ``name`` (quoted as it is spelled) to its own spelling."""
    return f"ALTER TABLE {name} RENAME TO {TABLE}"


def names_in_other_case(bind: Connection) -> list[str]:
    sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND lower(name) = ? AND name <> ? ORDER BY name"
    return list(bind.exec_driver_sql(sql, (TABLE, TABLE)).scalars().all())


def rename_to_own_case(bind: Connection) -> str | None:
    """SQLite treats ``LLM_Usage_Events`` and ``llm_usage_events`` as one table, but SQLAlchemy's reflection and this
    tree's catalog reads look the name up as spelled: rename it to ``llm_usage_events`` (through a scratch name:
    SQLite refuses a rename that only changes letter case; views, triggers and foreign keys follow the rename).
    Inside the caller's transaction; the old name, or None when there was nothing to rename."""
    found = names_in_other_case(bind)
    if not found:
        return None
    scratch = f"{TABLE}_build144_renaming"
    bind.exec_driver_sql(f'ALTER TABLE "{found[0]}" RENAME TO "{scratch}"')
    bind.exec_driver_sql(f'ALTER TABLE "{scratch}" RENAME TO "{TABLE}"')
    return found[0]


def id_not_generated(bind: Connection) -> str | None:
    """The id must be the rowid's alias: a rowid table whose only key is ``id INTEGER PRIMARY KEY``."""
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


def integer_limit(total_type: sa.types.TypeEngine | None) -> int:
    return 2**63 - 1  # every SQLite integer is 64-bit


def doctor_index_state(bind: Connection) -> tuple[str | None, str | None]:
    named = bind.execute(sa.text(doctor_index.SQLITE_NAMED), {"index": doctor_index.INDEX}).one_or_none()
    if named is None:
        return None, None
    name, table, definition = named
    if not bind.exec_driver_sql(f"SELECT {doctor_index.SQLITE_PLAIN}").scalar():
        return None, f"{name} on {table}: {definition}"
    return "valid", None


def build_doctor_index(bind: Connection, state: str | None, options: object) -> str:
    bind.exec_driver_sql(f"CREATE INDEX {doctor_index.INDEX} ON {TABLE} ({doctor_index.COLUMN})")
    return ""


def fill_trigger_statements() -> list[str]:
    return []


def fill_trigger_drop_statements() -> list[str]:
    return []


def fill_trigger_installed(bind: Connection) -> bool:
    return False


def holdover_create_statements() -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {holdover.HOLDOVER} AS {holdover.SELECT_HELD} WHERE 0",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {holdover.HOLDOVER}_event_id ON {holdover.HOLDOVER} (event_id)",
    ]


def make_holdover_replicable(bind: Connection) -> None:
    """Nothing replicates a SQLite table."""
