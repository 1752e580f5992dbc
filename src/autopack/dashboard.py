"""NULL-safe usage aggregation for ``/dashboard/usage``.

Totals are summed from ``total_tokens`` (so total-only events count in full); the splits are summed with
NULL as 0. One SQL query per grouping: no Python loop over rows. Each provider's total is also given against
the run token cap (``autopack.config``), as upstream Autopack does.
"""

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import HTTPException, Query
from sqlalchemy import BigInteger, cast, func, select
from sqlalchemy.orm import Session

from autopack.config import run_token_cap
from autopack.usage_recorder import LlmUsageEvent, as_naive_utc, utcnow

PERIOD_DAYS = {"day": 1, "week": 7, "month": 30}


def known_period(period: Annotated[str, Query(description="day, week or month")] = "week") -> str:
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


def _sum(column) -> object:
    # CAST: MySQL's SUM is DECIMAL, which JSON would render as a float
    return cast(func.coalesce(func.sum(column), 0), BigInteger)


def _sums():
    e = LlmUsageEvent
    return (
        _sum(func.coalesce(e.prompt_tokens, 0)).label("prompt_tokens"),
        _sum(func.coalesce(e.completion_tokens, 0)).label("completion_tokens"),
        _sum(e.total_tokens).label("total_tokens"),
        func.count().label("events"),
    )


def percent_of_cap(total_tokens: int, cap_tokens: int) -> float:
    """``total_tokens`` as a percentage of the cap, not rounded or clamped (over 100 past the cap); 0.0 with no cap."""
    return total_tokens / cap_tokens * 100 if cap_tokens > 0 else 0.0


def usage_by_provider(
    db: Session, period: str, now: datetime | None = None, cap_tokens: int | None = None
) -> list[dict]:
    """Sums per provider, each with ``cap_tokens`` (the configured run token cap unless given) and its percentage."""
    cap = run_token_cap() if cap_tokens is None else cap_tokens
    start = period_start(period, now)
    query = (
        select(LlmUsageEvent.provider, *_sums())
        .where(LlmUsageEvent.created_at >= start)
        .group_by(LlmUsageEvent.provider)
        .order_by(LlmUsageEvent.provider)
    )
    return [
        {**row._asdict(), "period": period, "cap_tokens": cap, "percent_of_cap": percent_of_cap(row.total_tokens, cap)}
        for row in db.execute(query)
    ]


def usage_by_model(db: Session, period: str, now: datetime | None = None) -> list[dict]:
    start = period_start(period, now)
    query = (
        select(LlmUsageEvent.provider, LlmUsageEvent.model, *_sums())
        .where(LlmUsageEvent.created_at >= start)
        .group_by(LlmUsageEvent.provider, LlmUsageEvent.model)
        .order_by(LlmUsageEvent.provider, LlmUsageEvent.model)
    )
    return [row._asdict() for row in db.execute(query)]
