"""Rows a downgrade sets aside come back on the next upgrade whatever the column types, and the set-aside table
goes only when every row in it is restored or reported superseded; objects reading total_tokens stop a downgrade."""

from datetime import datetime

import pytest
from sqlalchemy import create_engine, inspect, text

from legacy import build
from support import (
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    alembic,
    columns_of,
    execute,
    fails,
    table_names,
    token_rows,
)

HOLDOVER = "llm_usage_events_build144_holdover"
WHEN = datetime(2025, 11, 3, 9, 41, 7, 123456)


PRECISE_CREATED_AT = {
    "sqlite": None,
    **{b: "ALTER TABLE llm_usage_events ALTER COLUMN created_at TYPE timestamptz" for b in POSTGRES_BACKENDS},
    **{b: "ALTER TABLE llm_usage_events MODIFY created_at DATETIME(6) NOT NULL" for b in MYSQL_BACKENDS},
}


def test_a_total_only_row_survives_down_and_up_with_a_precise_or_zoned_created_at(db_url, backend):
    build(db_url, "create_all_build144")
    if PRECISE_CREATED_AT[backend]:
        execute(db_url, PRECISE_CREATED_AT[backend])
    execute(
        db_url,
        "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, total_tokens,"
        " created_at, is_doctor_call) VALUES (500, 'p', 'm', 'builder', NULL, NULL, 18500, :at, false)",
        at=WHEN,
    )
    alembic(db_url, "upgrade", "head")
    before = token_rows(db_url)
    # each command in its own session time zone: the match must not depend on it
    down = alembic(db_url, "downgrade", "0001", PGTZ="America/New_York", TZ="America/New_York")
    assert "Set aside" in down.stderr
    if backend != "sqlite":
        held = {c["name"]: str(c["type"]) for c in columns_of(db_url, HOLDOVER).values()}
        source = {c["name"]: str(c["type"]) for c in columns_of(db_url).values()}
        assert {k: held[k] for k in ("provider", "model", "role", "created_at")} == {
            k: source[k] for k in ("provider", "model", "role", "created_at")
        }
    up = alembic(db_url, "upgrade", "head", PGTZ="Asia/Tokyo", TZ="Asia/Tokyo")
    assert "Restored" in up.stderr and "set-aside rows" not in up.stderr, up.stderr
    assert token_rows(db_url) == before
    assert token_rows(db_url)[500] == (None, None, 18500)
    assert HOLDOVER not in table_names(db_url)


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_mariadb_set_aside_table_takes_the_source_collation_length_and_charset(db_url):
    build(db_url, "create_all_build144")
    execute(
        db_url,
        "ALTER TABLE llm_usage_events MODIFY model VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci "
        "NOT NULL, MODIFY provider VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL",
        "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, total_tokens,"
        " created_at, is_doctor_call) VALUES (600, '通义千问', :model, 'builder', NULL, NULL, 18500, :at, false)",
        model="通义千问-max-" + "x" * 300,
        at=WHEN,
    )
    alembic(db_url, "upgrade", "head")
    before = token_rows(db_url)
    alembic(db_url, "downgrade", "0001")
    engine = create_engine(db_url)
    with engine.connect() as connection:
        collations = dict(
            connection.execute(
                text(
                    "SELECT COLUMN_NAME, CONCAT(COLUMN_TYPE, ' ', COLLATION_NAME) FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t AND COLUMN_NAME IN ('provider', 'model')"
                ),
                [{"t": HOLDOVER}],
            ).all()
        )
    engine.dispose()
    assert collations == {"provider": "varchar(255) utf8mb4_unicode_ci", "model": "varchar(512) utf8mb4_unicode_ci"}
    alembic(db_url, "upgrade", "head")
    assert token_rows(db_url) == before


@pytest.mark.parametrize("backend", ["sqlite"])
def test_superseded_rows_are_reported_and_changed_ones_keep_the_set_aside_table(db_url):
    build(db_url, "create_all_build144")
    alembic(db_url, "upgrade", "head")
    total_only = [i for i, (p, c, t) in token_rows(db_url).items() if p is None and c is None and t > 0]
    assert len(total_only) >= 2
    gone, changed = total_only[0], total_only[1]
    held_total = token_rows(db_url)[changed][2]
    alembic(db_url, "downgrade", "0001")
    # old code meanwhile: deletes one event, reuses its id for another, and updates another's splits
    execute(
        db_url,
        "DELETE FROM usage_annotations WHERE event_id = :gone",
        "DELETE FROM llm_usage_events WHERE id = :gone",
        "INSERT INTO llm_usage_events (id, provider, model, role, prompt_tokens, completion_tokens, created_at,"
        " is_doctor_call) VALUES (:gone, 'other', 'm', 'builder', 1, 2, '2026-01-01 00:00:00', 0)",
        "UPDATE llm_usage_events SET prompt_tokens = 40 WHERE id = :changed",
        gone=gone,
        changed=changed,
    )
    up = alembic(db_url, "upgrade", "head")
    assert (
        f"1 set-aside rows were not restored because their event was deleted or its id reused for another "
        f"event after the downgrade (ids {gone})" in up.stderr
    )
    assert f"1 set-aside rows stay in {HOLDOVER}" in up.stderr and f"(ids {changed})" in up.stderr
    assert token_rows(db_url)[gone] == (1, 2, 3)
    assert token_rows(db_url)[changed] == (40, 0, 40)
    engine = create_engine(db_url)
    with engine.connect() as connection:
        kept = connection.execute(text(f"SELECT event_id, total_tokens FROM {HOLDOVER}")).all()
    engine.dispose()
    assert [tuple(r) for r in kept] == [(changed, held_total)]  # still there to compare by hand


READERS = {
    "sqlite": [
        "CREATE VIEW daily_totals AS SELECT provider, SUM(total_tokens) AS n FROM llm_usage_events GROUP BY provider",
        "CREATE TRIGGER alert_big_calls AFTER INSERT ON llm_usage_events WHEN NEW.total_tokens > 100000 "
        "BEGIN SELECT 1; END",
        "CREATE INDEX ix_big_calls ON llm_usage_events (created_at) WHERE total_tokens > 100000",
    ],
    **{
        b: [
            "CREATE VIEW daily_totals AS SELECT provider, SUM(total_tokens) AS n FROM llm_usage_events "
            "GROUP BY provider",
            "CREATE FUNCTION alert_big() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.total_tokens > 100000 "
            "THEN RAISE NOTICE 'big'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER alert_big_calls AFTER INSERT ON llm_usage_events FOR EACH ROW EXECUTE FUNCTION alert_big()",
            "CREATE INDEX ix_big_calls ON llm_usage_events ((total_tokens / 1000))",
            "ALTER TABLE llm_usage_events ADD CONSTRAINT ck_total_sane CHECK (total_tokens < 1000000000)",
        ]
        for b in POSTGRES_BACKENDS
    },
    **{
        b: [
            "CREATE VIEW daily_totals AS SELECT provider, SUM(total_tokens) AS n FROM llm_usage_events "
            "GROUP BY provider",
            "CREATE TRIGGER alert_big_calls AFTER INSERT ON llm_usage_events FOR EACH ROW "
            "SET @big = NEW.total_tokens > 100000",
            "ALTER TABLE llm_usage_events ADD CONSTRAINT ck_total_sane CHECK (total_tokens < 1000000000)",
        ]
        for b in MYSQL_BACKENDS
    },
}


def test_a_downgrade_refuses_while_a_view_or_trigger_reads_total_tokens(db_url, backend):
    build(db_url, "create_all_build144")
    alembic(db_url, "upgrade", "head")
    before = token_rows(db_url)
    execute(db_url, *READERS[backend])
    message = fails(db_url, "downgrade", "0001")
    assert message.startswith("The downgrade drops total_tokens, which ")
    assert "daily_totals" in message and "alert_big_calls" in message
    for name in ("ix_big_calls", "ck_total_sane"):
        assert name in message or name not in " ".join(READERS[backend])
    assert message.endswith("nothing was changed.")
    assert alembic(db_url, "current").stdout.strip() == "0002 (head)"
    assert token_rows(db_url) == before
    assert HOLDOVER not in table_names(db_url)
    engine = create_engine(db_url)
    with engine.connect() as connection:
        assert "daily_totals" in inspect(connection).get_view_names()
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_downgrade_of_a_table_stamped_without_being_migrated_is_refused(db_url):
    build(db_url, "pre_build144")
    alembic(db_url, "stamp", "head")
    message = fails(db_url, "downgrade", "0001")
    assert message.startswith("llm_usage_events has no total_tokens although the database is stamped 0002")
