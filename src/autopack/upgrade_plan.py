"""``autopack plan``: what ``alembic upgrade head`` (or ``downgrade -1``) would do to this database, read only.

Like ``pgroll validate`` or strong_migrations' checks, against the live database rather than a ``--sql`` script:
the state found, the schema change, the way this engine would take (in place, table rewrite, batched UPDATE,
one-copy ALTER; online or not), every preflight check with its verdict, the rows to fill or set aside, the
set-aside rows to restore, and an estimate of the time. It runs in one read-only transaction, as ``verify`` does,
and takes no migration lock: the application's writes go on (on SQLite in rollback-journal mode a writer's
commit waits for the read to end, as it does for any reader).
"""

from dataclasses import asdict, dataclass, field

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from autopack.migrations.build144 import engines, holdover
from autopack.migrations.build144.backfill_rule import NEEDS_TOTAL, split_sum
from autopack.migrations.build144.plan import Plan, plan_from_table
from autopack.migrations.build144.preflight_checks import CHECKS
from autopack.migrations.build144.table_inspection import update_hooks
from autopack.migrations.build144.usage_table import TABLE, events
from autopack.migrations.runtime.errors import shown
from autopack.migrations.runtime.options import Options
from autopack.verify import stamped_revisions

HEAD, BASE = "0002", "0001"
START_UP_S = 0.6  # the alembic process itself (benchmarks/README.md: 'alembic current')
JSON_VERSION = 1


@dataclass(frozen=True)
class Verdict:
    check: str
    ok: bool
    refusal: str = ""  # the sentence the run would be refused with


@dataclass
class UpgradePlan:
    direction: str
    database: str
    engine: str
    mode: str
    revision: list[str] | None  # the version table's rows; None when there is none
    state: str
    schema_change: str
    path: str
    rows: int = 0
    rows_to_change: int = 0  # upgrade: totals to fill; downgrade: rows to set aside
    set_aside_to_restore: int = 0
    estimate_s: float = 0.0
    checks: list[Verdict] = field(default_factory=list)

    @property
    def refused_by(self) -> list[Verdict]:
        return [v for v in self.checks if not v.ok]

    @property
    def proceeds(self) -> bool:
        return not self.refused_by and not self.path.startswith("refused")

    def as_json(self) -> dict:
        return {"version": JSON_VERSION, **asdict(self), "proceeds": self.proceeds}

    def render(self) -> str:
        width = max((len(v.check) for v in self.checks), default=0)
        lines = [
            f"BUILD-144 plan: {'alembic downgrade -1' if self.direction == 'downgrade' else 'alembic upgrade head'} "
            f"on {self.database} ({self.engine}, {self.mode})",
            f"  revision:      {', '.join(self.revision) if self.revision else 'none (unversioned)'}",
            f"  found:         {self.state}",
            f"  schema change: {self.schema_change}",
            f"  way:           {self.path}",
            f"  rows:          {self.rows:,} in {TABLE}; "
            + (f"{self.rows_to_change:,} totals to fill" if self.direction == "upgrade" else "")
            + (f"{self.rows_to_change:,} to set aside" if self.direction == "downgrade" else "")
            + (f"; {self.set_aside_to_restore:,} set-aside rows to restore" if self.set_aside_to_restore else ""),
            f"  estimate:      about {self.estimate_s:.0f} s (the reference machine's rate, benchmarks/README.md)",
            "  checks before any change:",
        ]
        lines += [
            f"    {'ok     ' if v.ok else 'REFUSED'}  {v.check:<{width}}  {v.refusal}".rstrip() for v in self.checks
        ]
        if self.proceeds:
            lines.append("The run would proceed.")
        else:
            why = self.refused_by[0].refusal if self.refused_by else self.path.removeprefix("refused: ")
            lines.append(f"The run would be refused: {why}")
        return "\n".join(lines)


def state_of(plan: Plan) -> str:
    """The state the table is in, in the words the upgrade logs."""
    if not plan.columns:
        return f"no {TABLE} table: the upgrade creates it"
    nothing = not (plan.add_total or plan.add_default or plan.relax)
    if nothing:
        return "BUILD-144 (total_tokens with DEFAULT 0, splits nullable)"
    total = "no total_tokens" if plan.add_total else "total_tokens without DEFAULT 0" if plan.add_default else ""
    splits = "splits NOT NULL" if plan.relax else "splits nullable"
    return f"pre-BUILD-144 ({', '.join(w for w in (splits, total) if w)})"


def make_plan(connection: Connection, url: URL, direction: str, online: bool = False) -> UpgradePlan:
    """The plan of a run in ``direction`` on this database, from what the table holds now (reads only)."""
    strategy = engines.of(connection)
    options = Options(online=online)
    revision = stamped_revisions(connection)
    has_table = sa.inspect(connection).has_table(TABLE)
    plan = plan_from_table(connection, options) if has_table else Plan(strategy.NAME, "one transaction", options)
    made = UpgradePlan(
        direction=direction,
        database=shown(url),
        engine=strategy.NAME,
        mode="online" if online else "default (one transaction)" if strategy.TRANSACTIONAL_DDL else "default",
        revision=revision,
        state=state_of(plan),
        schema_change=plan.describe(done=False) if direction == "upgrade" else "splits NOT NULL, drop total_tokens",
        path="",
    )
    count = sa.select(sa.func.count()).select_from(events)
    made.rows = connection.execute(count).scalar_one() if has_table else 0
    at_head = revision is not None and HEAD in revision
    if direction == "upgrade" and at_head and not (plan.add_total or plan.add_default or plan.relax):
        made.schema_change, made.path = "none", "nothing to do: the database is at head"
        return made
    if direction == "downgrade" and not at_head:
        made.path = (
            f"refused: the database is not at {HEAD}, so 'downgrade -1' would not be BUILD-144's (at {BASE} it is the "
            f"baseline's, which drops {TABLE} and refuses while it holds rows)"
        )
        return made
    if not has_table:
        made.path = "the baseline creates the table, then BUILD-144 changes it (no rows to fill)"
        return made
    hooks = update_hooks(connection)
    made.checks = [
        Verdict(check.name, found is None, check.sentence(found) if found is not None else "")
        for check in CHECKS
        if direction in check.directions
        for found in [check.find(connection, plan)]
    ]
    made.path = strategy.path(connection, plan, direction, hooks)
    if direction == "upgrade":
        needs = NEEDS_TOTAL if plan.has_total else split_sum != 0
        made.rows_to_change = connection.execute(count.where(needs)).scalar_one()
        made.set_aside_to_restore = holdover.held_rows(connection) or 0
    else:
        made.rows_to_change = connection.execute(count.where(holdover.NOT_HOLDABLE)).scalar_one()
    made.estimate_s = START_UP_S + strategy.SECONDS_PER_MILLION_ROWS[direction] * made.rows / 1e6
    return made
