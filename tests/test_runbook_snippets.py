"""The runbook's own snippets (tests/runbook_snippets, copied verbatim) against a database the real CLI migrated.

They run as the runbook runs them: ``PYTHONPATH=src python snippet.py`` with ``DATABASE_URL`` set, and the
dashboard one against a real ``uvicorn autopack.main:app`` (on a free port instead of 8000).
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from autopack.usage_recorder import record_total_only_usage
from legacy import build
from support import ROOT, alembic

SNIPPETS = Path(__file__).parent / "runbook_snippets"


@pytest.fixture
def migrated(db_url):
    """The runbook's example data: two exact-split events from before BUILD-144, two total-only ones after."""
    build(db_url, "pre_build144", rows=[(12_500, 3_200, None), (8_400, 2_100, None)])
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE llm_usage_events SET provider = 'anthropic', model = 'claude-sonnet-4-5' WHERE id = 1")
        )
        connection.execute(text("UPDATE llm_usage_events SET provider = 'openai', model = 'gpt-4o' WHERE id = 2"))
        connection.execute(text("UPDATE llm_usage_events SET created_at = CURRENT_TIMESTAMP"))
    alembic(db_url, "upgrade", "head")
    with Session(engine) as db:
        record_total_only_usage(db, provider="google", model="gemini-2.5-pro", role="builder", total_tokens=18_500)
        record_total_only_usage(db, provider="openai", model="gpt-4o-mini", role="builder", total_tokens=2_400)
    engine.dispose()
    return db_url


def environment(url) -> dict:
    return {
        **os.environ,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "PYTHONPATH": "src",
        "PYTHONUTF8": "1",
    }


def run_snippet(name, url, source=None) -> str:
    source = source or (SNIPPETS / name).read_text()
    result = subprocess.run(
        [sys.executable, "-c", source], cwd=ROOT, env=environment(url), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_step3_option_a_quick_check(migrated):
    assert run_snippet("step3_option_a.py", migrated).splitlines() == [
        "✅ total_tokens exists: True",
        "✅ total_tokens NOT NULL: True",
        "✅ prompt_tokens nullable: True",
        "✅ completion_tokens nullable: True",
        "",
        "Total events: 4",
        "Events with total_tokens>0: 4 (100.0%)",
        "Total-only events (NULL splits): 2 (50.0%)",
    ]


def test_check_sample_values(migrated):
    output = run_snippet("check_sample_values.py", migrated)
    exact, total_only = output.split("=== Total-Only Events (NULL splits) ===\n")
    assert exact.startswith("=== Exact Split Events ===\n")
    assert sorted(exact.removeprefix("=== Exact Split Events ===\n").strip().split("\n\n")) == [
        "Provider: anthropic, Model: claude-sonnet-4-5\n  prompt_tokens: 12500\n  completion_tokens: 3200\n"
        "  total_tokens: 15700\n  Sum matches: True",
        "Provider: openai, Model: gpt-4o\n  prompt_tokens: 8400\n  completion_tokens: 2100\n"
        "  total_tokens: 10500\n  Sum matches: True",
    ]
    assert total_only.strip().split("\n\n") == [
        "Provider: google, Model: gemini-2.5-pro\n  prompt_tokens: None (NULL)\n  completion_tokens: None (NULL)\n"
        "  total_tokens: 18500 (preserved!)",
        "Provider: openai, Model: gpt-4o-mini\n  prompt_tokens: None (NULL)\n  completion_tokens: None (NULL)\n"
        "  total_tokens: 2400 (preserved!)",
    ]


def test_option_b_sql_query(migrated):
    engine = create_engine(migrated)
    with engine.connect() as connection:
        result = connection.execute(text((SNIPPETS / "option_b.sql").read_text().rstrip().rstrip(";")))
        assert list(result.keys()) == ["total_events", "with_total", "total_only_nulls"]
        assert tuple(result.one()) == (4, 4, 2)
    engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_snippet_against_a_real_uvicorn(migrated):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "autopack.main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=environment(migrated),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        source = (SNIPPETS / "dashboard_totals.py").read_text().replace("localhost:8000", f"127.0.0.1:{port}")
        output = run_snippet("dashboard_totals.py", migrated, source)
    finally:
        server.terminate()
        server.wait(10)
    assert output.split("\n\n")[:-1] == [
        "=== Provider Totals ===\nanthropic: 15700 tokens\n  Splits: 12500 + 3200",
        "google: 18500 tokens\n  Splits: 0 + 0",
        "openai: 12900 tokens\n  Splits: 8400 + 2100",
    ]
