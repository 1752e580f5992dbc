"""The tree's one backfill rule (``backfill_rule``), evaluated by a database, agrees with the tests' own oracle.

The tests' expectations (``legacy.expected_total``) stay an independent Python statement of the runbook's
rule; this holds the SQL the revisions run (the restore's ``new_total``, the batches' ``NEEDS_TOTAL`` and
``split_sum``) to it, on values an operator's table can hold.
"""

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from autopack.migrations.build144.backfill_rule import NEEDS_TOTAL, new_total, split_sum
from autopack.migrations.build144.usage_table import completion, events, prompt, total
from legacy import expected_total

split = st.none() | st.integers(min_value=0, max_value=2**30)
stored_total = st.just(0) | st.integers(min_value=-(2**31), max_value=2**31 - 1)


@settings(max_examples=300, deadline=None)
@given(p=split, c=split, t=stored_total)
def test_the_sql_rule_is_the_runbooks_rule(p, c, t):
    engine = sa.create_engine("sqlite://")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE llm_usage_events (id INTEGER PRIMARY KEY, prompt_tokens INTEGER, "
            "completion_tokens INTEGER, total_tokens INTEGER NOT NULL)"
        )
        connection.execute(events.insert().values(id=1, prompt_tokens=p, completion_tokens=c, total_tokens=t))
        rule = connection.execute(sa.select(new_total(total, prompt, completion))).scalar_one()
        connection.execute(events.update().where(NEEDS_TOTAL).values(total_tokens=split_sum))
        backfilled = connection.execute(sa.select(total)).scalar_one()
    assert rule == backfilled == expected_total(p, c, t)
