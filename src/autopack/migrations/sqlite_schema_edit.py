"""SQLite: the table's definition changed in place, by SQLite's documented procedure; or rebuilt, keeping what it can.

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

from alembic import op
from sqlalchemy import Connection, exc

from autopack.migrations.messages import refusal
from autopack.migrations.plan import Plan
from autopack.migrations.usage_table import SPLITS, TABLE, total_tokens_column


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
    (sql,) = raw.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    edited = edit(sql)
    scratch = sqlite3.connect(":memory:")
    try:
        scratch.execute(edited)
        after = _table_info(scratch, table)
    except sqlite3.Error as error:
        raise NotEditableInPlace(f"the edited definition does not parse: {error}") from None
    finally:
        scratch.close()
    expected = [_as_wanted(c, wanted.get(c[1], {})) for c in _table_info(raw, table)]
    if [tuple(c) for c in after] != expected:
        raise NotEditableInPlace("the edited definition does not come out as intended")
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


def upgrade_in_place(bind: Connection, plan: Plan, rebuild: Callable[[], None]) -> None:
    """Splits nullable and total_tokens' DEFAULT 0 by editing the definition (no rebuild, indexes untouched),
    then ``ALTER TABLE … ADD COLUMN``; ``rebuild`` (the portable batch path) when the edit does not apply."""

    def edit(sql: str) -> str:
        for split in plan.relax:
            sql = drop_not_null(sql, split)
        return add_default_zero(sql, "total_tokens") if plan.add_default else sql

    wanted = {split: {"notnull": 0} for split in plan.relax}
    wanted |= {"total_tokens": {"dflt_value": "0"}} if plan.add_default else {}
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
