"""Operations the revisions use on large tables: progress logging, primary-key batches, SQLite's documented
in-place schema edits, and keeping the operator's views, triggers and indexes around a SQLite table rebuild.

Nothing here decides data: the revisions pass their rules (the backfill expression) in.
"""

import logging
import re
import sqlite3
import time
from collections.abc import Callable
from contextlib import contextmanager

from sqlalchemy import Connection

PROGRESS_EVERY_S = 2.0


class Progress:
    """Logs ``rows done / total (percent), elapsed, rate`` at most every ``every_s`` seconds.

    Work advances over primary-key ranges, so rows done are estimated from how much of the id span is done.
    """

    def __init__(self, log: logging.Logger, what: str, total: int, every_s: float = PROGRESS_EVERY_S) -> None:
        self.log, self.what, self.total, self.every_s = log, what, total, every_s
        self.start = self.last = time.monotonic()

    def at(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        done = round(self.total * min(fraction, 1.0))
        elapsed = now - self.start
        rate = done / elapsed if elapsed else 0.0
        eta = f"about {(self.total - done) / rate:.0f}s left" if rate else "time left unknown"
        self.log.info(
            "      %s: %s / %s rows (%.1f%%), %.1fs elapsed, %s rows/s, %s",
            self.what, f"{done:,}", f"{self.total:,}", 100 * min(fraction, 1.0), elapsed, f"{rate:,.0f}", eta,
        )  # fmt: skip


# --- SQLite: in-place edits of a table's definition ---------------------------------------------------


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
