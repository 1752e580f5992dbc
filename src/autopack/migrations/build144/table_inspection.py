"""What is on and around ``llm_usage_events`` as it really is: constraints, readers, hooks, publications.

The table an operator has is not always the one this tree would have made: a CHECK constraint may still
forbid NULL splits, a view or trigger may read the column a downgrade drops, a trigger may run on every
UPDATE. Each engine's strategy reads its own catalogs (``engines``); these functions ask the engine of the
connection, and ``preflight_checks`` decides what to refuse, and in which words.
"""

import re

import sqlalchemy as sa

from autopack.migrations.build144 import engines, usage_aggregate
from autopack.migrations.build144.usage_table import NOT_NULL_CHECKS, TABLE


def integer_limit(dialect: str, total_type: sa.types.TypeEngine | None) -> int:
    """The largest total ``total_tokens`` can hold: SQLite and BIGINT columns 64-bit, INTEGER 32-bit."""
    return engines.named(dialect).integer_limit(total_type)


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
    return engines.of(bind).check_constraints(bind)


def checks_forbidding_total_only(bind: sa.Connection) -> list[str]:
    """CHECK constraints that a total-only row (NULL splits, a positive total) would violate, as 'name (expr)'.

    Each constraint's own expression is evaluated on such a row, inside a SAVEPOINT-free read: a CHECK fails
    only when its expression is FALSE, so ``prompt_tokens >= 0`` passes a NULL and ``prompt_tokens IS NOT
    NULL`` does not."""
    engine = engines.of(bind)
    columns = [c["name"] for c in sa.inspect(bind).get_columns(TABLE)]
    probe = _probe_row(bind, columns, "total_tokens" in columns)
    forbidding = []
    for name, expression in engine.check_constraints(bind):
        if name in NOT_NULL_CHECKS.values():  # an interrupted online downgrade's: the upgrade drops them
            continue
        if not re.search(r"\b(prompt_tokens|completion_tokens)\b", expression, re.IGNORECASE):
            continue
        if engine.count_violations(bind, f"SELECT COUNT(*) FROM ({probe}) probe WHERE NOT ({expression})"):
            forbidding.append(f"{name} ({expression})")
    return forbidding


def objects_reading_total_tokens(bind: sa.Connection) -> list[str]:
    """Views, triggers (WHEN, body, trigger function), rules, generated columns and CHECKs that refer to
    ``total_tokens``: after the downgrade drops it, each would break the old code's writes or reads. The
    dashboard's hourly aggregate is not one of them: the downgrade drops it first (``usage_aggregate``)."""
    ours = usage_aggregate.TRIGGERS
    return [found for found in engines.of(bind).objects_reading_total_tokens(bind) if not ours.search(found)]


def update_hooks(bind: sa.Connection) -> list[tuple[str, bool]]:
    """(description, fires once per row) of every user trigger and rule that runs on an UPDATE of the table."""
    return engines.of(bind).update_hooks(bind)


def publications_refusing_updates(bind: sa.Connection) -> list[tuple[str, str]]:
    """(publication, why) for each publication whose UPDATEs the table's replica identity cannot carry."""
    return engines.of(bind).publications_refusing_updates(bind)


def system_versioned(bind: sa.Connection) -> bool:
    return engines.of(bind).inspect(bind)["system_versioned"]


def columns_rewritten_on_update(bind: sa.Connection) -> list[str]:
    """Columns every UPDATE the migration makes would rewrite (MariaDB's ``ON UPDATE CURRENT_TIMESTAMP``)."""
    return engines.of(bind).columns_rewritten_on_update(bind)


# --- the table's name and its id, as the application needs them ------------------------------------------------


def case_sensitive_names(bind: sa.Connection) -> bool:
    """Whether the engine treats ``LLM_Usage_Events`` and ``llm_usage_events`` as two tables."""
    return engines.of(bind).case_sensitive_names(bind)


def names_in_other_case(bind: sa.Connection) -> list[str]:
    """Tables whose name is ``llm_usage_events`` in other letter case (``LLM_Usage_Events``: a dump from a Windows or
    macOS server, a quoted name), where SQLAlchemy and Alembic look for the table."""
    return engines.of(bind).names_in_other_case(bind)


def rows_in(bind: sa.Connection, name: str) -> int:
    quote = bind.dialect.identifier_preparer.quote_identifier  # always quoted: the name as it is spelled
    return bind.exec_driver_sql(f"SELECT COUNT(*) FROM {quote(name)}").scalar()


def rename_to_own_case(bind: sa.Connection) -> str | None:
    """SQLite: the table renamed to its own spelling inside the caller's transaction (the old name, or None)."""
    return engines.of(bind).rename_to_own_case(bind)


def id_generator_fix(dialect: str) -> str:
    """What gives the id a generator: the recorder's INSERTs leave id out (SQLAlchemy's integer key)."""
    return engines.named(dialect).ID_GENERATOR_FIX


def id_not_generated(bind: sa.Connection) -> str | None:
    """Why the database does not fill in ``id`` for an INSERT that leaves it out, as the recorder's do (SQLAlchemy
    expects the database to generate an integer primary key), or None when it does."""
    return engines.of(bind).id_not_generated(bind)
