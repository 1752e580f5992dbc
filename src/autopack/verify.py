"""``python -m autopack verify``: the runbook's validation criteria, checked on the configured database.

Exit status: 0 when every check holds, 1 when one fails, 2 when the database cannot be checked at all.
Rows whose usage was lost before BUILD-144 (both splits NULL, total 0) are a warning, not a failure:
no migration can recover them. A total-only row (both splits NULL) with a negative total is malformed: no
recorder writes one, so the check "total-only rows well-formed" fails on it. The counts come from the same
survey the upgrade reports from (``backfill_rule.survey``); a schema still to change is described with the
upgrade report's words (``plan.Plan.describe``).
"""

from dataclasses import dataclass

from alembic.util import CommandError
from sqlalchemy import Connection, inspect
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from autopack.migrations import doctor_index, fill_trigger, logical_replication
from autopack.migrations.backfill_rule import lost_usage_warning, survey
from autopack.migrations.errors import shown
from autopack.migrations.options import Options, version_table
from autopack.migrations.plan import Plan, to_do
from autopack.migrations.retired_revisions import holding
from autopack.migrations.table_inspection import checks_forbidding_total_only


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Verification:
    checks: list[Check]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def verify(connection: Connection) -> Verification:
    """Check the BUILD-144 schema and data of ``llm_usage_events`` in one scan of the table."""
    inspector = inspect(connection)
    if not inspector.has_table("llm_usage_events"):
        raise CommandError("There is no llm_usage_events table in this database: check DATABASE_URL.")
    columns = {c["name"]: c for c in inspector.get_columns("llm_usage_events")}
    missing = [name for name in ("prompt_tokens", "completion_tokens") if name not in columns]
    if missing:
        raise CommandError(
            f"llm_usage_events has no {' or '.join(missing)}: it is not a table Autopack made; check DATABASE_URL."
        )
    plan = to_do(columns)  # what 'alembic upgrade head' would still change, in the report's words
    upgrade = Plan(dialect=connection.dialect.name, mode="one transaction", options=Options(), **plan)
    forbidding = checks_forbidding_total_only(connection) if not plan["relax"] else []
    fix = how_to_migrate(connection)
    total_ok = not plan["add_total"] and not columns["total_tokens"]["nullable"]
    checks = [
        Check(
            "total_tokens exists and is NOT NULL",
            total_ok,
            f"missing ({upgrade.describe(done=False)}): {fix}" if plan["add_total"] else "",
        ),
        Check(
            "prompt_tokens, completion_tokens nullable",
            not plan["relax"] and not forbidding,
            f"CHECK constraint {', '.join(forbidding)} still forbids NULL splits: drop or relax it"
            if forbidding
            else f"still NOT NULL ({upgrade.describe(done=False)}): {fix}"
            if plan["relax"]
            else "",
        ),
    ]
    if plan["add_total"]:
        return Verification(checks, [])

    found = connection.execute(survey(verify=True)).one()
    share = f" ({100 * found.positive / found.rows:.1f}%)" if found.rows else ""
    stamped = stamped_revisions(connection)
    trigger_on = fill_trigger.installed(connection)
    # an upgrade that stopped after its schema change (revision ids are zero-padded: a later one sorts after)
    unfinished = stamped is not None and not any(r >= "0002" for r in stamped)
    if unfinished and trigger_on:  # an online upgrade stopped: resume it online
        fix = (
            "re-run 'alembic -x online=true upgrade head' to resume the online upgrade that stopped (without "
            "-x online=true it would finish in one blocking transaction)"
        )
    refill = f" (to fill them: {fix if unfinished else REFILL})" if found.unfilled else ""
    if stamped is not None:
        checks.append(
            Check(
                "revision is 0002 or later",
                not unfinished,
                f"stamped {', '.join(stamped) or 'nothing'}: an upgrade did not finish; {fix}"
                if unfinished
                else ", ".join(shown_revision(r) for r in stamped),
            )
        )
    checks += [
        Check(
            "total_tokens populated",
            found.unfilled == 0,
            f"{found.positive} of {found.rows} rows have total_tokens > 0{share}; "
            f"{found.unfilled} rows with splits still at 0{refill}",
        ),
        Check(
            "total-only rows well-formed",
            found.malformed == 0,
            f"{found.total_only} rows with NULL splits and total_tokens > 0"
            + (f"; {found.malformed} with NULL splits and a negative total_tokens" if found.malformed else ""),
        ),
        Check(
            "totals match their splits",
            found.mismatched - found.unfilled == 0,
            f"{found.mismatched - found.unfilled} rows whose total_tokens is not prompt + completion",
        ),
    ]
    warnings = [lost_usage_warning(found.lost)] if found.lost else []
    warnings += doctor_index_warnings(connection, unfinished)
    warnings += logical_replication.verify_warnings(connection)  # subscribers that must have total_tokens
    if trigger_on:
        warnings.append(
            "the online upgrade's fill trigger is still on llm_usage_events (pre-BUILD-144 writers get right "
            f"totals): once every instance runs BUILD-144 code, {REFILL}"
        )
    return Verification(checks, warnings)


def doctor_index_warnings(connection: Connection, unfinished: bool) -> list[str]:
    """The baseline's is_doctor_call index: INVALID after an interrupted concurrent build, or missing at 0002 (a
    database an earlier build of this tree upgraded to 0002 only, or stamped by hand)."""
    index = doctor_index.INDEX
    state, impostor = doctor_index.what_carries_the_name(connection)
    if impostor is not None:
        return [f"an index named {index} is not the plain one on is_doctor_call ({impostor}): rename or drop it"]
    if state == "valid" or unfinished:
        return []
    what = "is INVALID (an online build of it was interrupted)" if state == "invalid" else "is missing"
    return [
        f"{index} {what}; the pre-BUILD-144 schema declares it: run 'alembic upgrade head', which builds it "
        "(with -x online=true, concurrently, on a busy PostgreSQL)"
    ]


# rows written at 0002 by code that did not know total_tokens; after an online upgrade, its last step
REFILL = "run 'python -m autopack finish-online'"


def shown_revision(revision: str) -> str:
    """A revision as verify names it: a retired one with what the next alembic command makes of it."""
    if holding(revision) == revision:
        return revision
    return f"{revision} (an earlier build's name for {holding(revision)}: the next alembic command restamps it)"


def stamped_revisions(connection: Connection) -> list[str] | None:
    """The revisions this tree's version table holds, or None when there is none (or this role may not read it)."""
    table = version_table()
    if not inspect(connection).has_table(table):
        return None
    try:
        with connection.begin_nested():
            return list(connection.exec_driver_sql(f"SELECT version_num FROM {table}").scalars().all())
    except DBAPIError:
        return None


def tree_revisions() -> set[str]:
    """The revision ids of this migrations tree."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from autopack.database import ALEMBIC_INI

    return {script.revision for script in ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).walk_revisions()}


def how_to_migrate(connection: Connection) -> str:
    """The exact commands that bring this database's table to BUILD-144, from the revision it is stamped with."""
    table = version_table()
    if not inspect(connection).has_table(table):
        return "run 'alembic upgrade head'"
    try:
        with connection.begin_nested():  # a role that may read only llm_usage_events still gets its checks
            stamped = connection.exec_driver_sql(f"SELECT version_num FROM {table}").scalars().all()
    except DBAPIError:
        return "run 'alembic upgrade head' as the table's owner"
    foreign = [r for r in stamped if holding(r) not in tree_revisions()]
    if foreign:  # another Alembic tree's revision (upstream Autopack's own 001_initial_schema, say)
        return (
            f"{table} holds {', '.join(foreign)}, a revision of another Alembic tree: give this tree a version table "
            "of its own: export AUTOPACK_VERSION_TABLE=build144_alembic_version, then run 'alembic upgrade head'"
        )
    later = sorted(r for r in stamped if r >= "0002")  # zero-padded ids: a later revision sorts after
    if later:  # stamped head without being migrated: step the stamp back, then migrate for real
        return (
            f"the database is stamped {later[-1]} but the table was never migrated: "
            "run 'alembic stamp 0001' then 'alembic upgrade head'"
        )
    return "run 'alembic upgrade head'"


def render(result: Verification, url: URL) -> str:
    width = max(len(c.name) for c in result.checks)
    lines = [f"BUILD-144 verification of {shown(url)}"]
    lines += [f"  {'ok  ' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}".rstrip() for c in result.checks]
    lines += [f"  warning: {w}" for w in result.warnings]
    lines.append("All checks passed." if result.ok else "Verification FAILED.")
    return "\n".join(lines)
