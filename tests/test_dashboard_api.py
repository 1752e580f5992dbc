"""``GET /dashboard/usage``: NULL-safe totals from the total_tokens column, on a database the real CLI made."""

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from app_client import app_client
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from uvicorn_app import serving

from autopack.config import RUN_TOKEN_CAP_ENV, UPSTREAM_RUN_TOKEN_CAP_ENV
from autopack.dashboard import PERIOD_DAYS, usage_by_model, usage_by_provider
from autopack.usage_recorder import UsageEventData, record_usage, utcnow
from legacy import build
from support import ROOT, alembic

MINUTE = timedelta(minutes=1)


@pytest.fixture
def client(engine, monkeypatch):
    for name in ("AUTOPACK_API_KEY", RUN_TOKEN_CAP_ENV, UPSTREAM_RUN_TOKEN_CAP_ENV):
        monkeypatch.delenv(name, raising=False)
    with app_client(engine) as client:
        yield client


def record(engine, *events):
    with Session(engine) as db:
        for provider, model, prompt, completion, total, age in events:
            # upstream's positional order: provider, model, run_id, phase_id, role, total_tokens, prompt, completion
            data = UsageEventData(
                provider, model, None, None, "builder", total, prompt, completion, created_at=utcnow() - age
            )
            record_usage(db, data)


MIXED = [
    # provider, model, prompt, completion, total, age
    ("anthropic", "claude-sonnet-4-5", 12_500, 3_200, None, timedelta(hours=1)),
    ("anthropic", "claude-sonnet-4-5", None, None, 5_000, timedelta(days=2)),
    ("openai", "gpt-4o", 8_400, 2_100, None, timedelta(hours=3)),
    ("openai", "gpt-4o-mini", None, None, 2_400, timedelta(days=6)),
    ("google", "gemini-2.5-pro", None, None, 18_500, timedelta(days=20)),
    ("google", "gemini-2.5-pro", 100, 50, None, timedelta(days=40)),
]


NO_UNDATED = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "events": 0}


def test_week_totals_count_total_only_events_in_full(engine, client):
    record(engine, *MIXED)
    response = client.get("/dashboard/usage?period=week")
    assert response.status_code == 200
    assert response.json() == {
        "providers": [
            {
                "provider": "anthropic",
                "period": "week",
                "prompt_tokens": 12_500,
                "completion_tokens": 3_200,
                "total_tokens": 20_700,
                "cap_tokens": 5_000_000,  # the default run token cap
                "percent_of_cap": pytest.approx(0.414),
                "events": 2,
            },
            {
                "provider": "openai",
                "period": "week",
                "prompt_tokens": 8_400,
                "completion_tokens": 2_100,
                "total_tokens": 12_900,
                "cap_tokens": 5_000_000,
                "percent_of_cap": pytest.approx(0.258),
                "events": 2,
            },
        ],
        "models": [
            {
                "provider": "anthropic",
                "model": "claude-sonnet-4-5",
                "prompt_tokens": 12_500,
                "completion_tokens": 3_200,
                "total_tokens": 20_700,
                "events": 2,
            },
            {
                "provider": "openai",
                "model": "gpt-4o",
                "prompt_tokens": 8_400,
                "completion_tokens": 2_100,
                "total_tokens": 10_500,
                "events": 1,
            },
            {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 2_400,
                "events": 1,
            },
        ],
        "undated": NO_UNDATED,
    }
    day = client.get("/dashboard/usage?period=day").json()
    assert [(p["provider"], p["total_tokens"]) for p in day["providers"]] == [("anthropic", 15_700), ("openai", 10_500)]
    month = client.get("/dashboard/usage?period=month").json()
    assert [(p["provider"], p["total_tokens"]) for p in month["providers"]] == [
        ("anthropic", 20_700),
        ("google", 18_500),
        ("openai", 12_900),
    ]


def test_period_boundaries_are_inclusive_at_the_start(engine):
    now = utcnow().replace(microsecond=0)  # MySQL's DATETIME keeps whole seconds
    with Session(engine) as db:  # written as the application writes them, so stored in its format
        for i, at in enumerate([now - timedelta(days=7), now - timedelta(days=7) - MINUTE, now - timedelta(days=1)]):
            record_usage(db, UsageEventData("openai", "gpt-4o", role="builder", total_tokens=10**i, created_at=at))
    with Session(engine) as db:
        assert [r["total_tokens"] for r in usage_by_provider(db, "week", now)] == [1 + 100]
        assert [r["total_tokens"] for r in usage_by_provider(db, "day", now)] == [100]
        assert [r["total_tokens"] for r in usage_by_model(db, "month", now)] == [111]


def test_an_empty_database_reports_no_usage(client):
    assert client.get("/dashboard/usage").json() == {"providers": [], "models": [], "undated": NO_UNDATED}


CAPS = [  # environment -> cap_tokens, and percent_of_cap of the week's anthropic (20,700) and openai (12,900) totals
    ({}, 5_000_000, [0.414, 0.258]),
    ({RUN_TOKEN_CAP_ENV: "100000"}, 100_000, [20.7, 12.9]),
    ({RUN_TOKEN_CAP_ENV: "15000"}, 15_000, [138.0, 86.0]),  # past the cap: over 100, not clamped
    ({RUN_TOKEN_CAP_ENV: "0"}, 0, [0.0, 0.0]),  # 0: no cap
    ({RUN_TOKEN_CAP_ENV: " 100000\n"}, 100_000, [20.7, 12.9]),  # a secrets file's newline
    ({UPSTREAM_RUN_TOKEN_CAP_ENV: "20000"}, 20_000, [103.5, 64.5]),  # upstream's name, when ours is unset
    ({RUN_TOKEN_CAP_ENV: "100000", UPSTREAM_RUN_TOKEN_CAP_ENV: "20000"}, 100_000, [20.7, 12.9]),  # ours wins
    ({RUN_TOKEN_CAP_ENV: "0", UPSTREAM_RUN_TOKEN_CAP_ENV: "20000"}, 0, [0.0, 0.0]),
]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(("environment", "cap", "percents"), CAPS)
def test_each_provider_is_measured_against_the_configured_run_token_cap(
    engine, client, monkeypatch, environment, cap, percents
):
    record(engine, *MIXED)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    response = client.get("/dashboard/usage?period=week")
    assert response.status_code == 200
    providers = response.json()["providers"]
    assert [(p["provider"], p["total_tokens"], p["cap_tokens"]) for p in providers] == [
        ("anthropic", 20_700, cap),
        ("openai", 12_900, cap),
    ]
    assert [p["percent_of_cap"] for p in providers] == [pytest.approx(percent) for percent in percents]
    assert all(isinstance(p["percent_of_cap"], float) for p in providers)
    keys = ["completion_tokens", "events", "model", "prompt_tokens", "provider", "total_tokens"]
    assert [sorted(m) for m in response.json()["models"]] == [keys] * 3  # models carry no cap, as upstream's


def cap_refused(name: str, raw: str) -> str:
    return (
        f"{name} must be a whole number of tokens from 0 (no cap) to 9223372036854775807, got {raw!r}: set it to "
        "e.g. 5000000, or unset it to use the default of 5,000,000."
    )


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("name", "raw"),
    [
        (RUN_TOKEN_CAP_ENV, "5M"),
        (RUN_TOKEN_CAP_ENV, "-1"),
        (RUN_TOKEN_CAP_ENV, "1.5"),
        (RUN_TOKEN_CAP_ENV, "5_000_000"),
        (RUN_TOKEN_CAP_ENV, "5,000,000"),
        (RUN_TOKEN_CAP_ENV, ""),  # set but empty: never silently the default
        (RUN_TOKEN_CAP_ENV, "\uff15"),  # a fullwidth digit, which int() would take
        (RUN_TOKEN_CAP_ENV, "9223372036854775808"),
        (RUN_TOKEN_CAP_ENV, "9" * 5_000),
        (UPSTREAM_RUN_TOKEN_CAP_ENV, "lots"),
    ],
    ids=["unit", "negative", "fraction", "underscores", "commas", "empty", "fullwidth", "too-big", "huge", "upstream"],
)
def test_a_run_token_cap_that_is_not_a_whole_number_is_a_500_naming_the_variable(
    engine, client, monkeypatch, name, raw
):
    record(engine, *MIXED)
    monkeypatch.setenv(name, raw)
    response = client.get("/dashboard/usage?period=week")
    assert response.status_code == 500
    assert response.json() == {"detail": cap_refused(name, raw)}
    assert client.get("/dashboard/usage?period=year").status_code == 400  # the period is still checked first


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_openapi_schema_names_the_usage_response_and_its_fields(client):
    schema = client.get("/openapi.json").json()
    ok = schema["paths"]["/dashboard/usage"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/UsageResponse"}
    models = schema["components"]["schemas"]
    assert models["UsageResponse"]["properties"]["providers"]["items"] == {"$ref": "#/components/schemas/ProviderUsage"}
    assert models["UsageResponse"]["properties"]["models"]["items"] == {"$ref": "#/components/schemas/ModelUsage"}
    provider = {
        name: field.get("type") or [choice["type"] for choice in field["anyOf"]]
        for name, field in models["ProviderUsage"]["properties"].items()
    }
    assert provider == {
        "provider": ["string", "null"],  # NULL in an adopted legacy table's rows
        "period": "string",
        "prompt_tokens": "integer",
        "completion_tokens": "integer",
        "total_tokens": "integer",
        "cap_tokens": "integer",
        "percent_of_cap": "number",
        "events": "integer",
    }
    assert set(models["ProviderUsage"]["required"]) == set(provider)
    assert list(models["ModelUsage"]["properties"]) == [
        "provider",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "events",
    ]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_documented_response_sample_is_what_the_api_answers(engine, client):
    page = (ROOT / "docs" / "application.md").read_text()
    section = page[page.index("## Run the API") :]
    sample = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    record(engine, ("google", "gemini-2.5-pro", None, None, 18_500, timedelta(hours=1)))
    assert client.get("/dashboard/usage?period=week").json() == sample


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_unknown_period_is_a_400_not_a_week(client):
    response = client.get("/dashboard/usage?period=year")
    assert response.status_code == 400
    assert response.json() == {"detail": "unknown period 'year': use one of day, week, month"}


def test_dashboard_after_a_real_upgrade_equals_the_token_sums_before_it(db_url, monkeypatch):
    build(db_url, "pre_build144", rows=[(12_500, 3_200, None), (0, 0, None), (7, 700, None), (1_000, 1, None)])
    engine = create_engine(db_url)
    with engine.begin() as connection:  # within the period: the legacy rows were written just now
        connection.execute(text("UPDATE llm_usage_events SET created_at = :now"), {"now": utcnow() - MINUTE})
        before = connection.execute(
            text("SELECT provider, SUM(prompt_tokens + completion_tokens) FROM llm_usage_events GROUP BY provider")
        ).all()
    alembic(db_url, "upgrade", "head")
    monkeypatch.delenv("AUTOPACK_API_KEY", raising=False)
    with app_client(engine) as client:
        providers = client.get("/dashboard/usage?period=day").json()["providers"]
    engine.dispose()
    assert {p["provider"]: p["total_tokens"] for p in providers} == dict(before)
    assert sum(p["total_tokens"] for p in providers) == 12_500 + 3_200 + 7 + 700 + 1_000 + 1


NOW = datetime(2025, 11, 1, 12, 0, 0)  # naive UTC
DAY_START, WEEK_START = NOW - timedelta(days=1), NOW - timedelta(days=7)
SECOND = timedelta(seconds=1)
AROUND_THE_BOUNDARIES = [  # (UTC instant, the offset it is given at, tokens): both sides of UTC, both sides of a start
    (DAY_START, -5, 1),  # 07:00-05:00: the first instant of the day window
    (DAY_START - SECOND, 9, 10),  # 20:59:59+09:00: one second before it
    (NOW - timedelta(hours=1), 5.5, 100),
    (WEEK_START, 9, 1_000),
    (WEEK_START - SECOND, -5, 10_000),
]


def test_period_windows_are_utc_whatever_offset_created_at_was_given_at(engine):
    with Session(engine) as db:
        for instant, hours, tokens in AROUND_THE_BOUNDARIES:
            offset = timezone(timedelta(hours=hours))
            at = instant.replace(tzinfo=UTC).astimezone(offset)
            record_usage(db, UsageEventData("openai", "gpt-4o", role="builder", total_tokens=tokens, created_at=at))
    with Session(engine) as db:
        for now in (NOW, NOW.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=-5)))):
            totals = {period: [r["total_tokens"] for r in usage_by_provider(db, period, now)] for period in PERIOD_DAYS}
            assert totals == {"day": [1 + 100], "week": [1 + 10 + 100 + 1_000], "month": [11_111]}


def test_the_served_day_is_the_last_24_hours_in_utc(engine, db_url):
    with Session(engine) as db:
        for provider, age, hours in [("inside", timedelta(hours=23), -5), ("outside", timedelta(hours=25), 9)]:
            at = (utcnow() - age).replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=hours)))
            record_usage(db, UsageEventData(provider, "m", role="builder", total_tokens=7, created_at=at))
    with serving(db_url, None) as client:
        response = client.get("/dashboard/usage?period=day")
        assert response.status_code == 200
        assert [(p["provider"], p["total_tokens"]) for p in response.json()["providers"]] == [("inside", 7)]
