"""``alembic upgrade/downgrade --sql``: scripts for DBAs, applied with each engine's own driver to a database
seeded at the old revision, must give the same rows as the online path, in both directions."""

import psycopg
import pymysql
import pytest
from sqlalchemy import create_engine, text

from legacy import build
from support import MYSQL_BACKENDS, POSTGRES_BACKENDS, alembic, apply_script, event_row, insert_events, token_rows

SEED = [(12_500, 3_200), (0, 0), (7, 0), (1_000_000_000, 999_999_999)]
LATER = [(None, None, 18_500), (40, None, 40), (10, 5, 100), (None, None, 0)]  # written once at 0002


def rows(url):
    engine = create_engine(url)
    with engine.connect() as connection:
        result = [dict(r._mapping) for r in connection.execute(text("SELECT * FROM llm_usage_events ORDER BY id"))]
    engine.dispose()
    return result


def seeded_pair(new_database):
    """Two identical databases at 0001 with rows: one for the online path, one for the scripts."""
    pair = []
    for _ in range(2):
        url = new_database()
        alembic(url, "upgrade", "0001")
        engine = create_engine(url)
        with engine.begin() as connection:
            insert_events(
                connection, [event_row(i, prompt_tokens=p, completion_tokens=c) for i, (p, c) in enumerate(SEED)]
            )
        engine.dispose()
        pair.append(url)
    return pair


def add_later_rows(url):
    engine = create_engine(url)
    with engine.begin() as connection:
        insert_events(
            connection,
            [
                event_row(10 + i, prompt_tokens=p, completion_tokens=c, total_tokens=t)
                for i, (p, c, t) in enumerate(LATER)
            ],
        )
    engine.dispose()


def script(url, *args) -> str:
    result = alembic(url, *args, "--sql")
    return result.stdout


def test_offline_scripts_give_the_online_rows_both_ways(new_database):
    online, offline = seeded_pair(new_database)

    alembic(online, "upgrade", "head")
    apply_script(offline, script(offline, "upgrade", "0001:0002"))
    assert rows(offline) == rows(online)
    assert alembic(offline, "current").stdout.strip() == "0002 (head)"
    assert [r["total_tokens"] for r in rows(offline)] == [p + c for p, c in SEED]

    for url in (online, offline):
        add_later_rows(url)
    upgraded = rows(online)
    alembic(online, "downgrade", "0001")
    apply_script(offline, script(offline, "downgrade", "0002:0001"))
    assert rows(offline) == rows(online)
    assert alembic(offline, "current").stdout.strip() == "0001"

    alembic(online, "upgrade", "head")
    apply_script(offline, script(offline, "upgrade", "0001:0002"))
    assert rows(offline) == rows(online) == upgraded  # the set-aside rows came back exactly


@pytest.mark.parametrize("backend", [*POSTGRES_BACKENDS, *MYSQL_BACKENDS])
@pytest.mark.parametrize("state", ["old_script", "create_all_build144"])
def test_a_server_script_on_an_adopted_table_with_total_tokens_fails_before_changing_anything(db_url, state):
    build(db_url, state)
    alembic(db_url, "upgrade", "0001")  # adopted: at 0001, but total_tokens is already there
    before = token_rows(db_url)
    with pytest.raises((psycopg.Error, pymysql.Error), match="total_tokens"):
        apply_script(db_url, script(db_url, "upgrade", "0001:0002"))
    assert token_rows(db_url) == before
    assert alembic(db_url, "current").stdout.strip() == "0001"
