"""What the runtime must know of each engine, decided once from the connection's dialect (part of the connection
set-up): how a lock wait is bounded and where its holder shows, which migration lock serialises migrators, whether
replicas can be watched from here. Nothing here knows a table or a revision.
"""

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from autopack.migrations.runtime.options import whole_seconds


@dataclass(frozen=True)
class EngineTraits:
    name: str  # sqlite, postgresql or mariadb (MySQL's dialect included)
    label: str  # as an operator names it
    migration_lock: str  # "file" beside the database, "advisory" (PostgreSQL) or "named" (MariaDB's GET_LOCK)
    where_sessions_show: str  # where the operator sees the session that holds a lock
    sees_replica_lag: bool  # a primary that reports its replicas' replay lag
    batches_commit_themselves: bool  # servers run batch-committing commands in autocommit; SQLite commits each
    ddl_rolls_back: bool = True  # MariaDB commits each DDL statement at once
    namespace: str = ""  # where a new table goes: "schema" (PostgreSQL's current_schema()) or "database"

    @property
    def is_a_server(self) -> bool:
        """A server the client reaches over a connection (not a file this process opens)."""
        return self.migration_lock != "file"

    def short_lock_wait(self, duration: str) -> list[str]:
        """Statements that bound the next statements' lock waits to ``duration`` (``session_lock_wait`` ends it).
        PostgreSQL: one transaction with ``SET LOCAL lock_timeout``; MariaDB (each DDL statement commits):
        ``lock_wait_timeout`` for the session, in whole seconds (it takes no fractions), set back after."""
        if self.name == "postgresql":
            return ["BEGIN", f"SET LOCAL lock_timeout = '{duration}'"]
        return [f"SET SESSION lock_wait_timeout = {whole_seconds(duration)}"]

    def session_lock_wait(self, duration: str) -> str:
        """The session's lock wait set to ``duration`` (MariaDB's metadata lock wait)."""
        return f"SET SESSION lock_wait_timeout = {whole_seconds(duration)}" if self.name == "mariadb" else ""

    def row_lock_wait(self, duration: str) -> str:
        """How long a statement waits for a row another transaction holds."""
        if self.name == "postgresql":
            return f"SET lock_timeout = '{duration}'"
        return f"SET SESSION innodb_lock_wait_timeout = {whole_seconds(duration)}"

    def waited(self, duration: str) -> str:
        """``duration`` as the engine waits it: MariaDB's lock timeouts take whole seconds (at least 1)."""
        return duration if self.name == "postgresql" else f"{whole_seconds(duration)}s"


TRAITS = {
    "sqlite": EngineTraits("sqlite", "SQLite", "file", "", False, False),
    "postgresql": EngineTraits(
        "postgresql", "PostgreSQL", "advisory", "see pg_stat_activity", True, True, namespace="schema"
    ),
    "mariadb": EngineTraits(
        "mariadb", "MariaDB/MySQL", "named", "see SHOW PROCESSLIST", False, True, False, namespace="database"
    ),
}


def traits_of(dialect: Dialect | str) -> EngineTraits:
    """The traits of a dialect (or its name); ``mysql`` and ``mariadb`` are one engine here."""
    name = dialect if isinstance(dialect, str) else dialect.name
    return TRAITS["mariadb" if name == "mysql" else name]


def where_new_tables_go(connection: sa.Connection) -> str | None:
    """'schema public' or 'database autopack': where a CREATE TABLE without a qualifier lands (None on SQLite), so
    that a search_path or database the operator did not expect shows in the log."""
    namespace = traits_of(connection.dialect).namespace
    if not namespace:
        return None
    function = "current_schema()" if namespace == "schema" else "DATABASE()"
    return f"{namespace} {connection.exec_driver_sql(f'SELECT {function}').scalar()}"
