"""``GET /dashboard``: the page (no data, no key) and ``/dashboard/usage/breakdown`` (the key-protected JSON it reads
besides ``/dashboard/usage``), and the page itself in headless Chromium against the real app under uvicorn."""

import os
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from app_client import app_client
from sqlalchemy import create_engine, insert, text
from sqlalchemy.orm import Session
from uvicorn_app import serving

from autopack.dashboard_page import PAGE, usage_breakdown
from autopack.usage_recorder import LlmUsageEvent, utcnow
from support import alembic

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
KEY = "page-test-key"
SHARES = ("total_tokens", "exact_split_tokens", "total_only_tokens", "events", "total_only_events")


@pytest.fixture
def client(engine, monkeypatch):
    monkeypatch.delenv("AUTOPACK_API_KEY", raising=False)
    with app_client(engine) as client:
        yield client


def seed(engine, rows):
    """(provider, model, prompt, completion, total, created_at) rows, as stored: NULL splits are total-only."""
    columns = ("provider", "model", "prompt_tokens", "completion_tokens", "total_tokens", "created_at")
    with engine.begin() as connection:
        connection.execute(
            insert(LlmUsageEvent), [{**dict(zip(columns, row, strict=True)), "role": "builder"} for row in rows]
        )


def shares(total, exact, events, total_only_events):
    return dict(zip(SHARES, (total, exact, total - exact, events, total_only_events), strict=True))


NOW = datetime(2025, 11, 1, 12, 0, 0)  # naive UTC
WEEK_START = NOW - timedelta(days=7)
FIXED = [
    # provider, model, prompt, completion, total, created_at
    ("anthropic", "claude-sonnet-4-5", 12_500, 3_200, 15_700, NOW - timedelta(hours=1)),
    ("anthropic", "claude-sonnet-4-5", None, None, 5_000, NOW - timedelta(days=2)),
    ("openai", "gpt-4o", 8_400, 2_100, 10_500, NOW - timedelta(hours=3)),
    ("openai", "gpt-4o-mini", None, None, 2_400, NOW - timedelta(days=6)),
    ("openai", "gpt-4o", None, None, 1_000, WEEK_START),  # the week's first instant: in
    ("openai", "gpt-4o", None, None, 70_000, WEEK_START - timedelta(seconds=1)),  # month only
    ("google", "gemini-2.5-pro", None, None, 40, datetime(2025, 10, 31, 23, 59, 59)),
    ("google", "gemini-2.5-pro", 30, 30, 60, datetime(2025, 11, 1, 0, 0, 0)),
    # 20:30 on 31 October at -05:00 is 01:30 on 1 November in UTC: a UTC day counts it on the 1st
    ("google", "gemini-2.5-pro", None, None, 900, datetime(2025, 10, 31, 20, 30, tzinfo=timezone(timedelta(hours=-5)))),
    ("google", "gemini-2.5-pro", None, None, 18_500, NOW - timedelta(days=20)),  # month only
    ("google", "gemini-2.5-pro", 100, 50, 150, NOW - timedelta(days=40)),  # in no period
]


def test_breakdown_splits_each_provider_and_utc_day_into_exact_and_total_only_tokens(engine):
    seed(engine, FIXED)
    with Session(engine) as db:
        week = usage_breakdown(db, "week", NOW).model_dump()
        day = usage_breakdown(db, "day", NOW.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=9)))).model_dump()
        month = usage_breakdown(db, "month", NOW).model_dump()
    assert (week["start"], week["end"]) == (WEEK_START.replace(tzinfo=UTC), NOW.replace(tzinfo=UTC))
    assert week["providers"] == [
        {"provider": "anthropic", **shares(20_700, 15_700, 2, 1)},
        {"provider": "google", **shares(1_000, 60, 3, 2)},
        {"provider": "openai", **shares(13_900, 10_500, 3, 2)},
    ]
    assert week["overall"] == shares(35_600, 26_260, 8, 5)
    assert [
        (str(d["day"]), d["total_tokens"], d["exact_split_tokens"], d["total_only_tokens"]) for d in week["days"]
    ] == [
        ("2025-10-25", 1_000, 0, 1_000),
        ("2025-10-26", 2_400, 0, 2_400),
        ("2025-10-27", 0, 0, 0),
        ("2025-10-28", 0, 0, 0),
        ("2025-10-29", 0, 0, 0),
        ("2025-10-30", 5_000, 0, 5_000),
        ("2025-10-31", 40, 0, 40),
        ("2025-11-01", 27_160, 26_260, 900),
    ]
    assert [(p["provider"], p["total_tokens"]) for p in day["providers"]] == [
        ("anthropic", 15_700),
        ("google", 1_000),
        ("openai", 10_500),
    ]
    assert [(str(d["day"]), d["total_tokens"]) for d in day["days"]] == [("2025-10-31", 40), ("2025-11-01", 27_160)]
    assert [(p["provider"], p["total_tokens"]) for p in month["providers"]] == [
        ("anthropic", 20_700),
        ("google", 19_500),
        ("openai", 83_900),
    ]
    assert month["overall"] == shares(124_100, 26_260, 10, 7)
    assert len(month["days"]) == 31 and sum(d["total_tokens"] for d in month["days"]) == 124_100
    assert [d["total_tokens"] for d in month["days"] if str(d["day"]) in ("2025-10-12", "2025-10-25")] == [
        18_500,
        71_000,
    ]


def test_breakdown_endpoint_agrees_with_usage_and_sums_its_days(engine, client):
    now = utcnow()
    seed(engine, [(p, m, pr, co, t, now - (NOW - at.replace(tzinfo=None))) for p, m, pr, co, t, at in FIXED[:4]])
    for period in ("day", "week", "month"):
        usage = client.get(f"/dashboard/usage?period={period}").json()
        breakdown = client.get(f"/dashboard/usage/breakdown?period={period}")
        assert breakdown.status_code == 200
        body = breakdown.json()
        assert {p["provider"]: p["total_tokens"] for p in body["providers"]} == {
            p["provider"]: p["total_tokens"] for p in usage["providers"]
        }
        assert sum(d["total_tokens"] for d in body["days"]) == body["overall"]["total_tokens"]
        assert body["start"].endswith("Z") and body["end"].endswith("Z")
    week = client.get("/dashboard/usage/breakdown?period=week").json()
    assert week["overall"] == shares(33_600, 26_200, 4, 2)
    assert client.get("/dashboard/usage/breakdown?period=year").json() == {
        "detail": "unknown period 'year': use one of day, week, month"
    }


def test_a_row_from_a_clock_ahead_of_the_servers_counts_today_in_every_figure(engine, client):
    now = utcnow()
    seed(
        engine,
        [
            ("openai", "gpt-4o", 100, 50, 150, now - timedelta(hours=2)),
            ("openai", "gpt-4o", None, None, 5000, now + timedelta(hours=25)),
        ],
    )
    usage = client.get("/dashboard/usage?period=day").json()
    body = client.get("/dashboard/usage/breakdown?period=day").json()
    assert usage["providers"][0]["total_tokens"] == body["overall"]["total_tokens"] == 5150
    assert sum(d["total_tokens"] for d in body["days"]) == 5150
    assert body["days"][-1]["total_tokens"] >= 5000


def adopted_table_allowing_null_names(db_url, created_at: str = "DATETIME NOT NULL"):
    """A legacy SQLite table whose provider and model allow NULL, adopted and upgraded by the real CLI; its engine."""
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE llm_usage_events (id INTEGER PRIMARY KEY, provider VARCHAR, model VARCHAR, run_id VARCHAR, "
            "phase_id VARCHAR, role VARCHAR NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT "
            f"NULL, created_at {created_at}, is_doctor_call BOOLEAN NOT NULL, doctor_model VARCHAR, doctor_action "
            "VARCHAR)"
        )
    alembic(db_url, "upgrade", "head")
    return engine


@pytest.mark.parametrize("backend", ["sqlite"])
def test_rows_with_a_null_provider_or_model_in_an_adopted_table_are_shown_as_null(db_url, monkeypatch):
    """A legacy table adopted as it is may allow NULL in provider and model: their usage is counted, never a 500."""
    engine = adopted_table_allowing_null_names(db_url)
    recent = utcnow() - timedelta(hours=1)
    seed(engine, [(None, "m1", 10, 20, 30, recent), ("p", None, None, None, 700, recent), ("p", "m2", 1, 2, 3, recent)])
    monkeypatch.delenv("AUTOPACK_API_KEY", raising=False)
    with app_client(engine) as client:
        usage = client.get("/dashboard/usage?period=day")
        body = client.get("/dashboard/usage/breakdown?period=day")
    engine.dispose()
    assert usage.status_code == 200 and body.status_code == 200, usage.text + body.text
    assert {p["provider"]: p["total_tokens"] for p in usage.json()["providers"]} == {None: 30, "p": 703}
    assert {(m["provider"], m["model"]): m["total_tokens"] for m in usage.json()["models"]} == {
        (None, "m1"): 30,
        ("p", None): 700,
        ("p", "m2"): 3,
    }
    assert {p["provider"]: p["total_only_tokens"] for p in body.json()["providers"]} == {None: 0, "p": 700}


def test_head_of_the_page_answers_like_get(client):
    head = client.head("/dashboard")
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/html")


def test_breakdown_of_an_empty_database_is_zeros_for_every_day(client):
    body = client.get("/dashboard/usage/breakdown?period=day").json()
    assert body["providers"] == [] and body["overall"] == shares(0, 0, 0, 0)
    assert len(body["days"]) == 2 and all(d["total_tokens"] == 0 for d in body["days"])


def test_the_page_is_served_without_the_key_and_holds_no_data(engine, client, monkeypatch):
    seed(engine, FIXED)
    monkeypatch.setenv("AUTOPACK_API_KEY", KEY)
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == PAGE
    for figure in ("anthropic", "gemini", "15,700", "15700", "20,700", "20700"):
        assert figure not in page.text
    # nothing is fetched from elsewhere: the only URL is the SVG namespace, and the policy allows this server only
    assert set(re.findall(r"https?://[^\s\"')]+", page.text)) == {"http://www.w3.org/2000/svg"}
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_the_breakdown_needs_the_key_when_one_is_set(engine, client, monkeypatch):
    seed(engine, FIXED)
    monkeypatch.setenv("AUTOPACK_API_KEY", KEY)
    assert client.get("/dashboard/usage/breakdown").status_code == 401
    assert client.get("/dashboard/usage/breakdown", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/dashboard/usage/breakdown", headers={"X-API-Key": KEY}).status_code == 200


# ---------------------------------------------------------------------------------------------------------------
# In a real browser


def browser_rows(now: datetime) -> list[tuple]:
    """A month of usage with a cap of 1,000,000: anthropic past 90 % in the week, openai past 80 %; day, week
    and month all differ."""
    rows = []
    for d in range(30):
        tokens = (90_000, 30_000) if d < 7 else (30_000, 10_000)
        rows.append(("anthropic", "claude-sonnet-4-5", *tokens, sum(tokens), now - timedelta(days=d, hours=3)))
    rows.append(("anthropic", "claude-opus-4-1", None, None, 90_000, now - timedelta(days=1, hours=5)))
    for d in range(7):
        rows.append(("openai", "gpt-4o", 45_000, 15_000, 60_000, now - timedelta(days=d, hours=6)))
    for age in (timedelta(days=2, hours=1), timedelta(days=4, hours=1), timedelta(days=5, hours=8)):
        rows.append(("openai", "gpt-4o-mini", None, None, 100_000, now - age))
    rows.append(("openai", "gpt-4o-mini", None, None, 100_000, now - timedelta(days=6, hours=1)))
    for days in (10, 15, 20):
        rows.append(("google", "gemini-2.5-pro", None, None, 25_000, now - timedelta(days=days)))
    rows.append(("google", "gemini-2.5-flash-preview-09-2025", 3_000, 1_000, 4_000, now - timedelta(hours=1)))
    rows.append(("mistral", "mistral-large", None, None, 9_999, now - timedelta(days=45)))  # in no period
    return rows


def sql_totals(engine, days: int) -> dict[str, tuple[int, int]]:
    """provider -> (SUM(total_tokens), total-only tokens) over the last ``days`` days, by plain SQL."""
    start = (utcnow() - timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S.%f")
    query = text(
        "SELECT provider, SUM(total_tokens), "
        "SUM(CASE WHEN prompt_tokens IS NULL OR completion_tokens IS NULL THEN total_tokens ELSE 0 END) "
        "FROM llm_usage_events WHERE created_at >= :start GROUP BY provider"
    )
    with engine.connect() as connection:
        return {provider: (total, only) for provider, total, only in connection.execute(query, {"start": start})}


@pytest.fixture
def chromium(monkeypatch):
    """Headless Debian Chromium driven by Selenium through Debian's chromedriver (Selenium Manager stays offline)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = f"no browser for the dashboard page test: {', '.join(missing)} missing"
        if IN_CI:
            pytest.fail(f"required in CI: {reason}", pytrace=False)
        pytest.skip(f"{reason} (apt-get install chromium chromium-driver; pip install -e '.[test]')")
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def viewport(driver, width: int, height: int = 900) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def until(driver, script: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not driver.execute_script(script):
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.05)


def wait_for(driver, state: str, period: str | None = None, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = driver.execute_script("return [document.body.dataset.state, document.body.dataset.period]")
        if body[0] == state and period in (None, body[1]):
            return
        time.sleep(0.05)
    raise AssertionError(f"the page did not reach {state!r} {period or ''}: it is {body}")


def no_horizontal_scroll(driver, width: int) -> None:
    viewport(driver, width)
    time.sleep(0.2)  # the chart redraws on resize
    inner, scroll = driver.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
    assert inner == width
    assert scroll <= inner, f"horizontal scroll at {width} px: scrollWidth {scroll}"


def screenshot(driver, width: int, path: Path) -> None:
    """The whole page at ``width``."""
    viewport(driver, width)
    time.sleep(0.2)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    viewport(driver, width, height)
    time.sleep(0.2)
    driver.save_screenshot(str(path))


def digits(text_shown: str) -> int:
    return int(re.sub(r"[^0-9]", "", text_shown))


def check_numbers_against_sql(driver, engine, days: int) -> dict[str, str]:
    """Each provider card's tokens equal SUM(total_tokens) by SQL; returns provider -> cap bar level."""
    expected = sql_totals(engine, days)
    cards = driver.execute_script(
        "return [...document.querySelectorAll('#providers [data-provider]')].map(c => [c.dataset.provider,"
        " c.querySelector('.tokens').textContent, (c.querySelector('.fill') || {}).className || '',"
        " c.querySelector('.total-only-share').textContent])"
    )
    shown = {provider: tokens for provider, tokens, _, _ in cards}
    assert shown == {provider: f"{total:,}" for provider, (total, _) in expected.items()}
    for provider, _, _, only in cards:  # "total-only 190,000 (20.4 %)"
        assert digits(only.split("(")[0]) == expected[provider][1]
    total = sum(t for t, _ in expected.values())
    assert driver.find_element("id", "total-tokens").text == f"{total:,}"
    bars = driver.execute_script("return [...document.querySelectorAll('#chart g.day')].map(g => +g.dataset.tokens)")
    assert len(bars) == days + 1 and sum(bars) == total  # every UTC day the period touches
    models = driver.execute_script(
        "return [...document.querySelectorAll('#models tbody tr')].map(r => r.querySelector('.tokens').textContent)"
    )
    assert [digits(m) for m in models] == sorted((digits(m) for m in models), reverse=True)
    return {provider: level.replace("fill", "").strip() for provider, _, level, _ in cards}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_page_in_chromium_shows_the_sql_sums_per_period(chromium, engine, db_url, monkeypatch, tmp_path):
    seed(engine, browser_rows(utcnow()))
    monkeypatch.setenv("AUTOPACK_RUN_TOKEN_CAP", "1000000")
    with serving(db_url, KEY) as client:
        viewport(chromium, 1280)
        chromium.get(f"{client.base_url}/dashboard")
        wait_for(chromium, "key")
        assert "Missing API key" in chromium.find_element("id", "key-message").text
        assert chromium.find_element("id", "key").is_displayed()
        chromium.find_element("id", "key").send_keys("not-the-key\n")
        until(chromium, "return document.getElementById('key-message').textContent.startsWith('Wrong API key')")
        wait_for(chromium, "key")
        chromium.find_element("id", "key").send_keys("clé-ключ\n")  # no header can carry it: said, not kept
        until(chromium, "return document.getElementById('key-message').textContent.startsWith('An API key holds')")
        assert chromium.execute_script("return sessionStorage.getItem('autopack.dashboard.key')") == "not-the-key"
        chromium.find_element("id", "key").send_keys(f"{KEY}\n")
        wait_for(chromium, "loaded", "week")
        assert chromium.execute_script("return [sessionStorage.length, localStorage.length]") == [1, 0]
        assert check_numbers_against_sql(chromium, engine, 7) == {
            "anthropic": "danger",
            "google": "",
            "openai": "warning",
        }

        chromium.find_element("css selector", "[data-period=day]").click()
        wait_for(chromium, "loaded", "day")
        check_numbers_against_sql(chromium, engine, 1)

        chromium.find_element("css selector", "[data-period=month]").click()
        wait_for(chromium, "loaded", "month")
        assert check_numbers_against_sql(chromium, engine, 30)["anthropic"] == "danger"  # past the cap
        assert set(sql_totals(engine, 1).values()) != set(sql_totals(engine, 7).values())

        chromium.find_element("css selector", "[data-period=week]").click()
        wait_for(chromium, "loaded", "week")
        for width in (1280, 390):
            no_horizontal_scroll(chromium, width)
            screenshot(chromium, width, tmp_path / f"dashboard-{width}.png")
            assert (tmp_path / f"dashboard-{width}.png").stat().st_size > 10_000


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_page_in_chromium_says_when_there_is_no_usage(chromium, engine, db_url):
    with serving(db_url, None) as client:
        viewport(chromium, 390)
        chromium.get(f"{client.base_url}/dashboard#constructor")  # not a period, though every object has one
        wait_for(chromium, "empty", "week")
        chromium.get(f"{client.base_url}/dashboard#month")
        chromium.refresh()
        wait_for(chromium, "empty", "month")
        assert chromium.find_element("id", "empty-title").text == "No usage recorded in the last 30 days"
        assert not chromium.find_element("id", "key-form").is_displayed()
        no_horizontal_scroll(chromium, 390)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_page_keeps_a_null_provider_apart_from_one_named_null(chromium, db_url, monkeypatch):
    """An adopted table's NULL provider and a provider literally named "null" are two cards with their own shares,
    and rows whose created_at gives no time are said on the page, not silently left out."""
    engine = adopted_table_allowing_null_names(db_url, created_at="DATETIME")
    recent = utcnow() - timedelta(hours=1)
    seed(engine, [(None, "m1", 10, 20, 30, recent), ("null", "m2", None, None, 700, recent)])
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at, is_doctor_call) "
            "VALUES ('p', 'm', 'r', 4000, 'last tuesday', 0)"
        )
    engine.dispose()
    monkeypatch.delenv("AUTOPACK_API_KEY", raising=False)
    with serving(db_url, None) as client:
        chromium.get(f"{client.base_url}/dashboard#day")
        wait_for(chromium, "loaded", "day")
        cards = chromium.execute_script(
            "return [...document.querySelectorAll('#providers [data-provider]')].map(c => [c.dataset.provider,"
            " c.querySelector('h3').textContent, c.querySelector('.total-only-share').textContent])"
        )
        assert {(heading, digits(only.split("(")[0])) for _, heading, only in cards} == {
            ("(no provider)", 0),
            ("null", 700),
        }
        undated = chromium.find_element("id", "undated")
        assert undated.is_displayed()
        assert undated.text.startswith("1 event (4,000 tokens) have a created_at that gives no time")
