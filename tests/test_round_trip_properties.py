"""Property: for any mix of rows in any legacy state, the upgrade keeps every token and up -> down -> up is the
identity. Hypothesis draws the rows; each example gets a new database and runs the real migrations."""

import pytest
from alembic import command
from alembic.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from autopack.migrations.runtime.connection import migration_engine
from legacy import STATES, build, expected_total
from support import ROOT

TOKENS = st.integers(min_value=0, max_value=1_000_000_000)  # two of them still sum inside a 32-bit INTEGER
SOMETIMES_ZERO = st.one_of(st.just(0), TOKENS)
MAYBE = st.one_of(st.none(), SOMETIMES_ZERO)
ROW = {
    "pre_build144": st.tuples(SOMETIMES_ZERO, SOMETIMES_ZERO, st.none()),
    "splits_nullable": st.tuples(MAYBE, MAYBE, st.none()),
    "old_script": st.tuples(SOMETIMES_ZERO, SOMETIMES_ZERO, st.one_of(st.just(0), st.integers(1, 2_000_000_000))),
    "create_all_build144": st.tuples(MAYBE, MAYBE, st.one_of(st.just(0), st.integers(1, 2_000_000_000))),
}


def migrate(url, direction, target):
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["configure_logger"] = False
    engine = migration_engine(url, busy_timeout_s=5, lock_timeout="10s")
    config.attributes["connection"] = engine
    try:
        getattr(command, direction)(config, target)
    finally:
        engine.dispose()


def events(url):
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            result = connection.execute(text("SELECT * FROM llm_usage_events ORDER BY id"))
            return [dict(r._mapping) for r in result]
    finally:
        engine.dispose()


@pytest.mark.parametrize("state", STATES)
def test_upgrade_keeps_every_token_and_round_trip_is_identity(new_database, state):
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(rows=st.lists(ROW[state], min_size=1, max_size=12))
    def check(rows):
        url = new_database()
        build(url, state, rows)
        legacy = events(url)

        migrate(url, "upgrade", "head")
        upgraded = events(url)
        assert [(r["prompt_tokens"], r["completion_tokens"]) for r in upgraded] == [
            (r["prompt_tokens"], r["completion_tokens"]) for r in legacy
        ]
        assert [r["total_tokens"] for r in upgraded] == [
            expected_total(r["prompt_tokens"], r["completion_tokens"], r.get("total_tokens")) for r in legacy
        ]

        migrate(url, "downgrade", "0001")
        migrate(url, "upgrade", "head")
        assert events(url) == upgraded

    check()
