"""Everything checked before a BUILD-144 run changes a byte, as one list of named checks.

Like strong_migrations' checks: each has a name (the row of docs/troubleshooting.md's "checked before any
change" table), the directions it guards, what it looks for on the table as it really is, and its refusal
(named in ``messages.MESSAGES``): one sentence saying what was found and what to do, ending "nothing was
changed". ``refuse_what_would_go_wrong`` runs the checks of a direction in this order and raises the first
refusal. docs/troubleshooting.md quotes each refusal's start; a test holds the two together.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic.util import CommandError

from autopack.migrations.build144 import doctor_index, engines, logical_replication
from autopack.migrations.build144.backfill_rule import overflowing, wide_split_sum
from autopack.migrations.build144.fill_trigger import PG_NAMES
from autopack.migrations.build144.holdover import HOLDOVER, NOT_HOLDABLE, held_rows_changed_again
from autopack.migrations.build144.messages import sentence, template
from autopack.migrations.build144.plan import Plan, with_rows_counted
from autopack.migrations.build144.table_inspection import (
    checks_forbidding_total_only,
    columns_rewritten_on_update,
    id_generator_fix,
    id_not_generated,
    integer_limit,
    objects_reading_total_tokens,
    publications_refusing_updates,
)
from autopack.migrations.build144.usage_table import FILL_TRIGGER, SPLITS, TABLE, events, first_ids, some, total


@dataclass(frozen=True)
class PreflightCheck:
    name: str
    directions: tuple[str, ...]
    find: Callable[[sa.Connection, Plan], dict[str, Any] | None]  # the refusal's fields, or None: all is well
    message: str  # the refusal's name in ``messages.MESSAGES``, formatted with what ``find`` returned
    reads_the_count: bool = False  # reads what ``with_rows_counted``'s scan found (the checks before it need not)

    @property
    def refusal(self) -> str:
        """The refusal's sentence with its fields unfilled."""
        return template(self.message)

    def sentence(self, found: dict[str, Any]) -> str:
        return sentence(self.message, table=TABLE, holdover=HOLDOVER, **found)


def _ids(ids: list[int]) -> dict[str, Any] | None:
    return {"ids": some(ids)} if ids else None


def overflowing_totals(bind: sa.Connection, plan: Plan) -> dict[str, Any] | None:
    if plan.overflowing == 0:  # counted in the upgrade's one scan before the change (``with_rows_counted``)
        return None
    ids = first_ids(bind, sa.select(events.c.id).where(overflowing(plan.has_total, plan.total_limit)))
    return {"limit": f"{plan.total_limit:,}", "ids": some(ids)} if ids else None


def forbidding_checks(bind: sa.Connection, _plan: Plan) -> dict[str, Any] | None:
    found = checks_forbidding_total_only(bind)
    return {"checks": ", ".join(found)} if found else None


def refusing_publication(bind: sa.Connection, _plan: Plan) -> dict[str, Any] | None:
    found = publications_refusing_updates(bind)
    return {"publication": found[0][0], "why": found[0][1]} if found else None


def rewritten_columns(bind: sa.Connection, _plan: Plan) -> dict[str, Any] | None:
    found = columns_rewritten_on_update(bind)
    return {"columns": ", ".join(found)} if found else None


def no_total_tokens(_bind: sa.Connection, plan: Plan) -> dict[str, Any] | None:
    return None if plan.has_total else {}


def readers_of_total_tokens(bind: sa.Connection, _plan: Plan) -> dict[str, Any] | None:
    readers = objects_reading_total_tokens(bind)
    if not readers:
        return None
    one = len(readers) == 1
    return {"readers": "; ".join(readers), "s": "s" if one else "", "them": "it" if one else "them"}


def splits_not_null(_bind: sa.Connection, plan: Plan) -> dict[str, Any] | None:
    strict = [s for s in SPLITS if not plan.columns[s]["nullable"]]
    return {"splits": ", ".join(strict)} if strict else None


def split_sums_past_integer(bind: sa.Connection, plan: Plan) -> dict[str, Any] | None:
    limit = integer_limit(plan.dialect, None)
    return _ids(first_ids(bind, sa.select(events.c.id).where(wide_split_sum > limit)))


def totals_a_widened_column_holds(bind: sa.Connection, plan: Plan) -> dict[str, Any] | None:
    limit, column_type = integer_limit(plan.dialect, None), plan.columns["total_tokens"]["type"]
    if integer_limit(plan.dialect, column_type) <= limit:
        return None
    ids = first_ids(bind, sa.select(events.c.id).where(total > limit))
    return {"type": column_type, "ids": some(ids)} if ids else None


def null_splits_in_history(bind: sa.Connection, plan: Plan) -> dict[str, Any] | None:
    if not plan.system_versioned:
        return None
    versions = bind.exec_driver_sql(
        f"SELECT COUNT(*) FROM {TABLE} FOR SYSTEM_TIME ALL WHERE prompt_tokens IS NULL OR completion_tokens IS NULL"
    ).scalar()
    return {"versions": versions} if versions else None


def changed_again(bind: sa.Connection, plan: Plan) -> dict[str, Any] | None:
    return _ids(first_ids(bind, held_rows_changed_again())) if plan.has_holdover else None


def index_not_ours(bind: sa.Connection, _plan: Plan) -> dict[str, Any] | None:
    _state, impostor = doctor_index.what_carries_the_name(bind)
    return {"what": impostor, "index": doctor_index.INDEX, "column": doctor_index.COLUMN} if impostor else None


def publisher_before_subscribers(bind: sa.Connection, plan: Plan) -> dict[str, Any] | None:
    """An upgrade that adds total_tokens on a publisher: subscribers without it would stop applying."""
    if not plan.add_total or plan.options.subscribers_upgraded:
        return None
    found = logical_replication.read_by_subscribers(bind, logical_replication.publications(bind))
    return {"publications": found} if found else None


def subscriber_before_publisher(bind: sa.Connection, plan: Plan) -> dict[str, Any] | None:
    """A downgrade that drops total_tokens on a subscriber: a publisher still sending it would stop it."""
    if plan.options.publisher_downgraded:
        return None
    found = logical_replication.subscriptions(bind)
    return {"subscriptions": ", ".join(found)} if found else None


def set_aside_rows_published(bind: sa.Connection, plan: Plan) -> dict[str, Any] | None:
    """A downgrade that sets rows aside where FOR ALL TABLES (or TABLES IN SCHEMA) publishes the set-aside table."""
    if plan.options.holdover_on_subscribers:
        return None
    found = logical_replication.read_by_subscribers(bind, logical_replication.publications_of_new_tables(bind))
    if not found or not first_ids(bind, sa.select(events.c.id).where(NOT_HOLDABLE)):  # no rows to set aside
        return None
    return {"publications": found}


def id_not_an_integer(_bind: sa.Connection, plan: Plan) -> dict[str, Any] | None:
    column = plan.columns.get("id")
    if column is None or isinstance(column["type"], sa.Integer):
        return None
    return {"type": column["type"]}


log = logging.getLogger("alembic.build144")

UPGRADE, DOWNGRADE = ("upgrade",), ("downgrade",)
BOTH = UPGRADE + DOWNGRADE

# BEFORE row triggers on INSERT or UPDATE that PostgreSQL fires after the fill trigger (it fires them in name order)
PG_LATER_BEFORE_TRIGGERS = """
SELECT tgname FROM pg_trigger WHERE tgrelid = CAST(:table AS regclass) AND NOT tgisinternal
  AND (tgtype & 3) = 3 AND (tgtype & 20) <> 0 AND tgname COLLATE "C" > :fill AND tgname NOT IN :ours
ORDER BY tgname
"""


def before_triggers_after_the_fill(bind: sa.Connection, plan: Plan) -> dict[str, Any] | None:
    if not (plan.online and engines.named(plan.dialect).TRIGGERS_FIRE_IN_NAME_ORDER):
        return None
    statement = sa.text(PG_LATER_BEFORE_TRIGGERS).bindparams(sa.bindparam("ours", expanding=True))
    later = bind.execute(statement, {"table": TABLE, "fill": FILL_TRIGGER, "ours": list(PG_NAMES)}).scalars().all()
    return {"triggers": ", ".join(later), "fill": FILL_TRIGGER} if later else None


CHECKS = [
    PreflightCheck(
        "an `id` that is not an integer (UUID, TEXT)",
        ("upgrade", "downgrade"),
        id_not_an_integer,
        "id_not_an_integer",
    ),
    PreflightCheck(
        "totals the backfill would write past what `total_tokens` holds",
        UPGRADE,
        overflowing_totals,
        "overflowing_totals",
        reads_the_count=True,
    ),
    PreflightCheck(
        "CHECK constraints that would still forbid total-only rows (NULL splits)",
        UPGRADE,
        forbidding_checks,
        "forbidding_checks",
    ),
    PreflightCheck(
        "publications that publish UPDATEs without a usable replica identity (PostgreSQL)",
        UPGRADE,
        refusing_publication,
        "refusing_publication",
    ),
    PreflightCheck(
        "publications that send `llm_usage_events` to subscribers (PostgreSQL logical replication)",
        UPGRADE,
        publisher_before_subscribers,
        "publisher_before_subscribers",
    ),
    PreflightCheck(
        "BEFORE triggers that PostgreSQL would fire after the online fill trigger",
        UPGRADE,
        before_triggers_after_the_fill,
        "before_triggers_after_the_fill",
    ),
    PreflightCheck(
        "an index named `ix_llm_usage_events_is_doctor_call` that is not the plain one on `is_doctor_call`",
        UPGRADE,
        index_not_ours,
        "index_not_ours",
    ),
    PreflightCheck(
        "a table stamped `0002` without being migrated",
        DOWNGRADE,
        no_total_tokens,
        "no_total_tokens",
    ),
    PreflightCheck(
        "views, triggers, rules, generated columns, CHECKs, expression/partial indexes reading `total_tokens`",
        DOWNGRADE,
        readers_of_total_tokens,
        "readers_of_total_tokens",
    ),
    PreflightCheck(
        "splits still NOT NULL at `0002` (stamped without being migrated)",
        DOWNGRADE,
        splits_not_null,
        "splits_not_null",
    ),
    PreflightCheck(
        "subscriptions that receive `llm_usage_events` (PostgreSQL logical replication)",
        DOWNGRADE,
        subscriber_before_publisher,
        "subscriber_before_publisher",
    ),
    PreflightCheck(
        "publications that would send the set-aside table (`FOR ALL TABLES`, `FOR TABLES IN SCHEMA`)",
        DOWNGRADE,
        set_aside_rows_published,
        "set_aside_rows_published",
    ),
    PreflightCheck(
        "split sums past INTEGER",
        DOWNGRADE,
        split_sums_past_integer,
        "split_sums_past_integer",
    ),
    PreflightCheck(
        "totals a widened column holds",
        DOWNGRADE,
        totals_a_widened_column_holds,
        "totals_a_widened_column_holds",
    ),
    PreflightCheck(
        "NULL splits in MariaDB history",
        DOWNGRADE,
        null_splits_in_history,
        "null_splits_in_history",
    ),
    PreflightCheck(
        "held rows whose event changed again",
        DOWNGRADE,
        changed_again,
        "changed_again",
    ),
    PreflightCheck(
        "columns MariaDB rewrites on every UPDATE (`ON UPDATE CURRENT_TIMESTAMP`)",
        BOTH,
        rewritten_columns,
        "rewritten_columns",
    ),
]


def refuse_what_would_go_wrong(bind: sa.Connection, plan: Plan, direction: str) -> Plan:
    """Run the checks of ``direction`` in order; the first that finds something is refused in its sentence. An
    upgrade's plan comes back with its rows counted (``with_rows_counted``): the one scan before the change, made
    once the checks that guard it (an id that is not an integer) have passed, and read by the checks after."""
    for check in CHECKS:
        if direction in check.directions:
            if check.reads_the_count and plan.overflowing is None:
                plan = with_rows_counted(bind, plan)
            found = check.find(bind, plan)
            if found is not None:
                raise CommandError(check.sentence(found))
    logical_replication.say_the_order(bind, plan, direction)
    if direction == "upgrade":
        warn_of_an_id_the_database_does_not_generate(bind, plan)
        if plan.overflowing is None:  # no check read the count: the backfill still needs it
            plan = with_rows_counted(bind, plan)
    return plan


def warn_of_an_id_the_database_does_not_generate(bind: sa.Connection, plan: Plan) -> None:
    """An integer id the database does not fill in (SQLite WITHOUT ROWID or not the rowid's alias; no identity, serial
    or AUTO_INCREMENT) does not stop BUILD-144, whose ranges need only integers, and whoever writes the table now may
    supply the ids; but the application's recorder leaves id out of its INSERTs: said in one sentence before the
    application meets it (``verify`` fails on it as well)."""
    column = plan.columns.get("id")
    if column is None or not isinstance(column["type"], sa.Integer):  # refused above when it is not an integer
        return
    why = id_not_generated(bind)
    if why:
        log.warning(
            "%s.id is not generated by the database: the application's recorder leaves id out of its INSERTs, and %s; "
            "give the id a generator before starting the application (%s).",
            TABLE,
            why,
            id_generator_fix(plan.dialect),
        )
