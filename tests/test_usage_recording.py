"""Recording exact-split and total-only usage: what is stored, and bad input refused with nothing written."""

import os
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from autopack.models import LlmUsageEvent
from autopack.usage_recorder import (
    UsageEventData,
    record_exact_usage,
    record_total_only_usage,
    record_usage,
    record_usage_total_only,
)
from support import ROOT, alembic


@pytest.fixture
def db(db_url):
    alembic(db_url, "upgrade", "head")
    engine = create_engine(db_url)
    with Session(engine) as session:
        yield session
    engine.dispose()


def stored(db):
    return db.execute(
        select(
            LlmUsageEvent.provider,
            LlmUsageEvent.prompt_tokens,
            LlmUsageEvent.completion_tokens,
            LlmUsageEvent.total_tokens,
        ).order_by(LlmUsageEvent.id)
    ).all()


def test_exact_and_total_only_events_are_stored_as_reported(db):
    record_exact_usage(
        db,
        provider="anthropic",
        model="claude-sonnet-4-5",
        role="builder",
        prompt_tokens=12_500,
        completion_tokens=3_200,
    )
    record_total_only_usage(db, provider="google", model="gemini-2.5-pro", role="auditor", total_tokens=18_500)
    record_usage(db, UsageEventData("openai", "gpt-4o", role="builder", prompt_tokens=0, completion_tokens=0))
    record_usage(
        db,
        UsageEventData(
            "openai",
            "gpt-4o",
            role="builder",
            prompt_tokens=8_400,
            completion_tokens=2_100,
            total_tokens=10_500,
            run_id="run-1",
            is_doctor_call=True,
        ),
    )
    assert stored(db) == [
        ("anthropic", 12_500, 3_200, 15_700),
        ("google", None, None, 18_500),
        ("openai", 0, 0, 0),
        ("openai", 8_400, 2_100, 10_500),
    ]
    doctor = db.scalars(select(LlmUsageEvent).where(LlmUsageEvent.run_id == "run-1")).one()
    assert doctor.is_doctor_call is True and doctor.created_at is not None


BAD = [
    (dict(prompt_tokens=-1, completion_tokens=5), "prompt_tokens must be a non-negative integer or None, got -1"),
    (dict(total_tokens=-10), "total_tokens must be a non-negative integer or None, got -10"),
    (dict(prompt_tokens=1.5, completion_tokens=2), "prompt_tokens must be a non-negative integer or None, got 1.5"),
    (dict(prompt_tokens=True, completion_tokens=2), "prompt_tokens must be a non-negative integer or None, got True"),
    (
        dict(prompt_tokens=100, completion_tokens=50, total_tokens=160),
        "total_tokens=160 disagrees with prompt_tokens + completion_tokens = 150",
    ),
    (dict(prompt_tokens=100), "give both prompt_tokens and completion_tokens, or neither"),
    (dict(completion_tokens=100, total_tokens=300), "give both prompt_tokens and completion_tokens, or neither"),
    (dict(), "no tokens given"),
    (dict(total_tokens=0), "a total-only event needs total_tokens > 0"),
    (dict(provider="", total_tokens=5), "provider must be a non-empty string"),
    (dict(model="  ", total_tokens=5), "model must be a non-empty string"),
    (dict(role=None, total_tokens=5), "role must be a non-empty string"),
    (dict(run_id=7, total_tokens=5), "run_id must be a string or None, got 7"),
    (dict(phase_id=8_400, total_tokens=5), "phase_id must be a string or None, got 8400"),
    (dict(is_doctor_call="no", total_tokens=5), "is_doctor_call must be True or False, got 'no'"),
    (dict(is_doctor_call=2, total_tokens=5), "is_doctor_call must be True or False, got 2"),
    (dict(doctor_model=5, total_tokens=5), "doctor_model must be a string or None, got 5"),
]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(("values", "message"), BAD)
def test_bad_input_is_refused_and_nothing_is_written(db, values, message):
    data = {"provider": "openai", "model": "gpt-4o", "role": "builder", **values}
    with pytest.raises(ValueError, match="^" + message.replace("+", r"\+").replace("(", r"\(").replace(")", r"\)")):
        record_usage(db, UsageEventData(**data))
    db.rollback()
    assert db.scalar(select(func.count()).select_from(LlmUsageEvent)) == 0


def test_total_only_recording_refuses_a_guess(db):
    with pytest.raises(TypeError):
        record_total_only_usage(db, provider="openai", model="gpt-4o", role="builder")  # no total: no event
    assert db.scalar(select(func.count()).select_from(LlmUsageEvent)) == 0


def stored_in_full(url):
    """Every column an event's caller gives, as a fresh connection reads them back from the database."""
    engine = create_engine(url)
    with Session(engine) as db:
        e = LlmUsageEvent
        columns = (e.provider, e.model, e.run_id, e.phase_id, e.role, e.total_tokens, e.prompt_tokens)
        doctor = (e.completion_tokens, e.is_doctor_call, e.doctor_model, e.doctor_action)
        rows = [tuple(row) for row in db.execute(select(*columns, *doctor).order_by(e.id))]
    engine.dispose()
    return rows


UPSTREAM_CALLS = [  # positional, as upstream Autopack's callers build them
    # provider, model, run_id, phase_id, role, total_tokens, prompt_tokens, completion_tokens[, doctor fields]
    ("openai", "gpt-4o", "run-1", "ph-1", "builder", 1_500, None, None),
    ("anthropic", "claude-sonnet-4-5", "run-1", "ph-2", "auditor", 15_700, 12_500, 3_200),
    ("anthropic", "claude-haiku-4-5", "run-2", None, "doctor", 900, 600, 300, True, "cheap", "retry_with_fix"),
    ("google", "gemini-2.5-pro", None, None, "builder", 18_500, None, None),
]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_upstream_positional_and_keyword_calls_store_the_numbers_they_mean(db, db_url):
    for call in UPSTREAM_CALLS:
        record_usage(db, UsageEventData(*call))
    record_usage(  # upstream's keywords, all eight required there
        db,
        UsageEventData(
            provider="openai",
            model="gpt-4o-mini",
            run_id="run-3",
            phase_id="ph-9",
            role="builder",
            total_tokens=2_400,
            prompt_tokens=2_000,
            completion_tokens=400,
            is_doctor_call=False,
        ),
    )
    record_usage_total_only(  # upstream's service.usage_recording name and keywords
        db, provider="openai", model="text-embedding-3-small", role="embedding", total_tokens=42, run_id="run-3"
    )
    assert stored_in_full(db_url) == [
        ("openai", "gpt-4o", "run-1", "ph-1", "builder", 1_500, None, None, False, None, None),
        ("anthropic", "claude-sonnet-4-5", "run-1", "ph-2", "auditor", 15_700, 12_500, 3_200, False, None, None),
        ("anthropic", "claude-haiku-4-5", "run-2", None, "doctor", 900, 600, 300, True, "cheap", "retry_with_fix"),
        ("google", "gemini-2.5-pro", None, None, "builder", 18_500, None, None, False, None, None),
        ("openai", "gpt-4o-mini", "run-3", "ph-9", "builder", 2_400, 2_000, 400, False, None, None),
        ("openai", "text-embedding-3-small", "run-3", None, "embedding", 42, None, None, False, None, None),
    ]


ORDER = (
    "(UsageEventData's positional order is upstream Autopack's: provider, model, run_id, phase_id, role, "
    "total_tokens, prompt_tokens, completion_tokens)"
)
OLD_ORDER_CALLS = [  # written for this project's earlier order: provider, model, role, prompt, completion, total, ...
    (("openai", "gpt-4o", "builder", 8_400, 2_100, 10_500), {}, f"role must be a non-empty string, got 2100 {ORDER}"),
    (("openai", "gpt-4o", "builder", 8_400, 2_100), {"run_id": "run-1"}, "got multiple values for argument 'run_id'"),
    (("openai", "gpt-4o", "builder", None, None, 18_500), {}, f"role must be a non-empty string, got None {ORDER}"),
    (("openai", "gpt-4o", "builder"), {"total_tokens": 5}, f"role must be a non-empty string, got None {ORDER}"),
    (
        ("openai", "gpt-4o", "builder", 0, 0, 0, "run-1", "ph-1"),
        {},
        f"role must be a non-empty string, got 0 {ORDER}",
    ),
]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(("args", "kwargs", "message"), OLD_ORDER_CALLS)
def test_a_call_in_the_old_positional_order_is_refused_not_stored_misread(db, db_url, args, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)) as refused:
        record_usage(db, UsageEventData(*args, **kwargs))
    assert refused.type is (TypeError if "multiple values" in message else ValueError)
    assert stored_in_full(db_url) == []


def test_the_documented_recording_example_runs_as_written(db_url):
    page = (ROOT / "docs" / "application.md").read_text()
    example = re.search(r"## Record usage\n.*?```python\n(.*?)```", page, re.S).group(1)
    alembic(db_url, "upgrade", "head")
    env = {**os.environ, "DATABASE_URL": db_url.render_as_string(hide_password=False)}
    result = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    engine = create_engine(db_url)
    with Session(engine) as db:
        assert stored(db) == [
            ("anthropic", 12_500, 3_200, 15_700),
            ("google", None, None, 18_500),
            ("openai", 8_400, 2_100, 10_500),
        ]
    engine.dispose()
    positional = stored_in_full(db_url)[2]  # the example's UsageEventData, in upstream's positional order
    assert positional == ("openai", "gpt-4o", "run-1", "ph-1", "builder", 10_500, 8_400, 2_100, False, None, None)


def non_utc_session_engine(db_url):
    """An engine whose sessions run at +09:00, as an operator's server may: what is stored must not depend on it."""
    if db_url.get_backend_name() == "postgresql":
        return create_engine(db_url, connect_args={"options": "-c TimeZone=Asia/Tokyo"})
    if db_url.get_backend_name() in ("mysql", "mariadb"):
        return create_engine(db_url, connect_args={"init_command": "SET time_zone = '+09:00'"})
    return create_engine(db_url)


def zone(hours: float) -> timezone:
    return timezone(timedelta(hours=hours))


# created_at as given -> stored (naive UTC); offsets on both sides of UTC, and across midnight and a year
CREATED_AT = [
    (datetime(2025, 11, 3, 8, 13, tzinfo=zone(-5)), datetime(2025, 11, 3, 13, 13)),
    (datetime(2025, 11, 3, 22, 30, tzinfo=zone(9)), datetime(2025, 11, 3, 13, 30)),
    (datetime(2025, 11, 3, 2, 0, tzinfo=zone(5.5)), datetime(2025, 11, 2, 20, 30)),
    (datetime(2025, 12, 31, 23, 30, tzinfo=zone(-1)), datetime(2026, 1, 1, 0, 30)),
    (datetime(2025, 11, 3, 12, 0, tzinfo=UTC), datetime(2025, 11, 3, 12, 0)),
    (datetime(2025, 11, 3, 12, 0), datetime(2025, 11, 3, 12, 0)),  # naive: taken as UTC
]


def test_created_at_is_stored_in_utc_whatever_its_offset_or_the_session_time_zone(db_url):
    alembic(db_url, "upgrade", "head")
    engine = non_utc_session_engine(db_url)
    with Session(engine) as db:
        for given, _ in CREATED_AT:
            record_usage(db, UsageEventData("openai", "gpt-4o", role="builder", total_tokens=1, created_at=given))
        db.add(LlmUsageEvent(provider="orm", model="m", role="r", total_tokens=1, created_at=CREATED_AT[0][0]))
        db.commit()
    with Session(create_engine(db_url)) as db:  # read back from a UTC session too
        stored_at = db.scalars(select(LlmUsageEvent.created_at).order_by(LlmUsageEvent.id)).all()
        assert stored_at == [utc for _, utc in CREATED_AT] + [CREATED_AT[0][1]]
        assert all(at.tzinfo is None for at in stored_at)
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("created_at", ["2025-11-03 08:13", date(2025, 11, 3), 1_762_157_580])
def test_a_created_at_that_is_not_a_datetime_is_refused(db, created_at):
    with pytest.raises(ValueError, match=r"^created_at must be a datetime \(aware, or naive UTC\) or None, got "):
        record_usage(db, UsageEventData("openai", "gpt-4o", role="builder", total_tokens=5, created_at=created_at))
    assert db.scalar(select(func.count()).select_from(LlmUsageEvent)) == 0


LIMIT = "2147483647, the most an INTEGER column holds on any engine: check the figure the provider reported"
OVERFLOWING = [
    (dict(total_tokens=3_000_000_000), f"total_tokens=3000000000 is more than {LIMIT}"),
    (dict(total_tokens=2**63), f"total_tokens=9223372036854775808 is more than {LIMIT}"),
    (dict(prompt_tokens=2**31, completion_tokens=0), f"prompt_tokens=2147483648 is more than {LIMIT}"),
    (dict(prompt_tokens=0, completion_tokens=2**40), f"completion_tokens=1099511627776 is more than {LIMIT}"),
    (
        dict(prompt_tokens=2**30, completion_tokens=2**30),
        f"prompt_tokens + completion_tokens = 2147483648 is more than {LIMIT}",
    ),
    (
        dict(prompt_tokens=2**30, completion_tokens=2**30, total_tokens=2**31),
        f"total_tokens=2147483648 is more than {LIMIT}",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"), OVERFLOWING, ids=["total", "total-2**63", "prompt", "completion", "sum", "total-and-sum"]
)
def test_counts_the_integer_columns_cannot_hold_are_refused_alike_on_every_engine(db, values, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        record_usage(db, UsageEventData("openai", "gpt-4o", role="builder", **values))
    assert db.scalar(select(func.count()).select_from(LlmUsageEvent)) == 0
    record_total_only_usage(db, provider="google", model="gemini-2.5-pro", role="builder", total_tokens=18_500)
    assert stored(db) == [("google", None, None, 18_500)]


def test_counts_at_the_integer_limit_are_stored_exactly(db):
    record_total_only_usage(db, provider="a", model="m", role="builder", total_tokens=2**31 - 1)
    record_exact_usage(db, provider="b", model="m", role="builder", prompt_tokens=2**31 - 2, completion_tokens=1)
    assert stored(db) == [("a", None, None, 2**31 - 1), ("b", 2**31 - 2, 1, 2**31 - 1)]


def test_a_failed_commit_is_rolled_back_and_the_session_records_the_next_event(db):
    engine = db.get_bind()
    with engine.begin() as connection:  # the table is gone for a moment, as in a botched maintenance
        connection.execute(text("ALTER TABLE llm_usage_events RENAME TO llm_usage_events_away"))
    with pytest.raises(DBAPIError):
        record_total_only_usage(db, provider="lost", model="m", role="builder", total_tokens=1)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE llm_usage_events_away RENAME TO llm_usage_events"))
    record_total_only_usage(db, provider="google", model="gemini-2.5-pro", role="builder", total_tokens=18_500)
    assert stored(db) == [("google", None, None, 18_500)]
