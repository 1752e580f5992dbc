"""Sums of splits an operator widened to BIGINT never stop the upgrade or verify where the rule does not need them.

An 'old BUILD-144 script' table whose splits were widened to BIGINT
holds a corrupt row whose splits sum past BIGINT but whose total is set; the upgrade must leave that total alone
and fill the others, as it always did, and verify must report, never trace back.
"""

from sqlalchemy import create_engine, text

from support import alembic, current, line, token_rows, verify


def widened_old_script_table(url, rows: list[tuple[int, int, int]]) -> None:
    """An unversioned 'old BUILD-144 script' table with BIGINT splits, seeded with (prompt, completion, total)."""
    mysql = url.get_backend_name() in ("mysql", "mariadb")
    varchar, timestamp = ("VARCHAR(255)", "DATETIME") if mysql else ("VARCHAR", "TIMESTAMP")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                f"CREATE TABLE llm_usage_events (id INTEGER NOT NULL, provider {varchar} NOT NULL, "
                f"model {varchar} NOT NULL, run_id {varchar}, phase_id {varchar}, role {varchar} NOT NULL, "
                f"prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL, created_at {timestamp} NOT NULL, "
                f"is_doctor_call BOOLEAN NOT NULL, doctor_model {varchar}, doctor_action {varchar}, "
                "total_tokens INTEGER NOT NULL DEFAULT 0, CONSTRAINT pk_llm_usage_events PRIMARY KEY (id))"
            )
        )
        connection.execute(
            text(
                "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, "
                "created_at, is_doctor_call, total_tokens) VALUES (:id, 'p', 'm', 'builder', :p, :c, "
                "'2025-01-01 00:00:00', false, :t)"
            ),
            [{"id": i, "p": p, "c": c, "t": t} for i, (p, c, t) in enumerate(rows, 1)],
        )
    engine.dispose()


def test_a_set_total_beside_splits_that_sum_past_bigint_is_left_alone(db_url):
    huge = 5_000_000_000_000_000_000
    widened_old_script_table(db_url, [(huge, huge, 5), (3, 4, 0), (10, 20, 30)])
    result = alembic(db_url, "upgrade", "head")
    assert "[3/3] Verification: total rows 3" in result.stderr
    assert token_rows(db_url) == {1: (huge, huge, 5), 2: (3, 4, 7), 3: (10, 20, 30)}
    assert current(db_url) == "0002 (head)"


def test_verify_reports_a_split_sum_past_integer_instead_of_tracing_back(db_url):
    alembic(db_url, "upgrade", "head")
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, total_tokens, "
                "created_at, is_doctor_call) VALUES ('p', 'm', 'builder', 2000000000, 2000000000, 5, "
                "'2025-01-01 00:00:00', false)"
            )
        )
    engine.dispose()
    result = verify(db_url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert line(result.stdout, "totals match their splits").startswith("  FAIL")
    assert "1 rows whose total_tokens is not prompt + completion" in result.stdout


def test_verify_of_total_only_rows_whose_totals_sum_past_int64_passes_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    alembic(url, "upgrade", "head")
    engine = create_engine(url)
    with engine.begin() as connection:
        for _ in range(2):  # each fits SQLite's 64-bit INTEGER; their sum does not
            connection.execute(
                text(
                    "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at, is_doctor_call) "
                    "VALUES ('p', 'm', 'builder', 5000000000000000000, '2025-01-01 00:00:00', 0)"
                )
            )
    engine.dispose()
    result = verify(url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rows with NULL splits and total_tokens > 0" in line(result.stdout, "total-only rows well-formed")


def test_the_dashboard_sums_totals_past_int64_exactly(db_url):
    """total_tokens widened to BIGINT by an operator, two providers' sums past 2^63: exact, never a bare 500."""
    from datetime import timedelta

    from app_client import app_client

    from autopack.database import make_engine
    from autopack.usage_recorder import utcnow

    alembic(db_url, "upgrade", "head")
    widen = {
        "postgresql": "ALTER TABLE llm_usage_events ALTER COLUMN total_tokens TYPE BIGINT",
        "mysql": "ALTER TABLE llm_usage_events MODIFY total_tokens BIGINT NOT NULL DEFAULT 0",
    }.get(db_url.get_backend_name())
    big = [2**62 + 5, 2**62 + 7, 2**62 - 1]  # 3 * 2^62 + 11: past 2^63, below 2^64
    engine = make_engine(db_url)
    with engine.begin() as connection:
        if widen:
            connection.exec_driver_sql(widen)
        for total in big:
            connection.execute(
                text(
                    "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, "
                    "total_tokens, created_at, is_doctor_call) VALUES ('p', 'm', 'r', NULL, NULL, :t, :at, false)"
                ),
                {"t": total, "at": utcnow() - timedelta(hours=1)},
            )
    with app_client(engine) as client:
        usage = client.get("/dashboard/usage?period=day")
        breakdown = client.get("/dashboard/usage/breakdown?period=day")
    engine.dispose()
    assert usage.status_code == 200, usage.text
    assert usage.json()["providers"][0]["total_tokens"] == sum(big)
    assert usage.json()["models"][0]["total_tokens"] == sum(big)
    assert breakdown.status_code == 200, breakdown.text
    assert breakdown.json()["overall"]["total_only_tokens"] == sum(big)
    assert sum(day["total_tokens"] for day in breakdown.json()["days"]) == sum(big)
