"""``autopack plan``: what ``alembic upgrade head`` (or ``downgrade -1``) would do to this database, read only.

Like ``pgroll validate`` or strong_migrations' checks, against the live database rather than a ``--sql`` script:
the state found, the schema change, the way this engine would take (in place, table rewrite, batched UPDATE,
one-copy ALTER; online or not), every preflight check with its verdict, the rows to fill or set aside, the
set-aside rows to restore, and an estimate of the time. It runs in one read-only transaction, as ``verify`` does,
and takes no migration lock: the application's writes go on (on SQLite in rollback-journal mode a writer's
commit waits for the read to end, as it does for any reader).
"""

import os
from dataclasses import asdict, dataclass, field

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from autopack.migrations.build144 import engines, holdover
from autopack.migrations.build144.backfill_rule import NEEDS_TOTAL, split_sum
from autopack.migrations.build144.messages import sentence
from autopack.migrations.build144.plan import Plan, plan_from_table
from autopack.migrations.build144.preflight_checks import CHECKS
from autopack.migrations.build144.table_inspection import update_hooks
from autopack.migrations.build144.usage_table import TABLE, events
from autopack.migrations.runtime.connection import (
    MARIADB_READ_ONLY_SESSION,
    mariadb_session_read_only,
    require_sqlite_file,
    sqlite_path,
)
from autopack.migrations.runtime.errors import shown
from autopack.migrations.runtime.options import Options
from autopack.verify import not_this_trees, stamped_revisions

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
    transactional_ddl: bool = True  # the default mode is one transaction (SQLite, PostgreSQL), not MariaDB's

    @property
    def transaction(self) -> str:
        return ": one transaction" if self.mode == "default" and self.transactional_ddl else ""

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
            f"on {self.database} ({self.engine}, {self.mode}{self.transaction})",
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


SESSION_CHECK = "a revision this tree knows, and a session that may write"
# a database with no table yet (or no file): what the run does there
NEW_TABLE_CHANGE = f"create {TABLE} (0001), then BUILD-144 on the empty table"
NEW_TABLE_PATH = "the baseline creates the table, then BUILD-144 changes it (no rows to fill)"


def before_the_revision_runs(connection: Connection, url: URL, revision: list[str] | None) -> str | None:
    """The sentence env.py would refuse the run with before any revision reads the table (another tree's revision;
    a session that may not write), or None. Read without writing: the plan's own transaction is read-only, so the
    session's defaults are read, not the transaction's."""
    foreign = not_this_trees(revision)
    if foreign:
        return sentence("unknown_revision", head=repr(foreign[0]))
    where = shown(url)
    if connection.dialect.name == "postgresql":
        read_only, recovery, role = connection.exec_driver_sql(PG_WRITES).one()
        if read_only == "on" or recovery:
            return sentence("session_read_only", where=where)
        if role != "origin":
            return sentence("session_replication_role", role=role, where=where)
    elif connection.dialect.name in ("mysql", "mariadb"):  # as the run checks (a read_only server is left to the
        # run: a role with READ ONLY ADMIN or SUPER writes there)
        if mariadb_session_read_only(connection):
            return sentence("server_read_only", where=where, text=MARIADB_READ_ONLY_SESSION)
    else:
        path = sqlite_path(url)
        if path is not None and (
            url.query.get("mode") == "ro" or not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK)
        ):
            return sentence("sqlite_read_only", where=where, text=SQLITE_READ_ONLY)
    return None


SQLITE_READ_ONLY = "attempt to write a readonly database"  # SQLite's own words, as the run reports them
PG_WRITES = (
    "SELECT current_setting('default_transaction_read_only'), pg_is_in_recovery(), "
    "current_setting('session_replication_role')"
)


def no_database_yet(url: URL, direction: str, online: bool) -> UpgradePlan:
    """The plan on a SQLite path with no file yet, where ``upgrade head`` creates the database (and never reads)."""
    made = UpgradePlan(
        direction=direction,
        database=shown(url),
        engine="sqlite",
        mode="online" if online else "default",
        revision=None,
        state=f"no database file at {sqlite_path(url)}: the upgrade creates it",
        schema_change=NEW_TABLE_CHANGE,
        path=NEW_TABLE_PATH,
        estimate_s=START_UP_S,
    )
    if direction == "downgrade":
        made.schema_change, made.path = "none", f"refused: there is no database at {sqlite_path(url)} to downgrade"
        return made
    try:
        require_sqlite_file(url, may_create=True)  # its folder must be there, as the run requires
    except CommandError as refused:
        made.path = f"refused: {refused}"
    if online:
        made.path = "refused: " + sentence("online_mode_not_here", dialect="sqlite")
    return made


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
        mode="online" if online else "default",
        transactional_ddl=strategy.TRANSACTIONAL_DDL,
        revision=revision,
        state=state_of(plan),
        schema_change=plan.describe(done=False) if direction == "upgrade" else "splits NOT NULL, drop total_tokens",
        path="",
    )
    count = sa.select(sa.func.count()).select_from(events)
    made.rows = connection.execute(count).scalar_one() if has_table else 0
    refused = before_the_revision_runs(connection, url, revision)
    if refused:  # as the run would be, before its revision reads the table
        made.checks = [Verdict(SESSION_CHECK, False, refused)]
        made.path = "refused before any revision runs"
        return made
    made.checks = [Verdict(SESSION_CHECK, True)]
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
        made.schema_change, made.path = NEW_TABLE_CHANGE, NEW_TABLE_PATH
        return made
    hooks = update_hooks(connection)
    made.checks += [
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
