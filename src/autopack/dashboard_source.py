"""Where the dashboard's sums come from: the hourly aggregate (``usage_hourly``) for the whole hours of a period,
the events themselves for the hour the period starts in, so that a window stays 24-hour days back from now.

Both are read as one ``UNION ALL`` of rows with the same columns (provider, model, UTC day number and the six
sums), summed by the caller's ``GROUP BY``: grouping, ordering and collation stay the database's, as when the
dashboard summed the events alone. Without the aggregate (``autopack usage-aggregate create`` not run, or dropped
by BUILD-144's downgrade) ``period_source`` is ``None`` and the dashboard reads the events, exactly as before.
"""

import logging
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from autopack import usage_hourly
from autopack.event_time import dated_since, utc_day_number
from autopack.usage_recorder import LlmUsageEvent

EPOCH = datetime(1970, 1, 1)
log = logging.getLogger("uvicorn.error")
COLUMNS = (*usage_hourly.KEYS, *usage_hourly.SUMS)
PENDING = sa.table(usage_hourly.PENDING, *(sa.column(name) for name in (*COLUMNS, "other_forms")))
BUCKETS = sa.table(usage_hourly.TABLE, *(sa.column(name) for name in (*COLUMNS, "other_forms")))
DAILY = sa.table(usage_hourly.DAILY, *(sa.column(name) for name in (*usage_hourly.DAILY_KEYS, *usage_hourly.SUMS)))


def has_aggregate(db: Session) -> bool:
    """Whether the dashboard reads the aggregate, decided once per session (a request): it is there and this
    connection may read it, and (PostgreSQL) the events have no row-level security. Past ``COMPACT_AT`` pending
    rows, one batch of them is folded into the buckets first, in a transaction of its own (a fold that cannot run,
    on a read-only replica say, is skipped: the sums read are exact either way)."""
    if "has_aggregate" not in db.info:
        connection = db.connection()
        usable = db.info["has_aggregate"] = usage_hourly.installed(connection) and readable(db)
        if usable:
            db.info["collations"] = usage_hourly.name_collations(connection)
            if usage_hourly.pending_rows(connection) > usage_hourly.COMPACT_AT:
                fold(db)
    return db.info["has_aggregate"]


def readable(db: Session) -> bool:
    """The aggregate there but not readable here (no SELECT granted, row-level security on the events): the
    events are read instead, and the reason logged once per process."""
    reason = usage_hourly.unreadable(db.connection())
    if reason and reason not in SAID:
        SAID.add(reason)
        log.warning("The dashboard reads llm_usage_events, not the hourly aggregate: %s", reason)
    return not reason


def fold(db: Session) -> None:
    try:
        with db.get_bind().connect() as own:
            usage_hourly.compact(own, once=True)
    except Exception as error:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        if reason not in SAID:
            SAID.add(reason)
            log.warning("The hourly aggregate's pending rows were not folded (the sums stay exact): %s", reason)


SAID: set[str] = set()


def first_whole_hour(start: datetime) -> int:
    """The first hour (since 1970) that begins strictly after ``start``: hours from it on are read from the
    aggregate; ``[start, that hour)`` from the events (a ``start`` on the hour is read from the events too)."""
    return (start - EPOCH) // timedelta(hours=1) + 1


def _named(expression, collation: str | None, name: str):
    """``expression COLLATE collation`` labelled ``name``: both sides of the union group and sort names as the
    events table does."""
    if collation:
        expression = expression.op("COLLATE")(sa.literal_column(collation))
    return expression.label(name)


def _events_columns(dialect: str, collations: dict[str, str]) -> list:
    e = LlmUsageEvent
    exact = sa.and_(e.prompt_tokens.is_not(None), e.completion_tokens.is_not(None))
    return [
        _named(e.provider, collations.get("provider"), "provider"),
        _named(e.model, collations.get("model"), "model"),
        sa.literal(1).label("events"),
        sa.func.coalesce(e.prompt_tokens, 0).label("prompt_tokens"),
        sa.func.coalesce(e.completion_tokens, 0).label("completion_tokens"),
        e.total_tokens.label("total_tokens"),
        sa.case((exact, e.total_tokens), else_=0).label("exact_split_tokens"),
        sa.case((exact, 0), else_=1).label("total_only_events"),
    ]


def _held_columns(table: sa.TableClause, collations: dict[str, str]) -> list:
    h = table.c
    return [
        _named(sa.case((h.provider_null == 1, sa.null()), else_=h.provider), collations.get("provider"), "provider"),
        _named(sa.case((h.model_null == 1, sa.null()), else_=h.model), collations.get("model"), "model"),
        h.day.label("day"),
        *(getattr(h, name).label(name) for name in usage_hourly.SUMS),
    ]


def period_source(db: Session, start: datetime, as_cte: bool = False) -> sa.Subquery | sa.CTE | None:
    """Every dated row from ``start`` on, as (provider, model, day, sums) rows: the events of the hour ``start``
    is in, from ``start``; the hourly buckets of the whole hours before the first whole day; the daily buckets
    from that day on; and every pending row from the first whole hour on. ``None`` without the aggregate. A
    group's ``SUM(events)`` is its number of events: a group whose rows all left sums to 0 (``HAVING`` it is
    not)."""
    if not has_aggregate(db):
        return None
    dialect = db.get_bind().dialect.name
    hour = first_whole_hour(start)
    day = -(-hour // 24)  # the first whole day: its hours and all later ones are in the daily buckets
    until = EPOCH + timedelta(hours=hour)
    e = LlmUsageEvent
    collations = db.info["collations"]
    columns = _events_columns(dialect, collations)
    edge = sa.select(*columns[:2], utc_day_number(e.created_at, dialect).label("day"), *columns[2:])
    own_form_only = dialect == "sqlite" and not other_forms_in(db, hour - 1)
    edge = edge.where(dated_since(e.created_at, dialect, start, until, own_form_only=own_form_only))
    hourly = sa.select(*_held_columns(BUCKETS, collations)).where(BUCKETS.c.hour >= hour, BUCKETS.c.hour < day * 24)
    daily = sa.select(*_held_columns(DAILY, collations)).where(DAILY.c.whole_day >= day)
    pending = sa.select(*_held_columns(PENDING, collations)).where(PENDING.c.hour >= hour)
    rows = sa.union_all(hourly, daily, pending, edge)
    return rows.cte("in_period") if as_cte else rows.subquery("in_period")


def other_forms_in(db: Session, hour: int) -> bool:
    """Whether an hour holds rows whose ``created_at`` is not in Autopack's own form (SQLite): then its rows are
    looked for in every form's index range, a day wide; else in one range of a few seconds more than the hour."""
    said = db.info.setdefault("other_forms", {})
    if hour not in said:
        held = sa.union_all(
            *(sa.select(t.c.other_forms).where(t.c.hour == hour) for t in (BUCKETS, PENDING))
        ).subquery()
        said[hour] = bool(db.execute(sa.select(sa.func.coalesce(sa.func.sum(held.c.other_forms), 0))).scalar())
    return said[hour]


def undated_source(db: Session) -> sa.Subquery | None:
    """The undated rows' sums as row source (buckets and pending rows of hour ``UNDATED``); ``None`` without it."""
    if not has_aggregate(db):
        return None
    held = [
        sa.select(*_held_columns(table, db.info["collations"])).where(table.c.hour == usage_hourly.UNDATED)
        for table in (BUCKETS, PENDING)
    ]
    return sa.union_all(*held).subquery("undated_rows")
