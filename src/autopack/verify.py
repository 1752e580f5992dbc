"""``python -m autopack verify``: the runbook's validation criteria, checked on the configured database.

Exit status: 0 when every check holds, 1 when one fails, 2 when the database cannot be checked at all.
Rows whose usage was lost before BUILD-144 (both splits NULL, total 0) are a warning, not a failure:
no migration can recover them.
"""

from dataclasses import dataclass

from alembic.util import CommandError
from sqlalchemy import Connection, and_, case, func, inspect, or_, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from autopack.migration_env import shown
from autopack.migration_preflight import checks_forbidding_total_only
from autopack.usage_recorder import LlmUsageEvent

E = LlmUsageEvent.__table__.c


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


def _count(condition) -> object:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


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
    total_col = columns.get("total_tokens")
    splits_nullable = [s for s in ("prompt_tokens", "completion_tokens") if columns[s]["nullable"]]
    forbidding = checks_forbidding_total_only(connection) if len(splits_nullable) == 2 else []
    fix = how_to_migrate(connection)
    checks = [
        Check("total_tokens exists and is NOT NULL", bool(total_col) and not total_col["nullable"],
              "" if total_col else f"missing: {fix}"),
        Check("prompt_tokens, completion_tokens nullable", len(splits_nullable) == 2 and not forbidding,
              f"CHECK constraint {', '.join(forbidding)} still forbids NULL splits: drop or relax it" if forbidding
              else "" if len(splits_nullable) == 2 else f"still NOT NULL: {fix}"),
    ]  # fmt: skip
    if not total_col:
        return Verification(checks, [])

    p, c, t = E.prompt_tokens, E.completion_tokens, E.total_tokens
    split_sum = func.coalesce(p, 0) + func.coalesce(c, 0)
    both_null = and_(p.is_(None), c.is_(None))
    has_split = or_(p.is_not(None), c.is_not(None))
    rows, positive, unfilled, total_only, lost, mismatched = connection.execute(
        select(
            func.count(),
            _count(t > 0),
            _count(and_(has_split, t == 0, split_sum != 0)),
            _count(and_(both_null, t > 0)),
            _count(and_(both_null, t == 0)),
            _count(and_(has_split, t != split_sum)),
        )
    ).one()
    share = f" ({100 * positive / rows:.1f}%)" if rows else ""
    checks += [
        Check("total_tokens populated", unfilled == 0,
              f"{positive} of {rows} rows have total_tokens > 0{share}; {unfilled} rows with splits still at 0"
              + (f" (to fill them: {REFILL})" if unfilled else "")),
        Check("total-only rows well-formed", True, f"{total_only} rows with NULL splits and total_tokens > 0"),
        Check("totals match their splits", mismatched - unfilled == 0,
              f"{mismatched - unfilled} rows whose total_tokens is not prompt + completion"),
    ]  # fmt: skip
    warnings = []
    if lost:
        warnings.append(
            f"{lost} rows have both splits NULL and total_tokens 0: their usage was lost before this migration "
            "and cannot be recovered"
        )
    return Verification(checks, warnings)


# rows written at 0002 by code that did not know total_tokens: 0002's upgrade fills only what is missing
REFILL = "run 'alembic stamp 0001' then 'alembic upgrade head'"


def how_to_migrate(connection: Connection) -> str:
    """The exact commands that bring this database's table to BUILD-144, from the revision it is stamped with."""
    if not inspect(connection).has_table("alembic_version"):
        return "run 'alembic upgrade head'"
    try:
        with connection.begin_nested():  # a role that may read only llm_usage_events still gets its checks
            stamped = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    except DBAPIError:
        return "run 'alembic upgrade head' as the table's owner"
    if "0002" in stamped:  # stamped head without being migrated: step the stamp back, then migrate for real
        return (
            "the database is stamped 0002 but the table was never migrated: "
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
