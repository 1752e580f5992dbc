"""MariaDB/MySQL: the whole schema change as one ``ALTER TABLE``, and in the default mode the totals computed by
the table copy it makes anyway.

Why. InnoDB rebuilds the table to make a NOT NULL column nullable (only ``ADD COLUMN`` is instant), and Alembic
emits one ``ALTER`` per column: two full copies. One ``ALTER TABLE … ADD COLUMN …, MODIFY …, MODIFY …`` copies
it once (https://mariadb.com/kb/en/alter-table/: several alter specifications in one statement). When the column
is new, its ``DEFAULT (<the splits' sum>)`` (MariaDB >= 10.2 takes expressions over earlier columns as a
default) fills every row's total during that copy, and ``SET DEFAULT 0`` right after changes only the
metadata: no UPDATE pass at all. A system-versioned table (an UPDATE keeps each old version as history), the
operator's UPDATE triggers (they would not fire) or an existing total_tokens column (its totals must be kept)
take the batched UPDATE after the one ALTER instead.

Online (``-x online=true``): the same ALTER with ``ALGORITHM=INPLACE, LOCK=NONE``, so writers go on during the
rebuild; a server that cannot do it that way refuses it, and the refusal is one sentence, nothing changed.

Downgrade (``downgrade_schema``): MariaDB commits each DDL statement, so the set-aside step and the ALTER cannot
share a transaction; an application still recording total-only rows between them made the ALTER fail ("Data
truncated for column 'prompt_tokens'") after the set-aside had committed. So the last set-aside pass, the
placeholders and the one ALTER (both splits NOT NULL, total_tokens dropped: one table copy) run under
``LOCK TABLES … WRITE``: writers wait for it (as they wait for the ALTER's copy anyway) and nothing is written in
between. Should the ALTER still fail, the rows set aside are put back before the one-sentence error.
"""

import logging

import sqlalchemy as sa
from alembic.ddl.base import AddColumn, DropColumn
from alembic.ddl.mysql import MySQLAlterDefault, MySQLModifyColumn

from autopack.migrations import holdover
from autopack.migrations.backfill_rule import NEEDS_TOTAL, RULE, sum_of
from autopack.migrations.batched_backfill import backfill
from autopack.migrations.errors import first_line
from autopack.migrations.messages import refusal
from autopack.migrations.plan import Plan
from autopack.migrations.progress import while_running
from autopack.migrations.usage_table import SPLITS, TABLE, as_it_is, events, total_tokens_column

log = logging.getLogger("alembic.build144")

ONLINE = "ALGORITHM=INPLACE, LOCK=NONE"
SPLIT_SUM = sum_of(sa.column("prompt_tokens"), sa.column("completion_tokens"))


def fills_in_copy(plan: Plan, hooks: list[tuple[str, bool]]) -> bool:
    """Whether the ALTER's table copy computes the totals (see the module docstring for when it does not)."""
    mariadb = plan.dialect in ("mysql", "mariadb")
    return mariadb and plan.add_total and not plan.online and not plan.system_versioned and not hooks


def alter_statement(bind: sa.Connection, plan: Plan, fill: bool = False) -> str | None:
    """The plan as one ALTER TABLE (None when there is nothing to change); each split restated as it is, with
    Alembic's own MODIFY clause, so a BIGINT split, its default and its comment stay."""
    column = total_tokens_column()
    if fill:
        column.server_default = sa.schema.DefaultClause(sa.text(f"({compiled(bind, SPLIT_SUM)})"))
    clauses = [AddColumn(TABLE, column)] if plan.add_total else []
    if plan.add_default:
        clauses.append(MySQLAlterDefault(TABLE, "total_tokens", default=sa.text("0")))
    clauses += [split_as_it_is(split, plan, nullable=True) for split in plan.relax]
    if not clauses:
        return None
    prefix = f"ALTER TABLE {TABLE} "
    specifications = [compiled(bind, clause).removeprefix(prefix) for clause in clauses]
    return prefix + ", ".join(specifications) + (f", {ONLINE}" if plan.online else "")


def compiled(bind: sa.Connection, element: sa.ClauseElement) -> str:
    return str(element.compile(dialect=bind.dialect, compile_kwargs={"literal_binds": True}))


def change_schema(bind: sa.Connection, plan: Plan, hooks: list[tuple[str, bool]]) -> None:
    """The one ALTER; with ``fills_in_copy``, its copy computes the totals and SET DEFAULT 0 follows."""
    fill = fills_in_copy(plan, hooks)
    statement = alter_statement(bind, plan, fill)
    if statement is None:
        return
    with while_running(log, "ALTER TABLE", plan.options.progress_every):
        bind.exec_driver_sql(statement)
    if fill:
        bind.exec_driver_sql(f"ALTER TABLE {TABLE} ALTER COLUMN total_tokens SET DEFAULT 0")  # metadata only


def filled_in_copy(bind: sa.Connection, plan: Plan) -> int:
    """The rows whose total the copy filled, as the table now holds them (every non-zero total of the new column);
    then the batched rule over rows written since ``SET DEFAULT 0`` by code that leaves total_tokens at 0 (MariaDB
    commits each DDL statement: the default mode does not keep writers out as PostgreSQL's lock does)."""
    filled = bind.execute(sa.select(sa.func.count()).select_from(events).where(events.c.total_tokens != 0)).scalar()
    log.info("[2/3] Backfilled %d rows in the ALTER's one table copy: %s", filled, RULE)
    since = sa.select(sa.func.min(events.c.id), sa.func.max(events.c.id), sa.func.count()).where(NEEDS_TOTAL)
    first, last, rows = bind.execute(since).one()
    return filled + (backfill(bind.execute, first, last, rows, plan.options) if rows else 0)


# --- downgrade ---------------------------------------------------------------------------------------------

# MariaDB's errors for a NULL (or out-of-range) value met by MODIFY … NOT NULL: a row written after the set-aside
NOT_HOLDABLE_ERRORS = (1048, 1138, 1265)


def split_as_it_is(split: str, plan: Plan, nullable: bool) -> MySQLModifyColumn:
    """``MODIFY`` a split to ``nullable``, keeping its type, default and comment as the table has them."""
    existing = as_it_is(split, plan.columns)
    return MySQLModifyColumn(
        TABLE,
        split,
        type_=existing["existing_type"],
        nullable=nullable,
        default=existing["existing_server_default"],
        comment=existing["existing_comment"],
    )


def downgrade_statement(bind: sa.Connection, plan: Plan) -> str:
    """Splits NOT NULL again and total_tokens dropped, as one ALTER TABLE (one table copy), each split as it is."""
    clauses = [split_as_it_is(split, plan, nullable=False) for split in SPLITS]
    clauses.append(DropColumn(TABLE, sa.Column("total_tokens", sa.Integer())))
    prefix = f"ALTER TABLE {TABLE} "
    return prefix + ", ".join(compiled(bind, clause).removeprefix(prefix) for clause in clauses)


def downgrade_schema(bind: sa.Connection, plan: Plan) -> None:
    """Under ``LOCK TABLES``: set aside what was written since ``holdover.hold_over`` ran, write its placeholders,
    prove nothing is left, and run the one ALTER; no writer gets in between. On a failure of the ALTER, the rows
    set aside are put back (the table stays as BUILD-144 code reads it) and the error is one sentence."""
    bind.exec_driver_sql(f"LOCK TABLES {TABLE} WRITE, {holdover.HOLDOVER} WRITE")
    try:
        bind.execute(holdover.hold_over_statement(ignore_held=True))
        bind.execute(holdover.placeholders_statement())
        holdover.prove_set_aside(bind)
        with while_running(log, "ALTER TABLE", plan.options.progress_every):
            bind.exec_driver_sql(downgrade_statement(bind, plan))
        failure = None
    except sa.exc.DBAPIError as error:
        code = error.orig.args[0] if error.orig is not None and error.orig.args else None
        if code not in NOT_HOLDABLE_ERRORS:
            raise
        failure = error
    finally:
        bind.exec_driver_sql("UNLOCK TABLES")
    if failure is not None:  # the set-aside step has committed (the ALTER committed it): put its rows back
        restored = holdover.restore(bind)
        bind.exec_driver_sql("COMMIT")
        raise refusal(
            "mariadb_downgrade_writer_still_running", table=TABLE, error=first_line(failure), restored=restored
        )
