"""BUILD-144 on MariaDB/MySQL: the whole schema change as one ``ALTER TABLE``, and in the default mode the totals
computed by the table copy it makes anyway.

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
import re
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op
from alembic.ddl.base import AddColumn, DropColumn
from alembic.ddl.mysql import MySQLAlterDefault, MySQLModifyColumn
from pymysql.constants import ER

from autopack.migrations.build144 import doctor_index, fill_trigger, holdover, offline_scripts, online_backfill
from autopack.migrations.build144.backfill_rule import NEEDS_TOTAL, RULE, keep_survey, split_sum, sum_of, survey
from autopack.migrations.build144.batched_backfill import backfill as batched_backfill
from autopack.migrations.build144.messages import LEAVES, refusal
from autopack.migrations.build144.online_backfill import RESUMES, with_lock_retries
from autopack.migrations.build144.plan import Plan
from autopack.migrations.build144.usage_table import SPLITS, TABLE, as_it_is, events, total_tokens_column
from autopack.migrations.runtime.errors import first_line, mysql_error
from autopack.migrations.runtime.options import Options
from autopack.migrations.runtime.progress import while_running

log = logging.getLogger("alembic.build144")

ONLINE_ALTER = "ALGORITHM=INPLACE, LOCK=NONE"
SPLIT_SUM = sum_of(sa.column("prompt_tokens"), sa.column("completion_tokens"))


def fills_in_copy(plan: Plan, hooks: list[tuple[str, bool]]) -> bool:
    """Whether the ALTER's table copy computes the totals (see the module docstring for when it does not)."""
    return plan.add_total and not plan.online and not plan.system_versioned and not hooks


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
    return prefix + ", ".join(specifications) + (f", {ONLINE_ALTER}" if plan.online else "")


def compiled(bind: sa.Connection, element: sa.ClauseElement) -> str:
    return str(element.compile(dialect=bind.dialect, compile_kwargs={"literal_binds": True}))


def change_schema(
    bind: sa.Connection, plan: Plan, hooks: list[tuple[str, bool]], new_schema: Callable | None = None
) -> None:
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
    needs_id = sa.case((NEEDS_TOTAL, events.c.id))
    counted = survey(dialect=bind.dialect.name, proving=True).add_columns(  # one scan: the report's (and proof's),
        sa.func.count(sa.case((events.c.total_tokens != 0, 1))).label("filled"),  # the rows the copy filled,
        sa.func.min(needs_id).label("first_needing"),  # and the range of those written since (``left`` of them)
        sa.func.max(needs_id).label("last_needing"),
    )
    found = bind.execute(counted).one()
    log.info("[2/3] Backfilled %d rows in the ALTER's one table copy: %s", found.filled, RULE)
    if found.left:
        return found.filled + batched_backfill(
            bind.execute, found.first_needing, found.last_needing, found.left, plan.options
        )
    if not plan.has_holdover:  # nothing changes the rows before the report (the index step adds none)
        keep_survey(bind, found)
    return found.filled


# --- downgrade ---------------------------------------------------------------------------------------------

# MariaDB's errors for a NULL (or out-of-range) value met by MODIFY … NOT NULL: a row written after the set-aside
NOT_HOLDABLE_ERRORS = (ER.BAD_NULL_ERROR, ER.INVALID_USE_OF_NULL, ER.WARN_DATA_TRUNCATED)


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
        if mysql_error(error.orig) not in NOT_HOLDABLE_ERRORS:
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


# --- the seven steps ---------------------------------------------------------------------------------------

NAME = "mariadb"
ONLINE = True
ONLINE_DOWNGRADE = False  # refused before any revision runs: the downgrade's ALTER copies the table anyway
TRANSACTIONAL_DDL = False  # a failed schema change rolls back with the transaction
TRANSACTIONAL_DDL_MADE_REAL = False  # Alembic is told DDL is transactional: the connection set-up makes it so
TRIGGERS_FIRE_IN_NAME_ORDER = False  # BEFORE triggers after the fill trigger's name would see no total
# `autopack plan`'s estimate: the whole default-mode run per million rows on the reference machine (benchmarks/)
SECONDS_PER_MILLION_ROWS = {"upgrade": 7.0, "downgrade": 6.6}
LOGICAL_REPLICATION = False


def inspect(bind: sa.Connection) -> dict[str, bool]:
    """A system-versioned table keeps every UPDATE's old row version as history."""
    versioned = bind.exec_driver_sql(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
        "AND TABLE_TYPE = 'SYSTEM VERSIONED'",
        (TABLE,),
    ).scalar()
    return {"system_versioned": bool(versioned)}


def backfill(bind: sa.Connection, plan: Plan, hooks: list[tuple[str, bool]]) -> int:
    """The ALTER's table copy computed the totals (``fills_in_copy``), or the batched UPDATE after it."""
    if fills_in_copy(plan, hooks):
        return filled_in_copy(bind, plan)
    return batched_backfill(bind.execute, plan.first_id, plan.last_id, plan.rows, plan.options)


def online_upgrade(plan: Plan) -> int:
    """Each DDL statement commits: the online ALTER (``ALGORITHM=INPLACE, LOCK=NONE``), then the fill triggers,
    each under ``lock_wait_timeout`` and retried; then ``online_backfill``'s committed batches."""

    def schema_change(connection: sa.Connection, changed: str) -> None:
        alter = alter_statement(connection, plan)
        with while_running(log, "ALTER TABLE (online)", plan.options.progress_every):
            with_lock_retries(connection, [alter] if alter else [], plan.options, changed=changed)
        with_lock_retries(connection, fill_trigger_statements(), plan.options, RESUMES)

    return online_backfill.online_upgrade(plan, schema_change)


def downgrade(bind: sa.Connection, plan: Plan, old_schema: Callable) -> None:
    """The set-aside step, then the last set-aside pass and the one ALTER under LOCK TABLES (``downgrade_schema``):
    DDL commits at once here, so they cannot share a transaction. No online downgrade here (the ALTER copies
    the table anyway): refused before any revision runs, and here too."""
    if plan.online:
        raise refusal("online_downgrade_not_here", dialect=NAME)
    fill_trigger.drop(bind)  # an online upgrade's, if finish-online never ran: its column goes
    holdover.hold_over(bind)
    holdover.prove_set_aside(bind)
    downgrade_schema(bind, plan)
    holdover.drop_if_empty(bind)


def path(bind: sa.Connection, plan: Plan, direction: str, hooks: list[tuple[str, bool]]) -> str:
    """The way the run would take, for ``autopack plan`` (read only)."""
    if direction == "downgrade":
        return (
            "rows set aside (committed), then under LOCK TABLES ... WRITE the last set-aside pass and one ALTER "
            "(one table copy: splits NOT NULL, total_tokens dropped); writers wait for it"
        )
    if plan.online:
        return (
            f"online: one ALTER with {ONLINE_ALTER} (writers go on), the fill triggers, then committed batches of "
            f"{plan.options.rows_per_batch:,} rows"
        )
    if fills_in_copy(plan, hooks):
        return "one ALTER (one table copy) that computes every total as it copies; no UPDATE pass"
    return "one ALTER (one table copy; DDL commits at once), then the backfill as batched UPDATEs"


def offline_script(plan: Plan, direction: str, change_schema: Callable) -> None:
    """Strict mode for the script's session; checks as a scalar subquery that fails ("Subquery returns more than 1
    row", explained in a comment above it), since MariaDB has no DO block."""
    scripts = offline_scripts
    scripts.say_the_plan(plan, direction)
    op.execute("SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'STRICT_ALL_TABLES')")
    if direction == "upgrade":
        offline_check(ON_UPDATE, ON_UPDATE_MESSAGE)
        narrowing = "prompt_tokens or completion_tokens is not a plain INT column (BIGINT, a default or a comment)"
        offline_check(NARROWING, f"{narrowing}: the script would narrow it; use the online command")
        offline_check(NOT_OUR_INDEX, scripts.NOT_OUR_INDEX)
        change_schema()
        op.execute(events.update().where(NEEDS_TOTAL).values(total_tokens=split_sum))
        scripts.restore_set_aside(holdover_create_statements())
        op.execute(f"CREATE INDEX IF NOT EXISTS {doctor_index.INDEX} ON {TABLE} ({doctor_index.COLUMN})")
        offline_check(scripts.literal_sql(sa.select(events.c.id).where(NEEDS_TOTAL)), scripts.STILL_TO_FILL)
        return
    offline_check(READERS_LITERAL, scripts.READERS_MESSAGE)
    scripts.restamp_retired_offline()
    for statement in holdover_create_statements():
        op.execute(statement)
    op.execute(holdover.hold_over_statement())
    op.execute(holdover.placeholders_statement())
    offline_check(scripts.literal_sql(holdover.not_set_aside()), scripts.NOT_SET_ASIDE)
    for statement in fill_trigger_drop_statements():  # an online upgrade's, if finish-online never ran
        op.execute(statement)
    change_schema()


def script_preamble() -> None:
    """Nothing before the transaction."""


def script_timeouts(options: Options) -> None:
    """The script's session waits as the server's settings say."""


CHECK = "SELECT (SELECT 1 UNION ALL SELECT 2 FROM DUAL WHERE EXISTS ({query})) AS build144_check"
ON_UPDATE = f"""SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = '{TABLE}' AND LOWER(EXTRA) LIKE '%on update%'"""
ON_UPDATE_MESSAGE = (
    "a column of llm_usage_events has ON UPDATE CURRENT_TIMESTAMP: every UPDATE of the script would rewrite it; "
    "drop that clause first"
)
NARROWING = f"""SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = '{TABLE}' AND COLUMN_NAME IN ('prompt_tokens', 'completion_tokens')
  AND (DATA_TYPE <> 'int' OR COLUMN_COMMENT <> '' OR COALESCE(COLUMN_DEFAULT, 'NULL') <> 'NULL')"""
NOT_OUR_INDEX = f"""SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
  AND TABLE_NAME = '{TABLE}' AND LOWER(INDEX_NAME) = '{doctor_index.INDEX}'
  AND (BINARY INDEX_NAME <> '{doctor_index.INDEX}' OR NON_UNIQUE = 0 OR COLUMN_NAME <> '{doctor_index.COLUMN}'
  OR SEQ_IN_INDEX > 1 OR SUB_PART IS NOT NULL OR INDEX_TYPE <> 'BTREE' OR COALESCE(COLLATION, '') <> 'A')"""


def offline_check(query: str, message: str) -> None:
    """A statement that fails when ``query`` finds a row: 'Subquery returns more than 1 row', explained above it."""
    op.get_context().impl.static_output(
        f"-- If the next statement fails with 'Subquery returns more than 1 row': {message}."
    )
    op.execute(CHECK.format(query=query))


def failure_leaves(plan: Plan, direction: str) -> str:
    """Online, what committed stays and a re-run finishes; otherwise the schema change stays (DDL commits)."""
    if plan.online:
        return LEAVES["online upgrade resumes" if direction == "upgrade" else "online downgrade finishes"]
    return LEAVES["MariaDB schema change stays"]


def stop_leaves(online: bool) -> str:
    return LEAVES["MariaDB stop"]


# --- what the checks ask of the table ----------------------------------------------------------------------

OWN_TRIGGERS = ", ".join(f"'{name}'" for name in fill_trigger.MARIADB_NAMES)  # never the operator's reader or hook
ID_GENERATOR_FIX = f"ALTER TABLE {TABLE} MODIFY id <its type> NOT NULL AUTO_INCREMENT"
READERS = f"""
SELECT CONCAT('view ', TABLE_NAME) FROM information_schema.VIEWS
WHERE TABLE_SCHEMA = DATABASE() AND VIEW_DEFINITION LIKE '%%total_tokens%%'
UNION ALL
SELECT CONCAT('trigger ', TRIGGER_NAME) FROM information_schema.TRIGGERS
WHERE TRIGGER_SCHEMA = DATABASE() AND ACTION_STATEMENT LIKE '%%total_tokens%%'
  AND TRIGGER_NAME NOT IN ({OWN_TRIGGERS})
UNION ALL
SELECT CONCAT('generated column ', COLUMN_NAME) FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND GENERATION_EXPRESSION LIKE '%%total_tokens%%'
UNION ALL
SELECT CONCAT('CHECK constraint ', CONSTRAINT_NAME) FROM information_schema.CHECK_CONSTRAINTS
WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = %s AND CHECK_CLAUSE LIKE '%%total_tokens%%'
"""


ID = """
SELECT LOWER(c.EXTRA), c.COLUMN_DEFAULT, (SELECT COUNT(*) FROM information_schema.TRIGGERS t
  WHERE t.EVENT_OBJECT_SCHEMA = DATABASE() AND t.EVENT_OBJECT_TABLE = %s AND t.ACTION_TIMING = 'BEFORE'
  AND t.EVENT_MANIPULATION = 'INSERT')
FROM information_schema.COLUMNS c WHERE c.TABLE_SCHEMA = DATABASE() AND c.TABLE_NAME = %s AND c.COLUMN_NAME = 'id'
"""
READERS_LITERAL = READERS.replace("%s", f"'{TABLE}'").replace("%%", "%")  # for the offline scripts
# a default that is one constant value for every row (0, '0', (-1), NULL): no key for a second row
CONSTANT = re.compile(r"\(*('?-?[\d.]+'?|NULL)\)*(::[\w ]+)?", re.IGNORECASE)


def update_hooks(bind: sa.Connection) -> list[tuple[str, bool]]:
    """(description, fires once per row) of every user trigger that runs on an UPDATE of the table."""
    return [
        (f"trigger {name}", True)
        for (name,) in bind.exec_driver_sql(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
            "AND EVENT_OBJECT_TABLE = %s AND EVENT_MANIPULATION = 'UPDATE' "
            f"AND TRIGGER_NAME NOT IN ({OWN_TRIGGERS})",
            (TABLE,),
        )
    ]


def check_constraints(bind: sa.Connection) -> list[tuple[str, str]]:
    """Column-level CHECKs included (SQLAlchemy's reflection misses them)."""
    return [
        (name, clause)
        for name, clause in bind.exec_driver_sql(
            "SELECT CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
            "WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (TABLE,),
        )
    ]


def count_violations(bind: sa.Connection, sql: str) -> int:
    return bind.exec_driver_sql(sql.replace("%", "%%")).scalar()  # the driver's paramstyle


def objects_reading_total_tokens(bind: sa.Connection) -> list[str]:
    return [r[0] for r in bind.exec_driver_sql(READERS, (TABLE, TABLE))]


def publications_refusing_updates(bind: sa.Connection) -> list[tuple[str, str]]:
    return []


def publications_of(bind: sa.Connection) -> list[str]:
    return []


def columns_rewritten_on_update(bind: sa.Connection) -> list[str]:
    """Columns with ``ON UPDATE CURRENT_TIMESTAMP``: every UPDATE the migration makes would rewrite them (an
    event's created_at moved to today)."""
    return list(
        bind.exec_driver_sql(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
            "AND LOWER(EXTRA) LIKE %s",
            (TABLE, "%on update%"),
        )
        .scalars()
        .all()
    )


def case_sensitive_names(bind: sa.Connection) -> bool:
    return bind.exec_driver_sql("SELECT @@lower_case_table_names").scalar() == 0  # the Linux default


SEARCH_PATH = False  # the table is looked for in the first schema of a search_path
CASE_SENSITIVE_AS = (
    "MariaDB/MySQL with lower_case_table_names = 0"  # how a refusal names the engine that tells two spellings apart
)


def rename_statement(name: str) -> str:
    """What renames the table ``name`` (quoted as it is spelled) to its own spelling."""
    return f"RENAME TABLE {name} TO {TABLE}"


def names_in_other_case(bind: sa.Connection) -> list[str]:
    """information_schema compares names without case: BINARY tells the spellings apart."""
    sql = (
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_TYPE <> 'VIEW' AND LOWER(TABLE_NAME) = %s AND BINARY TABLE_NAME <> %s ORDER BY 1"
    )
    return list(bind.exec_driver_sql(sql, (TABLE, TABLE)).scalars().all())


def rename_to_own_case(bind: sa.Connection) -> str | None:
    return None  # refused instead where two spellings are two tables


def id_not_generated(bind: sa.Connection) -> str | None:
    """AUTO_INCREMENT or a sequence's default, or a BEFORE INSERT trigger (trusted to fill it)."""
    found = bind.exec_driver_sql(ID, (TABLE, TABLE)).first()
    if found is None:
        return "there is no id column, so the recorder cannot write"
    extra, default, before_insert = found
    if "auto_increment" in (extra or "") or before_insert or (default is not None and not CONSTANT.fullmatch(default)):
        return None
    return (
        "it is not AUTO_INCREMENT and has no sequence default"
        + (f" (only DEFAULT {default})" if default else "")
        + ", so every event the recorder writes fails"
    )


def integer_limit(total_type: sa.types.TypeEngine | None) -> int:
    return 2**63 - 1 if isinstance(total_type, sa.BigInteger) else 2**31 - 1


def doctor_index_state(bind: sa.Connection) -> tuple[str | None, str | None]:
    index, column = doctor_index.INDEX, doctor_index.COLUMN
    rows = bind.execute(sa.text(doctor_index.MARIADB_NAMED), {"table": TABLE, "index": index}).all()
    if not rows:
        return None, None
    name, non_unique, column_name, sub_part, kind, order = rows[0]
    if not (
        len(rows) == 1
        and (name, non_unique, column_name, sub_part, kind, order) == (index, 1, column, None, "BTREE", "A")
    ):
        columns = ", ".join(f"{r[2]}{' DESC' if r[5] == 'D' else ''}{f'({r[3]})' if r[3] else ''}" for r in rows)
        return None, f"{name} on {TABLE} ({columns}), {kind}{'' if non_unique else ', UNIQUE'}"
    return "valid", None


def build_doctor_index(bind: sa.Connection, state: str | None, options: Options) -> str:
    """InnoDB builds it in place while writers go on; online asks for exactly that, with metadata lock waits as
    short as the online steps', so a server that cannot refuses instead of locking."""
    statement = f"CREATE INDEX {doctor_index.INDEX} ON {TABLE} ({doctor_index.COLUMN})"
    if not options.online:
        bind.exec_driver_sql(statement)
        return ""
    with_lock_retries(bind, [f"{statement} ALGORITHM=INPLACE LOCK=NONE"], options, doctor_index.STAYS)
    return " in place, writers going on"


def fill_trigger_statements() -> list[str]:
    """Two BEFORE triggers (no INSERT OR UPDATE trigger here), ``CREATE OR REPLACE``: each statement commits, so a
    re-run never leaves a moment without the trigger; a trigger under the earlier name goes once its successor is
    on."""
    return [
        *(
            f"CREATE OR REPLACE TRIGGER {name} BEFORE {event} ON {TABLE} FOR EACH ROW SET NEW.total_tokens = "
            f"IF({fill_trigger.MARIADB_CONDITIONS[event]}, {fill_trigger.MARIADB_SUM}, NEW.total_tokens)"
            for name, event in zip(fill_trigger.MARIADB_TRIGGERS, fill_trigger.MARIADB_CONDITIONS, strict=True)
        ),
        *(f"DROP TRIGGER IF EXISTS {name}" for name in fill_trigger.EARLIER_MARIADB_TRIGGERS),
    ]


def fill_trigger_drop_statements() -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {name}" for name in fill_trigger.MARIADB_NAMES]


def fill_trigger_installed(bind: sa.Connection) -> bool:
    query = (
        "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
        "AND EVENT_OBJECT_TABLE = :table AND TRIGGER_NAME IN :names"
    )
    statement = sa.text(query).bindparams(sa.bindparam("names", expanding=True))
    return bool(bind.execute(statement, {"table": TABLE, "names": list(fill_trigger.MARIADB_NAMES)}).scalar())


def holdover_create_statements() -> list[str]:
    held = holdover.HOLDOVER
    return [f"CREATE TABLE IF NOT EXISTS {held} (PRIMARY KEY (event_id)) {holdover.SELECT_HELD} WHERE 1 = 0"]


def make_holdover_replicable(bind: sa.Connection) -> None:
    """Its primary key is its replica identity."""
