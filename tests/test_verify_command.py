"""``python -m autopack verify`` on real databases: exit 0 only when every runbook criterion holds."""

import os
import subprocess
import sys

import pytest
from sqlalchemy import text

from support import ROOT, alembic, engine_for, event_row, insert_events


def verify(url):
    env = {**os.environ, "DATABASE_URL": url if isinstance(url, str) else url.render_as_string(False)}
    return subprocess.run(
        [sys.executable, "-m", "autopack", "verify"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def upgraded_with(url, rows):
    alembic(url, "upgrade", "head")
    engine = engine_for(url)
    with engine.begin() as connection:
        insert_events(
            connection,
            [event_row(i, prompt_tokens=p, completion_tokens=c, total_tokens=t) for i, (p, c, t) in enumerate(rows)],
        )
    engine.dispose()


def line(output, name):
    return next(x for x in output.splitlines() if name in x)


def test_a_migrated_database_with_exact_and_total_only_rows_passes(db_url):
    upgraded_with(db_url, [(12_500, 3_200, 15_700), (8_400, 2_100, 10_500), (None, None, 18_500), (0, 0, 0)])
    result = verify(db_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert line(result.stdout, "total_tokens populated").split() == [
        "ok", "total_tokens", "populated", "3", "of", "4", "rows", "have", "total_tokens", ">", "0", "(75.0%);",
        "0", "rows", "with", "splits", "still", "at", "0",
    ]  # fmt: skip
    assert "1 rows with NULL splits and total_tokens > 0" in line(result.stdout, "total-only rows well-formed")
    assert result.stdout.strip().endswith("All checks passed.")
    assert "warning" not in result.stdout


def test_a_total_that_is_not_the_sum_of_its_splits_fails(db_url):
    upgraded_with(db_url, [(100, 50, 150), (100, 50, 149), (7, None, 8)])
    result = verify(db_url)
    assert result.returncode == 1
    assert line(result.stdout, "totals match their splits").startswith("  FAIL")
    assert "2 rows whose total_tokens is not prompt + completion" in result.stdout


def test_a_split_row_left_at_zero_fails_population(db_url):
    upgraded_with(db_url, [(100, 50, 0), (1, 1, 2)])
    result = verify(db_url)
    assert result.returncode == 1
    assert line(result.stdout, "total_tokens populated").startswith("  FAIL")
    assert "1 rows with splits still at 0" in result.stdout


def test_rows_whose_usage_was_lost_before_the_migration_are_a_warning_not_a_failure(db_url):
    upgraded_with(db_url, [(None, None, 0), (None, None, 0), (3, 4, 7)])
    result = verify(db_url)
    assert result.returncode == 0
    assert "warning: 2 rows have both splits NULL and total_tokens 0" in result.stdout


def test_a_database_not_yet_migrated_fails_the_schema_checks(db_url):
    alembic(db_url, "upgrade", "0001")
    result = verify(db_url)
    assert result.returncode == 1
    assert line(result.stdout, "total_tokens exists").startswith("  FAIL")
    assert line(result.stdout, "nullable").startswith("  FAIL")
    assert "run 'alembic upgrade head'" in result.stdout


@pytest.mark.parametrize("backend", ["sqlite"])
def test_verify_never_creates_a_database(db_url):
    result = verify(db_url)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: No SQLite database at {db_url.database}: check DATABASE_URL "
        "(only 'alembic upgrade' creates a new database)."
    )
    assert not os.path.exists(db_url.database)


def test_verify_on_an_empty_database_says_there_is_no_table(db_url):
    engine = engine_for(db_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE unrelated (id INTEGER)"))
    engine.dispose()
    result = verify(db_url)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: There is no llm_usage_events table in this database: check DATABASE_URL."
