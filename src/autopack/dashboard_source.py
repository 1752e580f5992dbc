"""Where the dashboard's sums come from: the hourly aggregate (``usage_hourly``) for the whole hours of a period,
the events themselves for the hour the period starts in, so that a window stays 24-hour days back from now.

Both are read as one ``UNION ALL`` of rows with the same columns (provider, model, UTC day number and the six
sums), summed by the caller's ``GROUP BY``: grouping, ordering and collation stay the database's, as when the
dashboard summed the events alone. Without the aggregate (``autopack usage-aggregate create`` not run, or dropped
by BUILD-144's downgrade) ``period_source`` is ``None`` and the dashboard reads the events, exactly as before.
"""

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from autopack import usage_hourly
from autopack.event_time import dated_since, undated, utc_day_number
from autopack.usage_recorder import LlmUsageEvent

EPOCH = datetime(1970, 1, 1)
HOURLY = sa.table(usage_hourly.TABLE, *(sa.column(name) for name in (*usage_hourly.KEYS, *usage_hourly.SUMS)))


def has_aggregate(db: Session) -> bool:
    """Whether the aggregate is there, asked once per session (a request)."""
    if "has_aggregate" not in db.info:
        db.info["has_aggregate"] = usage_hourly.installed(db.connection())
    return db.info["has_aggregate"]


def first_whole_hour(start: datetime) -> int:
    """The first hour (since 1970) that begins strictly after ``start``: hours from it on are read from the
    aggregate; ``[start, that hour)`` from the events (a ``start`` on the hour is read from the events too)."""
    return (start - EPOCH) // timedelta(hours=1) + 1


def _events_columns(dialect: str) -> list:
    e = LlmUsageEvent
    exact = sa.and_(e.prompt_tokens.is_not(None), e.completion_tokens.is_not(None))
    return [
        e.provider.label("provider"),
        e.model.label("model"),
        sa.literal(1).label("events"),
        sa.func.coalesce(e.prompt_tokens, 0).label("prompt_tokens"),
        sa.func.coalesce(e.completion_tokens, 0).label("completion_tokens"),
        e.total_tokens.label("total_tokens"),
        sa.case((exact, e.total_tokens), else_=0).label("exact_split_tokens"),
        sa.case((exact, 0), else_=1).label("total_only_events"),
    ]


def _hourly_columns() -> list:
    h = HOURLY.c
    return [
        sa.case((h.provider_null == 1, sa.null()), else_=h.provider).label("provider"),
        sa.case((h.model_null == 1, sa.null()), else_=h.model).label("model"),
        *(getattr(h, name).label(name) for name in usage_hourly.SUMS),
    ]


def period_source(db: Session, start: datetime) -> sa.Subquery | None:
    """Every dated row from ``start`` on, as (provider, model, day, sums) rows: the aggregate's buckets of the
    whole hours and the events of the first, partial one. ``None`` without the aggregate."""
    if not has_aggregate(db):
        return None
    dialect = db.get_bind().dialect.name
    hour = first_whole_hour(start)
    until = EPOCH + timedelta(hours=hour)
    e = LlmUsageEvent
    edge = sa.select(
        *_events_columns(dialect)[:2], utc_day_number(e.created_at, dialect).label("day"), *_events_columns(dialect)[2:]
    ).where(dated_since(e.created_at, dialect, start, until))
    whole = sa.select(*_hourly_columns()[:2], HOURLY.c.day.label("day"), *_hourly_columns()[2:]).where(
        HOURLY.c.hour >= hour,
        HOURLY.c.events != 0,  # a bucket whose rows all left is no group
    )
    return sa.union_all(whole, edge).subquery("in_period")


def undated_source(db: Session) -> sa.Subquery | None:
    """The undated rows' sums as one row source (the aggregate's undated bucket); ``None`` without it."""
    if not has_aggregate(db):
        return None
    return sa.select(*_hourly_columns()).where(HOURLY.c.hour == usage_hourly.UNDATED).subquery("undated_rows")


def undated_events(db: Session) -> sa.Subquery:
    """The same, from the events (no aggregate)."""
    dialect = db.get_bind().dialect.name
    return (
        sa.select(*_events_columns(dialect)).where(undated(LlmUsageEvent.created_at, dialect)).subquery("undated_rows")
    )
