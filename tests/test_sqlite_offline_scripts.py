"""SQLite offline scripts, applied the ways people apply SQL files, end fully migrated with every object of the
operator's kept and every total unchanged, or leave the database as it was."""

import sqlite3
import subprocess

import pytest

from legacy import STATES, build, expected_total
from support import alembic, columns_of, current, token_rows

APPLY = ("sqlite3", "sqlite3 -bail", "executescript")


def apply(path, script: str, how: str) -> str:
    """Apply ``script`` to the file at ``path`` as a DBA would; returns what the client printed on errors."""
    if how == "executescript":
        connection = sqlite3.connect(path)
        try:
            connection.executescript(script)
            return ""
        except sqlite3.Error as error:
            return str(error)
        finally:
            connection.close()  # an open transaction is rolled back
    command = ["sqlite3", *(["-bail"] if how.endswith("-bail") else []), str(path)]
    return subprocess.run(command, input=script, capture_output=True, text=True, timeout=60).stderr


def objects(path) -> list[tuple]:
    connection = sqlite3.connect(path)
    found = connection.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'view', 'trigger')"
        " AND tbl_name <> 'llm_usage_events_build144_holdover' ORDER BY name"
    ).fetchall()
    connection.close()
    return found


def script(url, *args) -> str:
    return alembic(url, *args, "--sql").stdout


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("how", APPLY)
def test_the_upgrade_script_keeps_views_and_triggers_and_the_downgrade_script_reverses_it(db_url, how):
    alembic(db_url, "upgrade", "0001")
    connection = sqlite3.connect(db_url.database)
    connection.executescript("""
        CREATE TABLE audit (event_id INTEGER, at TEXT);
        CREATE VIEW daily AS SELECT provider, count(*) AS n FROM llm_usage_events GROUP BY provider;
        CREATE TRIGGER audit_insert AFTER INSERT ON llm_usage_events BEGIN
            INSERT INTO audit VALUES (NEW.id, NEW.created_at); END;
        CREATE INDEX ix_ops_role ON llm_usage_events (role, created_at);
        DROP INDEX ix_llm_usage_events_is_doctor_call;  -- as upstream's doctor-columns script left tables
        INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at,
            is_doctor_call) VALUES ('p', 'm', 'builder', 12500, 3200, '2025-11-01', 0), ('q', 'm', 'r', 0, 7, 'x', 0);
    """)
    connection.close()
    before = objects(db_url.database)

    printed = apply(db_url.database, script(db_url, "upgrade", "0001:0002"), how)
    assert printed == "", printed
    assert current(db_url) == "0002 (head)"
    assert token_rows(db_url) == {1: (12500, 3200, 15700), 2: (0, 7, 7)}
    doctor_index = "ix_llm_usage_events_is_doctor_call"  # built by the script, beside everything that was there
    assert [o for o in objects(db_url.database) if o[1] != doctor_index] == before
    assert doctor_index in [o[1] for o in objects(db_url.database)]
    columns = columns_of(db_url)
    assert columns["prompt_tokens"]["nullable"] and not columns["total_tokens"]["nullable"]
    connection = sqlite3.connect(db_url.database)  # the operator's audit trigger still writes
    connection.execute(
        "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at,"
        " is_doctor_call) VALUES ('p', 'm', 'builder', 18500, '2025-11-02', 0)"
    )
    connection.commit()
    assert connection.execute("SELECT count(*) FROM audit").fetchone() == (3,)  # 2 seeded, 1 now
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    connection.close()

    printed = apply(db_url.database, script(db_url, "downgrade", "0002:0001"), how)
    assert printed == "", printed
    assert current(db_url) == "0001"
    assert [o for o in objects(db_url.database) if o[1] != doctor_index] == before  # the index stays: the baseline's
    assert doctor_index in [o[1] for o in objects(db_url.database)]
    assert token_rows(db_url) == {1: (12500, 3200), 2: (0, 7), 3: (0, 0)}
    alembic(db_url, "upgrade", "head")  # the set-aside total-only row comes back
    assert token_rows(db_url)[3] == (None, None, 18500)


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("how", APPLY)
@pytest.mark.parametrize("state", STATES)
def test_the_upgrade_script_on_a_legacy_state_adopted_at_0001_never_changes_a_total(db_url, state, how):
    build(db_url, state)
    legacy = token_rows(db_url)
    alembic(db_url, "upgrade", "0001")  # adopt, as docs/offline-scripts.md says, then apply the DBA's script
    upgrade = script(db_url, "upgrade", "0001:0002")
    apply(db_url.database, upgrade, how)
    after = token_rows(db_url)
    if current(db_url) == "0002 (head)":
        assert {i: r[2] for i, r in after.items()} == {
            i: expected_total(*r, *([None] * (3 - len(r)))) for i, r in legacy.items()
        }
        columns = columns_of(db_url)
        assert columns["prompt_tokens"]["nullable"] and columns["completion_tokens"]["nullable"]
    else:  # refused as a whole: nothing changed
        assert current(db_url) == "0001" and after == legacy
    # applied twice, as a DBA re-running it would: nothing changes the second time
    once = token_rows(db_url)
    apply(db_url.database, upgrade, how)
    assert token_rows(db_url) == once


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_script_whose_table_does_not_end_migrated_is_rolled_back_whole(db_url):
    alembic(db_url, "upgrade", "0001")
    connection = sqlite3.connect(db_url.database)  # a definition the script's text edit does not recognise
    sql = connection.execute("SELECT sql FROM sqlite_master WHERE name = 'llm_usage_events'").fetchone()[0]
    connection.execute("PRAGMA writable_schema = ON")
    odd = sql.replace("prompt_tokens INTEGER NOT NULL", "prompt_tokens  INTEGER  NOT NULL")
    connection.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'llm_usage_events'", (odd,))
    connection.commit()
    connection.close()
    connection = sqlite3.connect(db_url.database)
    connection.execute(
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens,"
        " created_at, is_doctor_call) VALUES ('p', 'm', 'builder', 5, 6, '2025-11-01', 0)"
    )
    connection.commit()
    connection.close()
    printed = apply(db_url.database, script(db_url, "upgrade", "0001:0002"), "sqlite3")
    assert "did not end in the state of revision 0002" in printed
    assert current(db_url) == "0001"
    assert "total_tokens" not in columns_of(db_url)
    assert token_rows(db_url) == {1: (5, 6)}
