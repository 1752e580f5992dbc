"""Operators' real databases (no alembic_version) through the real CLI: upgrade, downgrade, upgrade again."""

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, inspect, text

from legacy import STATES, Varchar, build, expected_total
from support import alembic, table_names

DOCTOR_INDEX = "ix_llm_usage_events_is_doctor_call"

DETECTED = {
    "pre_build144": "pre-BUILD-144 (splits NOT NULL, no total_tokens)",
    "splits_nullable": "intermediate release (splits nullable, no total_tokens)",
    "old_script": "old BUILD-144 script (total_tokens added, splits still NOT NULL)",
    "create_all_build144": "full BUILD-144 schema made by create_all()",
}


def snapshot(url) -> dict:
    """Everything an operator would not want to lose, read back as plain values."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:

            def rows(sql):
                return [dict(r._mapping) for r in connection.execute(text(sql))]

            inspector = inspect(connection)
            integrity = (
                connection.exec_driver_sql("PRAGMA integrity_check").scalar()
                if connection.dialect.name == "sqlite"
                else "ok"
            )
            return {
                "integrity": integrity,
                "events": {r["id"]: r for r in rows("SELECT * FROM llm_usage_events ORDER BY id")},
                "projects": rows("SELECT * FROM projects ORDER BY id"),
                "annotations": rows("SELECT * FROM usage_annotations ORDER BY id"),
                "indexes": {i["name"]: i["column_names"] for i in inspector.get_indexes("llm_usage_events")},
                "columns": {c["name"]: c["nullable"] for c in inspector.get_columns("llm_usage_events")},
                "view": rows("SELECT * FROM v_usage_by_provider ORDER BY provider"),
                "child_fks": [fk["referred_table"] for fk in inspector.get_foreign_keys("usage_annotations")],
            }
    finally:
        engine.dispose()


@pytest.mark.parametrize("state", STATES)
def test_legacy_database_upgrades_downgrades_and_upgrades_losing_nothing(db_url, state):
    build(db_url, state)
    legacy = snapshot(db_url)

    up = alembic(db_url, "upgrade", "head")
    assert f"detected state: {DETECTED[state]}" in up.stderr
    upgraded = snapshot(db_url)
    for event_id, old in legacy["events"].items():
        new = upgraded["events"][event_id]
        want_total = expected_total(old["prompt_tokens"], old["completion_tokens"], old.get("total_tokens"))
        assert new == {**old, "total_tokens": want_total}, f"row {event_id}"
    assert upgraded["events"].keys() == legacy["events"].keys()
    for kept in ("projects", "annotations", "child_fks", "view"):
        assert upgraded[kept] == legacy[kept]
    # the operator's ix_ops_provider_created included; 0003 builds the is_doctor_call index, or adopts the one a
    # later Autopack's create_all() made (the create_all_build144 state has it)
    assert upgraded["indexes"] == {**legacy["indexes"], DOCTOR_INDEX: ["is_doctor_call"]}
    adopted = f"Index: {DOCTOR_INDEX} already there (adopted)" in up.stderr
    assert adopted == (DOCTOR_INDEX in legacy["indexes"]) == (state == "create_all_build144")
    assert upgraded["columns"]["total_tokens"] is False
    assert upgraded["columns"]["prompt_tokens"] and upgraded["columns"]["completion_tokens"]
    assert "No new upgrade operations detected." in alembic(db_url, "check").stdout

    need_keeping = [
        r
        for r in upgraded["events"].values()
        if (
            r["prompt_tokens"] is None
            or r["completion_tokens"] is None
            or r["total_tokens"] != r["prompt_tokens"] + r["completion_tokens"]
        )
    ]
    down = alembic(db_url, "downgrade", "0001")
    if need_keeping:
        assert f"Set aside {len(need_keeping)} rows" in down.stderr
    else:
        assert "No rows needed setting aside" in down.stderr
    downgraded = snapshot(db_url)
    assert "total_tokens" not in downgraded["columns"]
    assert not downgraded["columns"]["prompt_tokens"] and not downgraded["columns"]["completion_tokens"]
    for event_id, row in upgraded["events"].items():
        assert downgraded["events"][event_id] == {
            **{k: v for k, v in row.items() if k != "total_tokens"},
            "prompt_tokens": row["prompt_tokens"] or 0,
            "completion_tokens": row["completion_tokens"] or 0,
        }
    assert downgraded["annotations"] == legacy["annotations"]

    again = alembic(db_url, "upgrade", "head")
    if need_keeping:
        assert f"Restored {len(need_keeping)} of {len(need_keeping)} rows" in again.stderr
    assert snapshot(db_url) == upgraded
    assert "llm_usage_events_build144_holdover" not in table_names(db_url)


def test_a_table_matching_no_known_state_is_refused_and_left_unchanged(db_url):
    metadata = MetaData()
    Table(
        "llm_usage_events",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("provider", Varchar, nullable=False),
        Column("prompt_tokens", Integer, nullable=False),
        Column("completion_tokens", Integer, nullable=False),
    )
    engine = create_engine(db_url)
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO llm_usage_events VALUES (1, 'openai', 10, 20)"))
    engine.dispose()

    result = alembic(db_url, "upgrade", "head", check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.strip().startswith(
        "FAILED: Existing llm_usage_events matches no known Autopack schema: missing"
    )
    assert "nothing was changed" in result.stdout
    engine = create_engine(db_url)
    with engine.connect() as connection:
        if connection.dialect.name == "mysql":  # DDL is not transactional: Alembic's version table stays, empty
            assert table_names(db_url) == {"llm_usage_events", "alembic_version"}
            assert connection.execute(text("SELECT COUNT(*) FROM alembic_version")).scalar() == 0
        else:
            assert table_names(db_url) == {"llm_usage_events"}  # not even alembic_version
        assert connection.execute(text("SELECT * FROM llm_usage_events")).all() == [(1, "openai", 10, 20)]
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_definition_the_in_place_edit_does_not_recognise_is_rebuilt_keeping_everything(db_url):
    """``INT`` instead of ``INTEGER``: still a known state, but not text the in-place edit will touch."""
    engine = create_engine(db_url)
    with engine.begin() as connection:
        for statement in (
            "CREATE TABLE llm_usage_events (id INTEGER PRIMARY KEY, provider VARCHAR NOT NULL, model VARCHAR NOT NULL,"
            " run_id VARCHAR, phase_id VARCHAR, role VARCHAR NOT NULL, prompt_tokens INT NOT NULL,"
            " completion_tokens INT NOT NULL, created_at DATETIME NOT NULL, is_doctor_call BOOLEAN NOT NULL,"
            " doctor_model VARCHAR, doctor_action VARCHAR)",
            "CREATE INDEX ix_big_prompts ON llm_usage_events (prompt_tokens) WHERE prompt_tokens > 1000",
            "CREATE TABLE usage_annotations (id INTEGER PRIMARY KEY,"
            " event_id INTEGER NOT NULL REFERENCES llm_usage_events (id) ON DELETE CASCADE, note VARCHAR)",
            "CREATE TABLE audit (event_id INTEGER)",
            "CREATE TRIGGER audit_insert AFTER INSERT ON llm_usage_events BEGIN INSERT INTO audit VALUES (new.id); END",
            "CREATE VIEW v_usage_by_provider AS SELECT provider, SUM(prompt_tokens) AS prompt_sum"
            " FROM llm_usage_events GROUP BY provider",
            "INSERT INTO llm_usage_events VALUES (1, 'openai', 'gpt-4o', NULL, NULL, 'builder', 5000, 70,"
            " '2025-01-01 00:00:00', 0, NULL, NULL), (2, 'google', 'gemini', NULL, NULL, 'builder', 3, 4,"
            " '2025-01-01 00:00:00', 0, NULL, NULL)",
            "INSERT INTO usage_annotations (event_id, note) VALUES (1, 'a'), (2, 'b')",
            "DELETE FROM audit",
        ):
            connection.execute(text(statement))
    engine.dispose()

    up = alembic(db_url, "upgrade", "head")
    assert "llm_usage_events is rebuilt (drop NOT NULL on prompt_tokens: found 0 matching column definitions)" in (
        up.stderr
    )
    engine = create_engine(db_url)
    with engine.begin() as connection:
        assert connection.execute(text("SELECT id, total_tokens FROM llm_usage_events ORDER BY id")).all() == [
            (1, 5070),
            (2, 7),
        ]
        assert connection.execute(text("SELECT COUNT(*) FROM usage_annotations")).scalar() == 2
        objects = dict(
            connection.execute(text("SELECT name, type FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")).all()
        )
        assert {k: objects.get(k) for k in ("ix_big_prompts", "audit_insert", "v_usage_by_provider")} == {
            "ix_big_prompts": "index",
            "audit_insert": "trigger",
            "v_usage_by_provider": "view",
        }
        connection.execute(
            text(
                "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at, is_doctor_call)"
                " VALUES ('google', 'gemini', 'builder', 900, '2025-01-02 00:00:00', 0)"
            )
        )
        assert connection.execute(text("SELECT event_id FROM audit")).all() == [(3,)]  # the trigger still fires
    engine.dispose()

    alembic(db_url, "downgrade", "0001")
    alembic(db_url, "upgrade", "head")
    engine = create_engine(db_url)
    with engine.connect() as connection:
        assert connection.execute(
            text("SELECT id, prompt_tokens, completion_tokens, total_tokens FROM llm_usage_events ORDER BY id")
        ).all() == [(1, 5000, 70, 5070), (2, 3, 4, 7), (3, None, None, 900)]
        assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        assert connection.execute(text("SELECT COUNT(*) FROM usage_annotations")).scalar() == 2
    engine.dispose()
