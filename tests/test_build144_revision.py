"""The BUILD-144 revision on data: rows seeded with plain SQL at 0001, checked row by row after each step."""

import pytest
from sqlalchemy import exc, inspect, text

from support import event_row, insert_events

BIG = 1_000_000_000  # the sum of two of these still fits a 32-bit INTEGER (PostgreSQL's int4)

SEED = [
    # (prompt, completion) at the pre-BUILD-144 schema, where both are NOT NULL
    (12_500, 3_200),
    (0, 0),
    (0, 700),
    (900, 0),
    (BIG, BIG - 1),
    (1, 1),
]


OTHER_COLUMNS = "provider, model, run_id, phase_id, role, created_at, is_doctor_call, doctor_model, doctor_action"


def rows(connection, columns="prompt_tokens, completion_tokens, total_tokens"):
    return connection.execute(text(f"SELECT id, {columns} FROM llm_usage_events ORDER BY id")).all()


def seed_at_baseline(alembic_runner, alembic_engine, extra=()):
    alembic_runner.migrate_up_to("0001")
    seed = [*SEED, *extra]
    with alembic_engine.begin() as connection:
        insert_events(connection, [event_row(i, prompt_tokens=p, completion_tokens=c) for i, (p, c) in enumerate(seed)])
    return seed


def test_upgrade_backfills_every_row_with_the_sum_of_its_splits(alembic_runner, alembic_engine):
    seed = seed_at_baseline(alembic_runner, alembic_engine)
    alembic_runner.migrate_up_one()
    with alembic_engine.connect() as connection:
        got = rows(connection)
    assert [(p, c, t) for _, p, c, t in got] == [(p, c, p + c) for p, c in seed]


def test_upgrade_makes_splits_nullable_and_total_not_null_default_0(alembic_runner, alembic_engine):
    seed_at_baseline(alembic_runner, alembic_engine)
    alembic_runner.migrate_up_one()
    with alembic_engine.begin() as connection:
        # total-only rows are accepted, and an insert that names no total gets 0 from the server default
        insert_events(
            connection,
            [
                event_row(100, prompt_tokens=None, completion_tokens=None, total_tokens=18_500),
                event_row(101, prompt_tokens=5, completion_tokens=7),
            ],
        )
        got = rows(connection)[-2:]
    assert [(p, c, t) for _, p, c, t in got] == [(None, None, 18_500), (5, 7, 0)]
    with pytest.raises(exc.IntegrityError), alembic_engine.begin() as connection:
        insert_events(connection, [event_row(102, prompt_tokens=1, completion_tokens=1, total_tokens=None)])


def test_baseline_rejects_null_splits(alembic_runner, alembic_engine):
    alembic_runner.migrate_up_to("0001")
    with pytest.raises(exc.IntegrityError), alembic_engine.begin() as connection:
        insert_events(connection, [event_row(0, prompt_tokens=None, completion_tokens=5)])


def test_downgrade_restores_the_baseline_schema_and_keeps_split_rows(alembic_runner, alembic_engine):
    seed = seed_at_baseline(alembic_runner, alembic_engine)
    alembic_runner.migrate_up_one()
    alembic_runner.migrate_down_one()
    assert alembic_runner.current == "0001"
    with alembic_engine.connect() as connection:
        columns = {c["name"]: c for c in inspect(connection).get_columns("llm_usage_events")}
        got = rows(connection, "prompt_tokens, completion_tokens")
        indexes = {i["name"] for i in inspect(connection).get_indexes("llm_usage_events")}
    assert "total_tokens" not in columns
    assert [(p, c) for _, p, c in got] == seed
    baseline = ("id", "provider", "model", "run_id", "created_at", "is_doctor_call")  # kept: the old schema's
    assert indexes == {f"ix_llm_usage_events_{c}" for c in baseline}
    with pytest.raises(exc.IntegrityError), alembic_engine.begin() as connection:
        insert_events(connection, [event_row(200, prompt_tokens=None, completion_tokens=5)])


def test_downgrade_writes_zero_for_null_splits_and_upgrade_brings_them_back(alembic_runner, alembic_engine):
    seed_at_baseline(alembic_runner, alembic_engine)
    alembic_runner.migrate_up_one()
    with alembic_engine.begin() as connection:
        insert_events(
            connection,
            [
                event_row(300, prompt_tokens=None, completion_tokens=None, total_tokens=2_400),
                event_row(301, prompt_tokens=40, completion_tokens=None, total_tokens=40),
            ],
        )
        before = rows(connection)
    alembic_runner.migrate_down_one()
    with alembic_engine.connect() as connection:
        downgraded = rows(connection, "prompt_tokens, completion_tokens")
    assert [(p, c) for _, p, c in downgraded[-2:]] == [(0, 0), (40, 0)]
    alembic_runner.migrate_up_one()
    with alembic_engine.connect() as connection:
        assert rows(connection) == before


def test_every_column_and_index_survives_both_directions(alembic_runner, alembic_engine):
    seed_at_baseline(alembic_runner, alembic_engine)
    with alembic_engine.connect() as connection:
        before = rows(connection, OTHER_COLUMNS)
    alembic_runner.migrate_up_one()
    with alembic_engine.connect() as connection:
        assert rows(connection, OTHER_COLUMNS) == before
    alembic_runner.migrate_down_one()
    with alembic_engine.connect() as connection:
        assert rows(connection, OTHER_COLUMNS) == before
