"""BUILD-144's rule, written once: which rows need a total, what the total becomes, and how the table is counted.

The rule: a total already there stays (on a total-only row it is the only record of that usage); a total of 0
beside a split becomes ``COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)``. The batched UPDATE,
the offline scripts, the restore of set-aside rows, ``verify`` and the tests' expectations all use these
expressions; the online fill trigger is its PL/pgSQL and MariaDB twin (``fill_trigger``).
"""

import sqlalchemy as sa

from autopack.event_time import undated
from autopack.migrations.build144.usage_table import completion, events, prompt, total

RULE = (
    "total_tokens = COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0) "
    "where total_tokens was 0 and a split is set (non-zero totals untouched)"
)


def sum_of(prompt_tokens: sa.ColumnElement, completion_tokens: sa.ColumnElement) -> sa.ColumnElement[int]:
    """The splits' sum, a NULL split counting as 0."""
    return sa.func.coalesce(prompt_tokens, 0) + sa.func.coalesce(completion_tokens, 0)


def new_total(old_total, prompt_tokens, completion_tokens) -> sa.ColumnElement[int]:
    """THE backfill rule: a total already there stays; a total of 0 becomes the sum of the splits (NULL as 0)."""
    return sa.case((old_total == 0, sum_of(prompt_tokens, completion_tokens)), else_=old_total)


split_sum = sum_of(prompt, completion)
# the same sum in 64 bits, for reading: on PostgreSQL an int4 + int4 past 2^31 is an error, not a number
wide_split_sum = sa.cast(sa.func.coalesce(prompt, 0), sa.BigInteger) + sa.cast(
    sa.func.coalesce(completion, 0), sa.BigInteger
)
# The rows the rule changes: a split is set, the total is 0, and the splits do not sum to 0 either.
NEEDS_TOTAL = sa.and_(total == 0, split_sum != 0)
EXACT = sa.Numeric(40, 0)  # holds any sum of two 64-bit splits on every engine
# the same sum in NUMERIC, for checking: exact whatever width an operator gave the splits, never an overflow
exact_split_sum = sa.cast(sa.func.coalesce(prompt, 0), EXACT) + sa.cast(sa.func.coalesce(completion, 0), EXACT)


def not_their_sum(stored: sa.ColumnElement) -> sa.ColumnElement[bool]:
    """A split is set and ``stored`` is not the splits' sum: what verify's "totals match their splits" counts and
    ``repair-totals`` repairs."""
    return sa.and_(sa.or_(prompt.is_not(None), completion.is_not(None)), stored != exact_split_sum)


def lost_usage_warning(rows: int) -> str:
    """The warning the upgrade's report and ``verify`` give for rows no migration can recover."""
    return (
        f"{rows} rows have both splits NULL and total_tokens 0: their usage was lost before this migration "
        "and cannot be recovered"
    )


def undated_warning(rows: int) -> str:
    """The warning the upgrade's report and ``verify`` give for rows whose created_at gives no instant."""
    return (
        f"{rows} rows have a created_at that gives no time (NULL, or a value the database cannot read as one): "
        "they are in no dashboard period, and the dashboard counts them under 'undated'"
    )


def survey(*, verify: bool = False, dialect: str | None = None, proving: bool = False) -> sa.Select:
    """One scan of the table (which has total_tokens) for what the upgrade reports (``verify=False``) or what
    ``verify`` checks (``verify=True``); each count is defined once, in ``counts``.

    Report: rows, exact (both splits set), total_only (both NULL, a positive total after the
    rule), token_sum (after the rule), lost (both NULL, total 0). Verify: rows, total_only, lost, and, as stored,
    positive (total > 0), unfilled (rows the rule would still change), mismatched (a split set and the total not
    their sum, unfilled rows included) and malformed (both splits NULL and a negative total). Verify adds the
    splits as NUMERIC, so no split an operator widened can overflow the check; the report adds them only where
    the rule would (a total of 0), as the backfill itself does. Given the ``dialect``, both also count ``undated``:
    rows whose created_at gives no instant (``autopack.event_time``).
    ``proving``, the report's scan after the change counts ``left``: rows the rule would still change (the proof
    that the backfill is complete, in the same scan); once it is, the totals after the rule are the stored ones,
    which the report then reads as they are."""
    stored = total
    totals = stored if proving else sa.case((stored == 0, wide_split_sum), else_=sa.cast(stored, sa.BigInteger))
    both_null = sa.and_(prompt.is_(None), completion.is_(None))

    def count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.count(sa.case((condition, 1)))  # the rows where it holds (never NULL, 0 on an empty table)

    counts = {
        "rows": sa.func.count(),
        "exact": count(sa.and_(prompt.is_not(None), completion.is_not(None))),
        "total_only": count(sa.and_(both_null, totals > 0)),
        "token_sum": sa.func.coalesce(sa.func.sum(totals), 0),
        "lost": count(sa.and_(both_null, totals == 0)),
        "positive": count(stored > 0),
        "unfilled": count(sa.and_(stored == 0, exact_split_sum != 0)),
        "mismatched": count(not_their_sum(stored)),
        "malformed": count(sa.and_(both_null, stored < 0)),
    }
    names = VERIFY_COUNTS if verify else REPORT_COUNTS
    if dialect is not None:
        counts["undated"] = count(undated(events.c.created_at, dialect))
        names += ("undated",)
    if proving:
        counts["left"] = count(NEEDS_TOTAL)
        names += ("left",)
    return sa.select(*(counts[name].label(name) for name in names)).select_from(events)


def overflowing(has_total: bool, limit: int) -> sa.ColumnElement[bool]:
    """The rows whose total the rule would write past ``limit`` (either sign): a total of 0 (or none yet) beside
    splits whose sum does not fit."""
    needs = total == 0 if has_total else sa.true()
    return sa.and_(needs, sa.not_(wide_split_sum.between(-limit - 1, limit)))  # the sum computed once


def before_the_change(has_total: bool, overflow_limit: int) -> sa.Select:
    """The upgrade's one scan before any change: rows, first and last id (the backfill's batches), and
    ``overflowing``, the rows whose total the rule would write past ``overflow_limit`` (the preflight check names
    them only when there are some)."""
    ids = sa.select(events.c.id).order_by(events.c.id)  # each end read from the primary key, not in the scan
    return sa.select(
        sa.func.count().label("rows"),
        ids.limit(1).scalar_subquery().label("first"),
        ids.order_by(None).order_by(events.c.id.desc()).limit(1).scalar_subquery().label("last"),
        sa.func.count(sa.case((overflowing(has_total, overflow_limit), 1))).label("overflowing"),
    ).select_from(events)


KEPT_SURVEY = "build144_report_survey"  # connection.info: a survey of the table as the report will find it


def keep_survey(bind: sa.Connection, found: sa.Row) -> None:
    """Keep a survey(proving=True) row made after the last change to the rows, for the report to use instead of a
    scan of its own (MariaDB's one-copy ALTER counts what it filled in the same scan)."""
    bind.info[KEPT_SURVEY] = found


def kept_survey(bind: sa.Connection) -> sa.Row | None:
    """The survey ``keep_survey`` kept on this connection, taken (once), or None."""
    return bind.info.pop(KEPT_SURVEY, None)


REPORT_COUNTS = ("rows", "exact", "total_only", "token_sum", "lost")
VERIFY_COUNTS = ("rows", "total_only", "lost", "positive", "unfilled", "mismatched", "malformed")
