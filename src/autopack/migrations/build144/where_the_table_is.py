"""Where the usage table is, as the session sees it, checked as every command connects: the name in reach of the
search_path (PostgreSQL), one spelling of it (where names are case-sensitive), and on SQLite the table renamed to
its own spelling as a command that changes the database begins. Passed to the runtime's connection set-up."""

import logging

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from autopack.migrations.build144 import engines
from autopack.migrations.build144.messages import refusal
from autopack.migrations.build144.table_inspection import rows_in
from autopack.migrations.build144.usage_table import TABLE
from autopack.migrations.runtime.errors import shown

log = logging.getLogger("alembic.build144")


def rename_to_own_case(connection: Connection) -> None:
    """SQLite's table in other letter case renamed to ``llm_usage_events``, first in a change's transaction."""
    renamed = engines.of(connection).rename_to_own_case(connection)
    if renamed:
        log.info("Renamed %s to %s (SQLite treats the two names as one table)", renamed, TABLE)


REACH = """SELECT current_schema(), current_setting('search_path'),
  (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%(table)s)),
  (SELECT string_agg(n.nspname, ', ' ORDER BY n.nspname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relname = %(table)s AND c.relkind IN ('r', 'p'))"""


def require_the_table_in_reach(connection: Connection, url: URL) -> None:
    """The table where SQLAlchemy and Alembic will look for it (the first schema of the search_path), or one
    sentence: they look, and would create a second, empty table, in that first schema only."""
    if not engines.of(connection).SEARCH_PATH:
        return
    first, search_path, found, anywhere = connection.exec_driver_sql(REACH, {"table": TABLE}).one()
    connection.rollback()
    where = "ALTER ROLE ... SET search_path = ..., which a pooler passes on, unlike the URL's options"
    if first is None:
        raise refusal("no_schema_in_search_path", search_path=search_path, where=shown(url), table=TABLE, fix=where)
    if found is not None and found != first:
        raise refusal(
            "table_not_in_first_schema", table=TABLE, found=found, search_path=search_path, first=first, fix=where
        )
    if found is None and anywhere:
        raise refusal(
            "table_outside_search_path", table=TABLE, found=anywhere, search_path=search_path, first=first, fix=where
        )


def require_one_spelling(connection: Connection, url: URL) -> None:
    """Where the engine treats names case-sensitively, a table named ``llm_usage_events`` in other letter case
    (``LLM_Usage_Events``, from a Windows or macOS server's dump, or a quoted name) is refused in one sentence: the
    migration would create a new, empty ``llm_usage_events`` beside it and the application write there. SQLite,
    which treats the two as one table, has it renamed by the commands that change the database."""
    strategy = engines.of(connection)
    if not strategy.case_sensitive_names(connection):
        connection.rollback()
        return
    others = strategy.names_in_other_case(connection)
    if not others:
        connection.rollback()
        return
    engine = strategy.CASE_SENSITIVE_AS
    rename = strategy.rename_statement(connection.dialect.identifier_preparer.quote_identifier(others[0]))
    named = ", ".join(f"{o} ({rows_in(connection, o)} rows)" for o in others)
    ours = connection.dialect.has_table(connection, TABLE)
    view = ours and TABLE in sa.inspect(connection).get_view_names()
    ours_rows = rows_in(connection, TABLE) if ours and not view else 0
    connection.rollback()
    if view:  # its rows are the table's: naming both as tables of rows would invite dropping the real one
        raise refusal(
            "view_in_the_tables_name", where=shown(url), table=TABLE, named=named, engine=engine, rename=rename
        )
    if ours:
        raise refusal(
            "both_spellings",
            where=shown(url),
            table=TABLE,
            ours_rows=ours_rows,
            named=named,
            engine=engine,
            rename=rename,
        )
    raise refusal("table_in_other_case", where=shown(url), named=named, table=TABLE, engine=engine, rename=rename)


CHECKS = (require_the_table_in_reach, require_one_spelling)  # for the runtime's ``connected``
