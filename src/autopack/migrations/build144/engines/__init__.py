"""BUILD-144 on each engine: one module per engine, each implementing ``Strategy`` (below).

"What does MariaDB do?" has one answer: ``mariadb.py``. Revision 0002 picks the strategy once (``of``) and calls
the seven steps; the preflight checks, the offline scripts and ``verify`` ask the same strategy what is on the
table (the inspection functions). Everything engine-neutral — the plan, the backfill rule, the set-aside table,
the batched backfill, the preflight checks' verdicts and words — stays in ``build144`` and is shared.
A new engine is a new module implementing every name of ``Strategy``; ``tests/test_layers.py`` holds each module to
it and keeps ``dialect ==`` out of every other module of the tree.
"""

from importlib import import_module
from types import ModuleType
from typing import Any, Protocol

import sqlalchemy as sa

ENGINES = ("sqlite", "postgresql", "mariadb")


class Strategy(Protocol):
    """What each engine module defines. The seven steps the revision calls, then what the checks ask."""

    NAME: str  # sqlite, postgresql or mariadb
    ONLINE: bool  # has -x online=true
    ONLINE_DOWNGRADE: bool  # has -x online=true for the downgrade
    TRANSACTIONAL_DDL: bool  # a failed schema change rolls back with the migration's transaction
    TRANSACTIONAL_DDL_MADE_REAL: bool  # Alembic is told DDL is transactional (the connection set-up makes it so)
    TRIGGERS_FIRE_IN_NAME_ORDER: bool  # BEFORE triggers named after the fill trigger would see no total
    LOGICAL_REPLICATION: bool  # publications and subscriptions to check
    SEARCH_PATH: bool  # the table is looked for in the first schema of a search_path
    CASE_SENSITIVE_AS: str  # how a refusal names the engine that tells two spellings apart
    ID_GENERATOR_FIX: str  # what gives the id a generator (verify's fix)
    SECONDS_PER_MILLION_ROWS: dict[str, float]  # a default-mode run on the reference machine, for `autopack plan`

    # --- the seven steps ---------------------------------------------------------------------------------
    def inspect(self, bind: sa.Connection) -> dict[str, Any]:
        """What the plan needs beyond the reflected columns (``system_versioned``)."""

    def change_schema(self, bind: sa.Connection, plan: Any, hooks: list, new_schema: Any) -> None:
        """The default mode's schema change, in the migration's transaction (``new_schema``: the portable path)."""

    def backfill(self, bind: sa.Connection, plan: Any, hooks: list) -> int:
        """The default mode's backfill after ``change_schema``; the rows whose total it wrote."""

    def online_upgrade(self, plan: Any) -> int:
        """``-x online=true``: the schema change, the fill trigger and the batches, each committed at once."""

    def downgrade(self, bind: sa.Connection, plan: Any, old_schema: Any) -> None:
        """Set aside what the old schema cannot hold, then the schema back, losing nothing."""

    def offline_script(self, plan: Any, direction: str, change_schema: Any) -> None:
        """The ``--sql`` script for a DBA, checked inside the database before its stamp."""

    def failure_leaves(self, plan: Any, direction: str) -> str:
        """What a failure once the change started leaves, in the catalogue's words."""

    def path(self, bind: sa.Connection, plan: Any, direction: str, hooks: list) -> str:
        """The way a run would take on this table, in words, for ``autopack plan`` (reads only)."""

    def stop_leaves(self, online: bool) -> str:
        """What Ctrl-C or SIGTERM before the revision says better leaves."""

    def script_preamble(self) -> None:
        """What a ``--sql`` script runs before its transaction."""

    def script_timeouts(self, options: Any) -> None:
        """What a ``--sql`` script sets first in its transaction."""

    # --- what the checks ask of the table ----------------------------------------------------------------
    def update_hooks(self, bind: sa.Connection) -> list[tuple[str, bool]]: ...
    def check_constraints(self, bind: sa.Connection) -> list[tuple[str, str]]: ...
    def count_violations(self, bind: sa.Connection, sql: str) -> int: ...
    def objects_reading_total_tokens(self, bind: sa.Connection) -> list[str]: ...
    def publications_refusing_updates(self, bind: sa.Connection) -> list[tuple[str, str]]: ...
    def columns_rewritten_on_update(self, bind: sa.Connection) -> list[str]: ...
    def case_sensitive_names(self, bind: sa.Connection) -> bool: ...
    def names_in_other_case(self, bind: sa.Connection) -> list[str]: ...
    def rename_to_own_case(self, bind: sa.Connection) -> str | None: ...
    def rename_statement(self, name: str) -> str: ...
    def publications_of(self, bind: sa.Connection) -> list[str]: ...
    def id_not_generated(self, bind: sa.Connection) -> str | None: ...
    def integer_limit(self, total_type: sa.types.TypeEngine | None) -> int: ...
    def doctor_index_state(self, bind: sa.Connection) -> tuple[str | None, str | None]: ...
    def build_doctor_index(self, bind: sa.Connection, state: str | None, options: Any) -> str: ...
    def fill_trigger_statements(self) -> list[str]: ...
    def fill_trigger_drop_statements(self) -> list[str]: ...
    def fill_trigger_installed(self, bind: sa.Connection) -> bool: ...
    def holdover_create_statements(self) -> list[str]: ...
    def make_holdover_replicable(self, bind: sa.Connection) -> None: ...


def named(dialect: str) -> ModuleType:
    """The strategy module of a SQLAlchemy dialect name (``mysql`` and ``mariadb`` are one strategy)."""
    return import_module(f"{__name__}.{'mariadb' if dialect == 'mysql' else dialect}")


def of(bind: sa.Connection) -> ModuleType:
    """The strategy module of the engine ``bind`` is connected to."""
    return named(bind.dialect.name)
