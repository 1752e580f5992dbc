"""When an event happened, read from ``created_at`` in whatever form other code left it, on each engine.

Autopack stores naive UTC (``'2026-12-05 10:00:00.123456'`` on SQLite), but a table that lived for months holds
rows written by other versions and tools, and they are never rewritten (a round trip keeps every value as it
was). So every period and day is decided on the row's *instant*:

- SQLite (no date type: each row is text, a number or NULL): text in any form SQLite's date functions read
  (``T`` or space, ``Z`` or an offset such as ``+02:00``, fractions of a second, a date alone), and the same with
  spaces around it or an offset without its colon (``+00``, ``+0200``), is converted to UTC; a number (or a number
  written as text) is a Julian day below 5373484.5 (SQLite's own ``'auto'`` rule), Unix seconds up to year 9999,
  and Unix milliseconds above. Precision is SQLite's: the millisecond.
- PostgreSQL: ``timestamp`` is naive UTC; ``timestamptz`` is an instant, read in UTC because the application's
  transactions set ``TimeZone`` to UTC (``database.py``).
- MariaDB: ``DATETIME`` is naive UTC; ``TIMESTAMP`` is read in UTC (the application's sessions set
  ``time_zone = '+00:00'``). A date whose month or day is ``00`` (``2026-12-00``, which MariaDB accepts unless
  ``NO_ZERO_IN_DATE`` is set) is ordered by MariaDB just before the first day it names, and counted on that day.

A row whose instant cannot be known is *undated*: NULL, text SQLite cannot read (``'2026-12-05 10:00:00 UTC'``),
PostgreSQL's ``±infinity``, MariaDB's zero dates (``0000-00-00``). It belongs to no period; the
dashboard, ``verify`` and the upgrade's report count it as such, so it is never silently dropped.

Each function takes the ``created_at`` column (an ORM attribute or a light table's column) and the dialect name.
The period test stays an index range on ``created_at`` on every engine (on SQLite, one range per form that can
fall in the period), refined by the exact instant.
"""

import functools
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import ColumnElement, UnaryExpression

JULIAN_DAY_LIMIT = 5373484.5  # 9999-12-31 as a Julian day: a smaller number is one (SQLite's 'auto' modifier)
UNIX_SECONDS_LIMIT = 253402300799  # 9999-12-31 23:59:59 in Unix seconds: a larger number is milliseconds
UNIX_EPOCH_JULIAN_DAY = 2440587.5


def _number_instant(number: ColumnElement) -> ColumnElement[float]:
    """A number as a Julian day (SQLite's own 'auto' rule), Unix seconds up to year 9999, else Unix milliseconds."""
    return sa.case(
        (number < JULIAN_DAY_LIMIT, sa.func.julianday(number)),
        (number <= UNIX_SECONDS_LIMIT, sa.func.julianday(number, "unixepoch")),
        else_=sa.func.julianday(number / 1000.0, "unixepoch"),
    )


def _text_instant(created_at: ColumnElement) -> ColumnElement[float]:
    """Text SQLite reads as it is; else, tried in turn only for such rows: a number written as text (a TEXT column
    keeps ``'1796490000'`` as text), spaces around it, an offset without its colon (``+00``, ``+0200``, as
    PostgreSQL and ISO's basic format write them)."""
    as_text = sa.type_coerce(created_at, sa.String)
    trimmed = sa.func.trim(as_text)
    digits_only = sa.and_(trimmed.op("GLOB")("[0-9]*"), sa.not_(trimmed.op("GLOB")("*[^0-9.]*")))
    return sa.func.coalesce(
        sa.func.julianday(created_at),
        sa.case((digits_only, _number_instant(sa.cast(trimmed, sa.Float)))),
        sa.func.julianday(trimmed),
        sa.case((trimmed.op("GLOB")("*[0-9][+-][0-9][0-9]"), sa.func.julianday(trimmed + ":00"))),
        sa.case(
            (
                trimmed.op("GLOB")("*[0-9][+-][0-9][0-9][0-9][0-9]"),
                sa.func.julianday(
                    sa.func.substr(trimmed, 1, sa.func.length(trimmed) - 2) + ":" + sa.func.substr(trimmed, -2)
                ),
            )
        ),
    )


@functools.lru_cache(maxsize=64)  # built once per column: an expression of about a thousand nodes
def _sqlite_instant(created_at: ColumnElement) -> ColumnElement[float]:
    """The row's instant as a Julian day (UTC), or NULL when SQLite cannot read it."""
    number = sa.type_coerce(created_at, sa.Float)
    return sa.case(
        (sa.func.typeof(created_at).in_(("integer", "real")), _number_instant(number)),
        else_=_text_instant(created_at),
    )


def _sqlite_text(start: datetime) -> str:
    return start.isoformat(sep=" ", timespec="microseconds")


def dated_since(
    created_at: ColumnElement,
    dialect: str,
    start: datetime,
    until: datetime | None = None,
    own_form_only: bool = False,
) -> ColumnElement[bool]:
    """Rows whose instant is at or after ``start`` (naive UTC), and before ``until`` if given; never an undated
    row. ``own_form_only`` (SQLite, with ``until``): the caller knows every row of the window is text in Autopack's
    own form, whose text order is its time order: one index range a second wider than the window."""
    if dialect == "sqlite" and own_form_only and until is not None:
        instant = _sqlite_instant(created_at)
        as_text = sa.type_coerce(created_at, sa.String)
        near = as_text.between(
            (start - timedelta(seconds=1)).isoformat(sep=" ", timespec="seconds"),
            (until + timedelta(seconds=1)).isoformat(sep=" ", timespec="seconds"),
        )
        return sa.and_(
            near,
            instant >= sa.func.julianday(_sqlite_text(start)),
            instant < sa.func.julianday(_sqlite_text(until)),
        )
    if dialect == "sqlite":
        number = sa.type_coerce(created_at, sa.Float)
        as_text = sa.type_coerce(created_at, sa.String)
        unix = (start - datetime(1970, 1, 1)).total_seconds()
        julian = unix / 86400 + UNIX_EPOCH_JULIAN_DAY
        end = unix_end = None if until is None else (until - datetime(1970, 1, 1)).total_seconds()
        if unix_end is not None:
            end = unix_end / 86400 + UNIX_EPOCH_JULIAN_DAY
        first_text = (start - timedelta(days=1)).date().isoformat()
        # the index ranges that can hold a row of the period, one per form (SQLite orders numbers before text);
        # text may carry an offset of up to a day, so its range starts a day early (and ends a day late)
        ranges = sa.or_(
            number.between(julian - 1, JULIAN_DAY_LIMIT if end is None else min(end + 1, JULIAN_DAY_LIMIT)),
            number.between(unix - 1, UNIX_SECONDS_LIMIT if unix_end is None else unix_end + 1),
            number.between((unix - 1) * 1000, 1e300 if unix_end is None else (unix_end + 1) * 1000),
            as_text >= first_text
            if until is None
            else as_text.between(first_text, (until + timedelta(days=2)).date().isoformat()),
            as_text.between(str(int(unix) - 1), "2"),  # Unix seconds or milliseconds written as text
            as_text.between(" ", "/"),  # text led by spaces (a bound that stays text in a DATETIME column)
        )
        instant = _sqlite_instant(created_at)
        since = sa.and_(ranges, instant >= sa.func.julianday(_sqlite_text(start)))
        return since if until is None else sa.and_(since, instant < sa.func.julianday(_sqlite_text(until)))
    before = [] if until is None else [created_at < until]
    if dialect == "postgresql":
        return sa.and_(created_at >= start, sa.func.isfinite(created_at), *before)
    # MariaDB: a zero date sorts first, a date with day 00 just before the month's 1st
    return sa.and_(created_at >= start, *before)


def undated(created_at: ColumnElement, dialect: str) -> ColumnElement[bool]:
    """Rows whose instant cannot be known: in no period, counted apart."""
    if dialect == "sqlite":  # a value julianday() reads as it is (the usual row) has an instant: the full reading is
        # only for the rest (a number julianday() reads is below JULIAN_DAY_LIMIT, where the reading is julianday())
        return sa.and_(sa.func.julianday(created_at).is_(None), _sqlite_instant(created_at).is_(None))
    if dialect == "postgresql":  # three index lookups
        infinite = [sa.literal_column("'infinity'"), sa.literal_column("'-infinity'")]
        return sa.or_(created_at.is_(None), created_at.in_(infinite))
    if dialect in ("mysql", "mariadb"):  # two index lookups: NULL, and the zero dates of year 0
        return sa.or_(created_at.is_(None), created_at < sa.literal_column("'1000-01-01'"))
    return created_at.is_(None)


def group_key(column: ColumnElement, dialect: str) -> ColumnElement:
    """``column`` as a GROUP BY key that leaves the choice of index to the period's ``created_at`` ranges: SQLite
    would otherwise scan the whole table in the order of the column's own index to group without sorting (``+``, a
    no-op on the value, is SQLite's way of saying so)."""
    if dialect != "sqlite":
        return column
    return UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)


@functools.lru_cache(maxsize=64)
def utc_day(created_at: ColumnElement, dialect: str) -> ColumnElement:
    """The UTC calendar day of a dated row (``'YYYY-MM-DD'`` text on SQLite, a date elsewhere)."""
    if dialect == "sqlite":
        return sa.func.date(_sqlite_instant(created_at))
    if dialect in ("mysql", "mariadb"):  # a date with month or day 00 counts on the first day it names
        first_of_year = sa.func.makedate(sa.func.year(created_at), 1)
        months = sa.func.greatest(sa.func.month(created_at), 1) - 1
        days = sa.func.greatest(sa.func.dayofmonth(created_at), 1) - 1
        first_of_month = sa.func.timestampadd(sa.text("MONTH"), months, first_of_year)
        return sa.func.date(sa.func.timestampadd(sa.text("DAY"), days, first_of_month))
    return sa.func.date(created_at)


@functools.lru_cache(maxsize=64)
def utc_day_number(created_at: ColumnElement, dialect: str) -> ColumnElement[int]:
    """``utc_day`` as days since 1970-01-01 (the hourly aggregate's ``day``)."""
    day = utc_day(created_at, dialect)
    if dialect == "sqlite":
        return sa.cast(sa.func.julianday(day) - UNIX_EPOCH_JULIAN_DAY, sa.Integer)
    if dialect == "postgresql":
        return day - sa.literal_column("DATE '1970-01-01'")
    return sa.func.datediff(day, sa.literal_column("'1970-01-01'"))
