"""The plan of a BUILD-144 run, as data: what was found, what will be done, in which mode, with which options.

Built once, before any change, from the table as it really is (reflected columns, the set-aside table, system
versioning) and the ``-x`` options env.py parsed; offline (``--sql``), from the state revision 0001 leaves,
since the script cannot read the table. The report, the ``--sql`` header and ``verify`` describe the schema
change with the same words (``describe``).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import sqlalchemy as sa

from autopack.migrations.build144.backfill_rule import before_the_change
from autopack.migrations.build144.holdover import HOLDOVER
from autopack.migrations.build144.table_inspection import integer_limit, system_versioned
from autopack.migrations.build144.usage_table import SPLITS, TABLE
from autopack.migrations.runtime.options import Options

Mode = Literal["one transaction", "online", "offline script"]
TOTAL_TOKENS = "total_tokens INTEGER NOT NULL DEFAULT 0"


@dataclass(frozen=True)
class Plan:
    dialect: str
    mode: Mode
    options: Options
    # found
    columns: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # as reflected; {} offline
    has_holdover: bool = False  # an earlier downgrade's set-aside table is there
    system_versioned: bool = False  # MariaDB: every UPDATE keeps the old row version as history
    rows: int = 0  # upgrade: rows in the table, and its first and last id (the backfill's range)
    first_id: int | None = None
    last_id: int | None = None
    overflowing: int | None = None  # rows whose total the rule would write past the column's limit; None: not counted
    # to do (upgrade)
    add_total: bool = False
    add_default: bool = False
    relax: tuple[str, ...] = ()

    @property
    def has_total(self) -> bool:
        """The table has total_tokens before the change (offline: revision 0001's table has not)."""
        return "total_tokens" in self.columns

    @property
    def total_limit(self) -> int:
        """The largest total ``total_tokens`` holds (or will hold, as 0002 adds it) on this engine."""
        return integer_limit(self.dialect, self.columns.get("total_tokens", {}).get("type"))

    @property
    def online(self) -> bool:
        return self.mode == "online"

    def describe(self, done: bool = True) -> str:
        """The schema change in words: 'added …; made … nullable' (``done``) or 'add …; make … nullable'."""
        add, set_, make = ("added", "set", "made") if done else ("add", "set", "make")
        words = [f"{add} {TOTAL_TOKENS}"] if self.add_total else []
        words += [f"{set_} DEFAULT 0 on total_tokens"] if self.add_default else []
        words += [f"{make} {' and '.join(self.relax)} nullable"] if self.relax else []
        return "; ".join(words) or "already BUILD-144, nothing to change"


def to_do(columns: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What the upgrade must change on a table with these columns: only what is missing."""
    has_total = "total_tokens" in columns
    return {
        "add_total": not has_total,
        # None, or the splits' sum a MariaDB run stopped between its ALTER and SET DEFAULT 0 left
        "add_default": has_total and "prompt_tokens" in str(columns["total_tokens"]["default"] or "prompt_tokens"),
        "relax": tuple(s for s in SPLITS if not columns[s]["nullable"]),
    }


def plan_from_table(bind: sa.Connection, options: Options) -> Plan:
    """The plan for this database, read from the table as it is."""
    columns = {c["name"]: c for c in sa.inspect(bind).get_columns(TABLE)}
    return Plan(
        dialect=bind.dialect.name,
        mode="online" if options.online else "one transaction",
        options=options,
        columns=columns,
        has_holdover=sa.inspect(bind).has_table(HOLDOVER),
        system_versioned=system_versioned(bind),
        **to_do(columns),
    )


def with_rows_counted(bind: sa.Connection, plan: Plan) -> Plan:
    """The plan with the table's rows and id range (the backfill's batches) and the rows whose total would overflow
    (``preflight_checks.overflowing_totals`` reads it): one scan, before the checks."""
    found = bind.execute(before_the_change(plan.has_total, plan.total_limit)).one()
    return replace(plan, rows=found.rows, first_id=found.first, last_id=found.last, overflowing=found.overflowing)


def offline_plan(dialect: str, options: Options) -> Plan:
    """The plan of a ``--sql`` script: for a database at revision 0001 (or 0002 downgrading), table unread."""
    return Plan(dialect=dialect, mode="offline script", options=options, add_total=True, relax=SPLITS)
