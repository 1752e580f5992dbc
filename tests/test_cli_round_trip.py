"""The real ``alembic`` command line, as an operator types it, against a new database on every backend."""

from sqlalchemy import create_engine, text

from support import alembic, columns_of, event_row, insert_events, token_rows


def current(url) -> str:
    return alembic(url, "current").stdout.strip()


def test_upgrade_downgrade_upgrade_check_on_a_new_database(db_url):
    up = alembic(db_url, "upgrade", "head")
    assert "Running upgrade  -> 0001" in up.stderr and "Running upgrade 0001 -> 0002" in up.stderr
    assert current(db_url) == "0002 (head)"
    columns = columns_of(db_url)
    assert columns["total_tokens"]["nullable"] is False
    assert str(columns["total_tokens"]["default"]).strip("'()") == "0"
    assert columns["prompt_tokens"]["nullable"] and columns["completion_tokens"]["nullable"]

    down = alembic(db_url, "downgrade", "0001")
    assert "Running downgrade 0002 -> 0001" in down.stderr
    assert current(db_url) == "0001"
    columns = columns_of(db_url)
    assert "total_tokens" not in columns
    assert not columns["prompt_tokens"]["nullable"] and not columns["completion_tokens"]["nullable"]

    alembic(db_url, "upgrade", "head")
    assert current(db_url) == "0002 (head)"
    check = alembic(db_url, "check")
    assert "No new upgrade operations detected." in check.stdout


def test_cli_upgrade_of_a_baseline_database_with_rows(db_url):
    alembic(db_url, "upgrade", "0001")
    engine = create_engine(db_url)
    seed = [(100, 50), (0, 0), (7, 0), (2_000_000, 1_000_000)]
    with engine.begin() as connection:
        insert_events(connection, [event_row(i, prompt_tokens=p, completion_tokens=c) for i, (p, c) in enumerate(seed)])
    engine.dispose()

    up = alembic(db_url, "upgrade", "head")
    assert list(token_rows(db_url).values()) == [(p, c, p + c) for p, c in seed]
    assert "[2/3] Backfilled 3 rows" in up.stderr  # the (0, 0) row is already right
    assert f"total rows 4, exact splits 4, total-only (NULL splits) 0, sum of total_tokens {sum(map(sum, seed))}" in (
        up.stderr
    )

    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE llm_usage_events SET prompt_tokens = NULL, completion_tokens = NULL WHERE id = 1")
        )
    engine.dispose()
    alembic(db_url, "downgrade", "0001")
    alembic(db_url, "upgrade", "head")
    assert token_rows(db_url)[1] == (None, None, 150)
