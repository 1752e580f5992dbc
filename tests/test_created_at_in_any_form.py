"""Every row in the period its instant belongs to, whatever form created_at was written in by whatever code.

An adopted table (made by an old model, NULL created_at allowed) is upgraded by the real CLI, then rows are written
as other code writes them: on SQLite as ISO text with a T, with Z or an offset, as Unix seconds (integer or real)
or milliseconds, as a Julian day, or as text no date function reads; on PostgreSQL into a timestamptz column with
the database's TimeZone far from UTC, and as ±infinity; on MariaDB as zero dates. Each row sits a few minutes on
either side of a window's edge; the dashboard's sums are compared with sums computed here from the instants the
test chose, and the undated rows with the ``undated`` line, in ``verify`` and in the upgrade's report.

Each dashboard test runs three ways: reading the events alone (no aggregate), with the hourly aggregate made
before the rows are written (its triggers place each row), and made after them (its fill places them); with the
aggregate ``verify`` also checks it against the events.
"""

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest
from app_client import app_client
from sqlalchemy import DateTime, Text, create_engine, text

from autopack.dashboard import PERIOD_DAYS
from autopack.database import make_engine
from legacy import old_model
from support import MYSQL_BACKENDS, POSTGRES_BACKENDS, alembic, autopack_command, line, verify

EDGE = timedelta(minutes=3)  # far enough from each window's edge that the test's own seconds never cross it
AGES = [timedelta(hours=1), -timedelta(minutes=5)] + [  # -5 min: a writer whose clock runs ahead
    timedelta(days=days) + side for days in PERIOD_DAYS.values() for side in (-EDGE, EDGE)
]
EPOCH = datetime(1970, 1, 1)


def unix(instant: datetime) -> float:
    return (instant - EPOCH).total_seconds()


SQLITE_FORMS = {  # name -> the value other code stored for a naive UTC instant
    "autopack": lambda t: t.isoformat(sep=" ", timespec="microseconds"),
    "iso-t": lambda t: t.isoformat(timespec="seconds"),
    "iso-z": lambda t: t.isoformat(timespec="milliseconds") + "Z",
    "offset-east": lambda t: (t + timedelta(hours=2)).isoformat(timespec="seconds") + "+02:00",
    "offset-west": lambda t: (t - timedelta(hours=9, minutes=30)).isoformat(sep=" ") + "-09:30",
    "unix-int": lambda t: int(unix(t)),
    "unix-real": lambda t: unix(t) + 0.25,
    "unix-ms": lambda t: int(unix(t) * 1000),
    "julian-day": lambda t: unix(t) / 86400 + 2440587.5,
    "unix-as-text": lambda t: str(int(unix(t))),  # kept as text by a TEXT column, an integer by a DATETIME one
    "postgres-offset": lambda t: (t - timedelta(hours=3)).isoformat(sep=" ") + "-03",  # PostgreSQL's text output
    "basic-offset": lambda t: (t + timedelta(hours=5, minutes=45)).isoformat() + "+0545",
    "spaced": lambda t: f"  {t.isoformat(sep=' ')} ",
}
SQLITE_UNDATED = [None, "2026-12-05 10:00:00 UTC", "yesterday", "05/12/2026 10:00"]


AGGREGATE = pytest.mark.parametrize("aggregate", ["none", "before the writes", "after the writes"])


def make_aggregate(url, aggregate: str, now: str) -> None:
    """``autopack usage-aggregate create`` when the test's ``aggregate`` says it is ``now``."""
    if aggregate == now:
        made = autopack_command(url, "usage-aggregate create")
        assert made.returncode == 0, made.stdout + made.stderr


def adopted_table(url, created_at_type=None) -> None:
    """An old model's table with NULL created_at allowed, adopted and upgraded by the real CLI."""
    metadata = old_model(splits_nullable=False, total_tokens=False)
    column = metadata.tables["llm_usage_events"].c.created_at
    column.nullable = True
    if created_at_type is not None:
        column.type = created_at_type
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    alembic(url, "upgrade", "head")


class SQL(str):
    """A created_at given as SQL (a literal in the engine's own syntax), not as a bound value."""


def insert(url, rows: list[tuple[str, object, int]], session: str = "") -> None:
    """(provider, created_at as stored, total_tokens) rows, as total-only events written by other code."""
    engine = create_engine(url)
    with engine.begin() as connection:
        if session:
            connection.exec_driver_sql(session)
        for provider, created_at, total in rows:
            connection.execute(
                text(
                    "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, "
                    "total_tokens, created_at, is_doctor_call) VALUES (:provider, 'm', 'builder', NULL, NULL, "
                    f":total, {created_at if isinstance(created_at, SQL) else ':created_at'}, false)"
                ),
                {"provider": provider, "total": total, "created_at": created_at},
            )
    engine.dispose()


def expected(dated: list[tuple[str, datetime, int]], now: datetime) -> dict:
    """Per period, each provider's total; per period, each UTC day's total: computed from the chosen instants."""
    sums = {}
    for period, days in PERIOD_DAYS.items():
        start = now - timedelta(days=days)
        inside = [(p, t, n) for p, t, n in dated if t >= start]
        providers = {p: sum(n for q, _, n in inside if q == p) for p in sorted({p for p, _, _ in inside})}
        by_day: dict[date, int] = {}
        for _, t, n in inside:
            day = min(t.date(), now.date())
            by_day[day] = by_day.get(day, 0) + n
        sums[period] = (providers, by_day)
    return sums


def check_dashboard(engine, dated, undated_totals: list[int], now: datetime) -> None:
    with app_client(engine) as client:
        for period, (providers, by_day) in expected(dated, now).items():
            usage = client.get(f"/dashboard/usage?period={period}")
            assert usage.status_code == 200, usage.text
            body = usage.json()
            assert {p["provider"]: p["total_tokens"] for p in body["providers"]} == providers, period
            assert (body["undated"]["events"], body["undated"]["total_tokens"]) == (
                len(undated_totals),
                sum(undated_totals),
            )
            breakdown = client.get(f"/dashboard/usage/breakdown?period={period}")
            assert breakdown.status_code == 200, breakdown.text
            shares = breakdown.json()
            days = {date.fromisoformat(d["day"]): d["total_tokens"] for d in shares["days"] if d["total_tokens"]}
            assert days == by_day, period
            assert shares["overall"]["total_tokens"] == sum(providers.values())
            assert shares["undated"]["total_tokens"] == sum(undated_totals)


def tokens() -> itertools.count:
    return itertools.count(1001, 7)  # distinct totals, so a row counted twice or in the wrong place shows


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("declared", ["DATETIME", "TEXT"])
@AGGREGATE
def test_sqlite_rows_in_every_form_are_counted_in_their_period(db_url, declared, aggregate):
    adopted_table(db_url, None if declared == "DATETIME" else Text())
    make_aggregate(db_url, aggregate, "before the writes")
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    n = tokens()
    dated = [(form, now - age, next(n)) for form in SQLITE_FORMS for age in AGES]
    undated = [(f"undated-{i}", value, next(n)) for i, value in enumerate(SQLITE_UNDATED)]
    insert(db_url, [(p, SQLITE_FORMS[p](t), total) for p, t, total in dated] + undated)
    make_aggregate(db_url, aggregate, "after the writes")
    engine = make_engine(db_url)
    check_dashboard(engine, dated, [total for _, _, total in undated], now)
    engine.dispose()
    result = verify(db_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(undated)} rows have a created_at that gives no time" in result.stdout + result.stderr
    assert ("ok    hourly usage aggregate matches the events" in result.stdout) == (aggregate != "none"), result.stdout


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "America/Los_Angeles"])
@AGGREGATE
def test_postgres_timestamptz_under_a_far_time_zone_is_counted_in_utc(db_url, zone, aggregate):
    adopted_table(db_url, DateTime(timezone=True))
    make_aggregate(db_url, aggregate, "before the writes")
    with create_engine(db_url).begin() as connection:
        connection.exec_driver_sql(f"ALTER DATABASE {db_url.database} SET TimeZone = '{zone}'")
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    n = tokens()
    dated = [("gemini", now - age, next(n)) for age in AGES]
    undated = [("undated-null", None, next(n)), ("undated-inf", SQL("'infinity'"), next(n))]
    undated.append(("undated-minus-inf", SQL("'-infinity'"), next(n)))
    # written as instants (with their offset), as another tool writing timestamptz would
    insert(db_url, [(p, SQL(f"'{t.isoformat()}+00:00'"), total) for p, t, total in dated] + undated)
    make_aggregate(db_url, aggregate, "after the writes")
    engine = make_engine(db_url)
    check_dashboard(engine, dated, [total for _, _, total in undated], now)
    # and the application's own writes land at the instant they name, whatever the zone
    from sqlalchemy.orm import Session

    from autopack.usage_recorder import UsageEventData, record_usage

    with Session(engine) as db:
        at = now - timedelta(days=1) + EDGE  # inside the day by 3 minutes
        record_usage(db, UsageEventData("late", "m", role="builder", total_tokens=5, created_at=at))
    with app_client(engine) as client:
        day = {p["provider"]: p["total_tokens"] for p in client.get("/dashboard/usage?period=day").json()["providers"]}
        assert day.get("late") == 5
    engine.dispose()
    result = verify(db_url)
    assert "3 rows have a created_at that gives no time" in result.stdout + result.stderr
    assert ("ok    hourly usage aggregate matches the events" in result.stdout) == (aggregate != "none"), result.stdout


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
@AGGREGATE
def test_mariadb_zero_dates_are_undated_and_day_zero_counts_on_the_first(db_url, aggregate):
    adopted_table(db_url)
    make_aggregate(db_url, aggregate, "before the writes")
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    n = tokens()
    dated = [("claude", now - age, next(n)) for age in AGES]
    # a date with day 00 in a month the week and month reach (MariaDB accepts it without NO_ZERO_IN_DATE):
    # ordered just before the 1st, counted on the 1st
    named = now - timedelta(days=2)
    first = named.replace(day=1, hour=0, minute=0, second=0)
    day_zero = [("day-zero", SQL(named.strftime("'%Y-%m-00 %H:%M:%S'")), next(n))]
    undated = [("undated-null", None, next(n)), ("undated-zero", SQL("'0000-00-00 00:00:00'"), next(n))]
    loose = "SET SESSION sql_mode = ''"
    insert(db_url, [(p, t, total) for p, t, total in dated] + day_zero + undated, session=loose)
    make_aggregate(db_url, aggregate, "after the writes")
    engine = make_engine(db_url)
    check_dashboard(engine, [*dated, ("day-zero", first, day_zero[0][2])], [total for _, _, total in undated], now)
    engine.dispose()
    result = verify(db_url)
    assert "2 rows have a created_at that gives no time" in result.stdout + result.stderr
    assert ("ok    hourly usage aggregate matches the events" in result.stdout) == (aggregate != "none"), result.stdout


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_upgrade_report_counts_undated_rows(db_url):
    adopted = old_model(splits_nullable=False, total_tokens=False)
    adopted.tables["llm_usage_events"].c.created_at.nullable = True
    engine = create_engine(db_url)
    adopted.create_all(engine)
    with engine.begin() as connection:
        for i, created_at in enumerate(["2026-12-05 10:00:00 UTC", None, "2026-12-01T10:00:00Z"], start=1):
            connection.execute(
                text(
                    "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, "
                    "created_at, is_doctor_call) VALUES (:id, 'p', 'm', 'r', 10, 5, :at, 0)"
                ),
                {"id": i, "at": created_at},
            )
    engine.dispose()
    result = alembic(db_url, "upgrade", "head")
    assert "2 rows have a created_at that gives no time" in line(result.stderr, "created_at")
