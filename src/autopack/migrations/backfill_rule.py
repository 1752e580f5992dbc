"""BUILD-144's rule, written once: which rows need a total, what the total becomes, and how the table is counted.

The rule: a total already there stays (on a total-only row it is the only record of that usage); a total of 0
beside a split becomes ``COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)``. The batched UPDATE,
the offline scripts, the restore of set-aside rows, ``verify`` and the tests' expectations all use these
expressions; the online trigger is its PL/pgSQL twin (``online_backfill.FILL_TOTAL_FUNCTION``).
"""

import sqlalchemy as sa

from autopack.migrations.usage_table import completion, events, prompt, total

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


def lost_usage_warning(rows: int) -> str:
    """The warning the upgrade's report and ``verify`` give for rows no migration can recover."""
    return (
        f"{rows} rows have both splits NULL and total_tokens 0: their usage was lost before this migration "
        "and cannot be recovered"
    )


def survey(has_total: bool = True) -> sa.Select:
    """One scan for everything the upgrade reports and batches by and ``verify`` checks, with the rule applied
    to the totals (a table without ``total_tokens`` yet reads as all totals 0).

    rows, first and last id; exact (both splits set); total_only (both NULL, a positive total); token_sum;
    lost (both NULL, total 0); and, as stored: positive (total > 0), unfilled (rows the rule would still change),
    mismatched (a split set and the total not their sum, unfilled rows included) and malformed (both splits
    NULL and a negative total)."""
    stored = total if has_total else sa.literal(0)
    totals = sa.case((stored == 0, wide_split_sum), else_=sa.cast(stored, sa.BigInteger))
    both_null = sa.and_(prompt.is_(None), completion.is_(None))

    def count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    return sa.select(
        sa.func.count().label("rows"),
        sa.func.min(events.c.id).label("first"),
        sa.func.max(events.c.id).label("last"),
        count(sa.and_(prompt.is_not(None), completion.is_not(None))).label("exact"),
        count(sa.and_(both_null, totals > 0)).label("total_only"),
        sa.func.coalesce(sa.func.sum(totals), 0).label("token_sum"),
        count(sa.and_(both_null, totals == 0)).label("lost"),
        count(stored > 0).label("positive"),
        count(sa.and_(stored == 0, wide_split_sum != 0)).label("unfilled"),
        count(sa.and_(sa.not_(both_null), stored != wide_split_sum)).label("mismatched"),
        count(sa.and_(both_null, stored < 0)).label("malformed"),
    ).select_from(events)
