"""A migration killed, out of disk, or failing halfway leaves the previous revision whole, and a re-run works."""

import sqlite3

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect, text

from autopack.migrations.runtime.connection import migration_engine
from support import MYSQL_BACKENDS, ROOT, ROWS, TRANSACTIONAL_BACKENDS, alembic, kill_midway, seed_large, table_names

# where to SIGKILL: so long after the migration logs this line (the first two land mid-migration for sure)
UPGRADE_KILLS = (("Running upgrade 0001 -> 0002", 0.0), ("[1/3] Schema", 0.0), ("[1/3] Schema", 0.1), ("[2/3]", 0.0))
DOWNGRADE_KILLS = (("Running downgrade 0002 -> 0001", 0.0), ("Set aside", 0.0), ("Set aside", 0.1), ("Set aside", 0.3))


def facts(url) -> dict:
    """Revision, integrity, leftovers, row count and token sums: what a kill must not change."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            columns = "SUM(prompt_tokens), SUM(completion_tokens), COUNT(prompt_tokens), COUNT(completion_tokens)"
            if "total_tokens" in {c for c in _columns(connection)}:
                columns += ", SUM(total_tokens)"
            result = {
                "revision": connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one(),
                "sums": tuple(connection.execute(text(f"SELECT COUNT(*), {columns} FROM llm_usage_events")).one()),
            }
            if connection.dialect.name == "sqlite":
                result["integrity"] = connection.exec_driver_sql("PRAGMA integrity_check").scalar_one()
    finally:
        engine.dispose()
    result["leftovers"] = sorted(t for t in table_names(url) if t.startswith("_alembic_tmp"))
    return result


def _columns(connection) -> list[str]:
    return [c["name"] for c in inspect(connection).get_columns("llm_usage_events")]


@pytest.mark.parametrize("backend", TRANSACTIONAL_BACKENDS)
def test_sigkill_at_any_point_leaves_the_previous_revision_whole(db_url):
    seed_large(db_url)
    start = facts(db_url)
    assert start["revision"] == "0001" and start.get("integrity", "ok") == "ok"

    interrupted = 0
    for marker, delay in UPGRADE_KILLS:
        kill_midway(db_url, ["upgrade", "head"], marker, delay)
        now = facts(db_url)
        if now["revision"] == "0002":  # the kill came after the commit: then all of it is there
            break
        interrupted += 1
        assert now == start, f"killed {delay}s after {marker!r}"
    assert interrupted >= 2, "no kill landed inside the upgrade: make the table larger"
    alembic(db_url, "upgrade", "head")
    upgraded = facts(db_url)
    assert upgraded["revision"] == "0002" and upgraded["leftovers"] == []
    assert upgraded["sums"][:5] == start["sums"] and upgraded["sums"][5] == start["sums"][1] + start["sums"][2]

    engine = create_engine(db_url)
    with engine.begin() as connection:  # total-only rows, so the downgrade has rows to set aside
        connection.execute(
            text("UPDATE llm_usage_events SET prompt_tokens = NULL, completion_tokens = NULL WHERE id % 7 = 0")
        )
    engine.dispose()
    before_down = facts(db_url)
    interrupted = 0
    for marker, delay in DOWNGRADE_KILLS:
        kill_midway(db_url, ["downgrade", "0001"], marker, delay)
        now = facts(db_url)
        if now["revision"] == "0001":
            break
        interrupted += 1
        assert now == before_down, f"killed {delay}s after {marker!r}"
        assert "llm_usage_events_build144_holdover" not in table_names(db_url)
    assert interrupted >= 2, "no kill landed inside the downgrade: make the table larger"
    if now["revision"] != "0001":
        alembic(db_url, "downgrade", "0001")
    alembic(db_url, "upgrade", "head")
    assert facts(db_url) == before_down


def as_int_typed(url) -> None:
    """Re-create the table with ``INT`` splits: still a known state, but one the in-place edit will not touch,
    so the upgrade takes the rebuild path."""
    with sqlite3.connect(url.database) as connection:
        (sql,) = connection.execute("SELECT sql FROM sqlite_master WHERE name = 'llm_usage_events'").fetchone()
        connection.execute("ALTER TABLE llm_usage_events RENAME TO old_events")
        connection.execute(sql.replace("prompt_tokens INTEGER", "prompt_tokens INT"))
        connection.execute("INSERT INTO llm_usage_events SELECT * FROM old_events")
        connection.execute("DROP TABLE old_events")
    with sqlite3.connect(url.database) as connection:
        connection.execute("VACUUM")  # no free pages left over for the rebuild to reuse


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("path", ["in place", "rebuild"])
def test_disk_full_midway_rolls_back_and_a_rerun_succeeds(db_url, path):
    seed_large(db_url, rows=50_000)
    if path == "rebuild":
        as_int_typed(db_url)
    start = facts(db_url)
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["configure_logger"] = False
    engine = migration_engine(db_url, busy_timeout_s=5, lock_timeout="10s")
    with engine.connect() as connection:
        raw = connection.connection.driver_connection  # before any BEGIN: the limit holds for this connection
        pages = raw.execute("PRAGMA page_count").fetchone()[0]
        raw.execute(f"PRAGMA max_page_count = {pages + 50}")  # the backfill or the rebuild needs far more
        config.attributes["connection"] = connection
        with pytest.raises(Exception, match="database or disk is full"):
            command.upgrade(config, "head")
    engine.dispose()
    assert facts(db_url) == start
    up = alembic(db_url, "upgrade", "head")
    assert ("is rebuilt" in up.stderr) == (path == "rebuild")
    done = facts(db_url)
    assert done["revision"] == "0002" and done["sums"][5] == start["sums"][1] + start["sums"][2]


@pytest.mark.parametrize("backend", TRANSACTIONAL_BACKENDS)
def test_failure_after_the_rebuild_before_the_backfill_ends_rolls_everything_back(db_url):
    seed_large(db_url, rows=20_000)
    start = facts(db_url)
    engine = create_engine(db_url)
    with engine.begin() as connection:
        # fault injection with the engine's own trigger: the backfill UPDATE fails on the last row it reaches
        if connection.dialect.name == "postgresql":
            connection.execute(
                text(
                    "CREATE FUNCTION fail_backfill() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'injected failure in the backfill'; END $$"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER fail_backfill BEFORE UPDATE ON llm_usage_events FOR EACH ROW "
                    "WHEN (NEW.id = 20000) EXECUTE FUNCTION fail_backfill()"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE TRIGGER fail_backfill BEFORE UPDATE ON llm_usage_events WHEN NEW.id = 20000 "
                    "BEGIN SELECT RAISE(ABORT, 'injected failure in the backfill'); END"
                )
            )
    engine.dispose()

    result = alembic(db_url, "upgrade", "head", check=False)
    assert result.returncode != 0
    assert "[1/3] Schema: added total_tokens" in result.stderr  # the rebuild was done
    # one sentence now, naming the error and the trigger that caused it (was a traceback)
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED: ")]
    assert len(failed) == 1 and "injected failure in the backfill" in failed[0], result.stdout + result.stderr
    assert "trigger fail_backfill" in failed[0] and "Traceback" not in result.stderr
    assert "[2/3]" not in result.stderr
    assert facts(db_url) == start
    assert "total_tokens" not in _column_names(db_url)

    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("DROP TRIGGER fail_backfill" + (" ON llm_usage_events" if _is_pg(db_url) else "")))
    engine.dispose()
    alembic(db_url, "upgrade", "head")
    done = facts(db_url)
    assert done["revision"] == "0002" and done["sums"][5] == start["sums"][1] + start["sums"][2]


def _is_pg(url) -> bool:
    return url.get_backend_name() == "postgresql"


def _column_names(url) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return _columns(connection)
    finally:
        engine.dispose()


def test_sqlite_wal_database_survives_a_kill(tmp_path):
    from sqlalchemy.engine import make_url

    url = make_url(f"sqlite:///{tmp_path / 'wal.db'}")
    seed_large(url, rows=ROWS)
    with sqlite3.connect(url.database) as connection:
        assert connection.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)
    start = facts(url)
    assert kill_midway(url, ["upgrade", "head"], "[1/3] Schema", 0.0)
    assert facts(url) == start
    alembic(url, "upgrade", "head")
    assert facts(url)["revision"] == "0002"


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_mysql_killed_midway_converges_on_rerun(db_url):
    """MySQL's DDL commits as it goes, so a kill can leave the schema changed at the old revision: the revision
    only does what is missing, so re-running finishes the job with every row right, both directions."""
    seed_large(db_url, rows=100_000)
    start = facts(db_url)
    kill_midway(db_url, ["upgrade", "head"], "[1/3] Schema", 0.0)
    alembic(db_url, "upgrade", "head")
    upgraded = facts(db_url)
    assert upgraded["revision"] == "0002"
    assert upgraded["sums"][:5] == start["sums"] and upgraded["sums"][5] == start["sums"][1] + start["sums"][2]
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE llm_usage_events SET prompt_tokens = NULL, completion_tokens = NULL WHERE id % 7 = 0")
        )
    engine.dispose()
    before_down = facts(db_url)
    kill_midway(db_url, ["downgrade", "0001"], "Set aside", 0.0)
    if facts(db_url)["revision"] != "0001":
        alembic(db_url, "downgrade", "0001")
    alembic(db_url, "upgrade", "head")
    assert facts(db_url) == before_down
