"""NULL-safe usage aggregation for ``/dashboard/usage``.

Totals are summed from ``total_tokens`` (so total-only events count in full); the splits are summed with
NULL as 0. One SQL query per grouping: no Python loop over rows. Each provider's total is also given against
the run token cap (``autopack.config``), as upstream Autopack does.
"""

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import HTTPException, Query
from sqlalchemy import func, literal, null, select, union_all
from sqlalchemy.orm import Session

from autopack.config import run_token_cap
from autopack.dashboard_source import period_source, undated_source
from autopack.event_time import dated_since, group_key, undated
from autopack.exact_sums import read_sums, sum_columns
from autopack.usage_recorder import LlmUsageEvent, as_naive_utc, utcnow

PERIOD_DAYS = {"day": 1, "week": 7, "month": 30}


# OpenAPI lists the periods as an enum; the check itself stays here, so an unknown one is a 400 in one sentence
# (FastAPI's own enum validation would answer 422 with a list of errors)
PERIOD = Query(description="the window: the last 1, 7 or 30 days, in UTC", json_schema_extra={"enum": [*PERIOD_DAYS]})


def known_period(period: Annotated[str, PERIOD] = "week") -> str:
    """The ``period`` query parameter of every dashboard route: 400 in one sentence when it is not a known one."""
    if period not in PERIOD_DAYS:
        raise HTTPException(status_code=400, detail=f"unknown period {period!r}: use one of {', '.join(PERIOD_DAYS)}")
    return period


def period_start(period: str, now: datetime | None = None) -> datetime:
    """The first instant (naive UTC, like ``created_at``) of ``period`` ending at ``now`` (aware, or naive UTC).

    Windows are whole 24-hour days back from ``now`` in UTC on every engine: the comparison never goes through
    a session time zone.
    """
    if period not in PERIOD_DAYS:
        raise ValueError(f"unknown period {period!r}: use one of {', '.join(PERIOD_DAYS)}")
    return as_naive_utc(now or utcnow()) - timedelta(days=PERIOD_DAYS[period])


TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _sums(dialect: str) -> list:
    e = LlmUsageEvent
    sums = sum_columns(
        dialect,
        prompt_tokens=func.coalesce(e.prompt_tokens, 0),
        completion_tokens=func.coalesce(e.completion_tokens, 0),
        total_tokens=e.total_tokens,
    )
    return [*sums, func.count().label("events")]


def _source_sums(source, dialect: str) -> list:
    """The sums of a ``dashboard_source`` row source: the same labels as ``_sums``."""
    c = source.c
    sums = sum_columns(
        dialect, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens, total_tokens=c.total_tokens
    )
    return [*sums, func.coalesce(func.sum(c.events), 0).label("events")]


def _row(row, *keys: str) -> dict:
    """A result row as the response's fields: its keys, its exact sums and its count of events."""
    mapping = row._mapping
    return {**{key: mapping[key] for key in keys}, **read_sums(mapping, TOKENS), "events": int(mapping["events"])}


def percent_of_cap(total_tokens: int, cap_tokens: int) -> float:
    """``total_tokens`` as a percentage of the cap, not rounded or clamped (over 100 past the cap); 0.0 with no cap."""
    return total_tokens / cap_tokens * 100 if cap_tokens > 0 else 0.0


def in_period(db: Session, period: str, now: datetime | None = None):
    """The WHERE clause of ``period``: rows whose instant (``event_time``) is in it; undated rows never are."""
    return dated_since(LlmUsageEvent.created_at, dialect_of(db), period_start(period, now))


def dialect_of(db: Session) -> str:
    return db.get_bind().dialect.name


def usage_by_provider(
    db: Session, period: str, now: datetime | None = None, cap_tokens: int | None = None
) -> list[dict]:
    """Sums per provider, each with ``cap_tokens`` (the configured run token cap unless given) and its percentage."""
    cap = run_token_cap() if cap_tokens is None else cap_tokens
    e = LlmUsageEvent
    dialect = dialect_of(db)
    source = period_source(db, period_start(period, now))
    if source is not None:  # the hourly aggregate, and the events of the period's first hour
        query = select(source.c.provider, *_source_sums(source, dialect)).group_by(source.c.provider)
        query = query.having(func.sum(source.c.events) != 0).order_by(source.c.provider)
    else:
        query = (
            select(e.provider, *_sums(dialect))
            .where(in_period(db, period, now))
            .group_by(group_key(e.provider, dialect))
            .order_by(e.provider)
        )
    rows = [_row(row, "provider") for row in db.execute(query)]
    return [
        {**row, "period": period, "cap_tokens": cap, "percent_of_cap": percent_of_cap(row["total_tokens"], cap)}
        for row in rows
    ]


def usage_by_model(db: Session, period: str, now: datetime | None = None) -> list[dict]:
    e = LlmUsageEvent
    dialect = dialect_of(db)
    source = period_source(db, period_start(period, now))
    if source is not None:
        c = source.c
        query = select(c.provider, c.model, *_source_sums(source, dialect)).group_by(c.provider, c.model)
        query = query.having(func.sum(c.events) != 0)
        return [_row(row, "provider", "model") for row in db.execute(query.order_by(c.provider, c.model))]
    query = (
        select(e.provider, e.model, *_sums(dialect))
        .where(in_period(db, period, now))
        .group_by(group_key(e.provider, dialect), group_key(e.model, dialect))
        .order_by(e.provider, e.model)
    )
    return [_row(row, "provider", "model") for row in db.execute(query)]


def usage_by_provider_and_model(
    db: Session, period: str, now: datetime | None = None, cap_tokens: int | None = None
) -> tuple[list[dict], list[dict]]:
    """``usage_by_provider`` and ``usage_by_model`` together: through the aggregate, one statement that reads the
    period's rows once (a CTE) and groups them both ways; from the events, the two queries."""
    start = period_start(period, now)
    source = period_source(db, start, as_cte=True)
    if source is None:
        return usage_by_provider(db, period, now, cap_tokens), usage_by_model(db, period, now)
    cap = run_token_cap() if cap_tokens is None else cap_tokens
    c, sums = source.c, _source_sums(source, dialect_of(db))
    some = func.sum(c.events) != 0
    providers = select(literal(0).label("level"), c.provider, null().label("model"), *sums).group_by(c.provider)
    models = select(literal(1).label("level"), c.provider, c.model, *sums).group_by(c.provider, c.model)
    both = union_all(providers.having(some), models.having(some)).subquery("both")
    rows = db.execute(select(both).order_by(both.c.level, both.c.provider, both.c.model)).all()
    by_provider = [
        {
            **(row := _row(r, "provider")),
            "period": period,
            "cap_tokens": cap,
            "percent_of_cap": percent_of_cap(row["total_tokens"], cap),
        }
        for r in rows
        if r.level == 0
    ]
    return by_provider, [_row(r, "provider", "model") for r in rows if r.level == 1]


def undated_usage(db: Session) -> dict:
    """The sums of every undated row (``event_time.undated``): in no period, so shown apart, never dropped."""
    e = LlmUsageEvent
    source = undated_source(db)
    if source is not None:  # the aggregate's bucket of undated rows
        return _row(db.execute(select(*_source_sums(source, dialect_of(db)))).one())
    query = select(*_sums(dialect_of(db))).where(undated(e.created_at, dialect_of(db)))
    return _row(db.execute(query).one())
