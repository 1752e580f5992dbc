"""Old writers across an online upgrade, and MariaDB's online mode.

An online upgrade runs while application instances still run pre-BUILD-144 code. Its fill trigger stays after
the stamp until ``python -m autopack finish-online``, so every row such code inserts or whose splits it updates
(before the schema change, during the backfill, after the stamp) ends with the right total. On MariaDB the
schema change is one ``ALTER … ALGORITHM=INPLACE, LOCK=NONE``; a table it cannot change that way is refused in
one sentence, nothing changed.
"""

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from support import (
    BACKENDS,
    MYSQL_BACKENDS,
    alembic,
    autopack_command,
    columns_of,
    fails,
    finish_online,
    seed_large,
    start_alembic,
    token_rows,
    verify,
)

SERVER_BACKENDS = [b for b in BACKENDS if b != "sqlite"]
OLD_INSERT = (
    "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at, "
    "is_doctor_call) VALUES ('old-code', 'm', 'builder', :prompt, 5, CURRENT_TIMESTAMP, :false)"
)
OLD_UPDATE = "UPDATE llm_usage_events SET prompt_tokens = prompt_tokens + 1 WHERE id = :id"


def old_writer(url, stop: threading.Event, phases: dict, errors: list) -> None:
    """Pre-BUILD-144 code: inserts events with splits only and bumps the prompt split of earlier rows (never
    total_tokens, which it does not know), one commit each, recording how many writes fell in each phase."""
    engine = create_engine(url)
    i = 0
    try:
        with engine.connect() as connection:
            while not stop.is_set():
                i += 1
                connection.execute(text(OLD_INSERT), {"prompt": 100 + i % 50, "false": False})
                connection.execute(text(OLD_UPDATE), {"id": 1 + (i * 7919) % 40_000})
                connection.commit()
                phases[phases["now"]] = phases.get(phases["now"], 0) + 1
                time.sleep(0.005)
    except Exception as error:  # the test asserts there were none
        errors.append(error)
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
@pytest.mark.parametrize("interrupted", [False, True], ids=["straight", "stopped-and-resumed"])
def test_an_old_writer_across_the_whole_online_upgrade_leaves_every_total_right(db_url, interrupted):
    seed_large(db_url, rows=40_000)
    stop, phases, errors = threading.Event(), {"now": "before"}, []
    writer = threading.Thread(target=old_writer, args=(db_url, stop, phases, errors), daemon=True)
    writer.start()
    online = ["-x", "online=true", "-x", "batch_rows=2000"]
    try:
        time.sleep(0.5)
        phases["now"] = "upgrade"
        if interrupted:  # stopped mid-backfill: the fill trigger stays while old code updates filled rows
            paced = ["-x", "batch_pause=100ms", "-x", "progress_every=0"]
            first = start_alembic(db_url, *online, *paced, "upgrade", "head", stdout=subprocess.PIPE)
            for line in first.stderr:
                if "backfill: " in line:
                    break
            first.send_signal(signal.SIGTERM)
            failed, rest = first.communicate(timeout=120)
            assert first.returncode != 0 and "Stopped on SIGTERM between batches" in failed, failed + rest
            phases["now"] = "stopped"
            time.sleep(1.5)
            assert "revision is 0002 or later" in verify(db_url).stdout  # FAIL: the upgrade did not finish
            refused = finish_online(db_url, check=False)
            assert refused.returncode == 3 and "not 0002: an upgrade did not finish" in refused.stderr
        process = start_alembic(db_url, *online, "upgrade", "head")
        _, log = process.communicate(timeout=600)
        assert process.returncode == 0, log
        phases["now"] = "after the stamp"
        time.sleep(1.5)  # old code still writing at head, before finish-online
    finally:
        stop.set()
        writer.join(30)
    assert not errors, errors
    assert phases.get("before") and phases.get("upgrade") and phases.get("after the stamp"), phases
    assert phases.get("stopped") or not interrupted, phases
    assert "run 'python -m autopack finish-online'" in log
    checked = verify(db_url)
    assert checked.returncode == 0, checked.stdout  # the trigger kept every total right: nothing to fill
    assert "fill trigger is still on llm_usage_events" in checked.stdout
    finished = finish_online(db_url)
    assert "Dropped the online upgrade's fill trigger; filled 0 rows" in finished.stdout, finished.stdout
    rows = token_rows(db_url)
    assert len(rows) > 40_000
    wrong = {i: r for i, r in rows.items() if r[2] != (r[0] or 0) + (r[1] or 0)}
    assert wrong == {}, list(wrong.items())[:5]
    again = verify(db_url)
    assert again.returncode == 0 and "fill trigger" not in again.stdout, again.stdout


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_finish_online_fills_what_old_code_wrote_after_the_trigger_went_and_can_run_again(db_url):
    seed_large(db_url, rows=3000)
    alembic(db_url, "-x", "online=true", "upgrade", "head")
    finish_online(db_url)
    engine = create_engine(db_url)
    with engine.begin() as connection:  # old code, still running after finish-online (it should not be)
        for prompt in (7, 8, 9):
            connection.execute(text(OLD_INSERT), {"prompt": prompt, "false": False})
    engine.dispose()
    assert "1 rows with splits still at 0" not in verify(db_url).stdout  # 3 of them
    assert "3 rows with splits still at 0" in verify(db_url).stdout
    finished = finish_online(db_url)
    assert finished.stdout.startswith("No online fill trigger was left on the table")
    assert "filled 3 rows whose total was 0 beside a split" in finished.stdout
    assert sorted(r[2] for r in token_rows(db_url).values() if r[1] == 5 and r[0] in (7, 8, 9)) == [12, 13, 14]
    assert verify(db_url).returncode == 0


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_downgrade_after_an_unfinished_online_upgrade_drops_the_fill_trigger(db_url):
    seed_large(db_url, rows=500)
    alembic(db_url, "-x", "online=true", "upgrade", "head")
    alembic(db_url, "downgrade", "0001")
    engine = create_engine(db_url)
    with engine.begin() as connection:  # old code after the downgrade: no trigger naming total_tokens is left
        connection.execute(text(OLD_INSERT), {"prompt": 1, "false": False})
    engine.dispose()
    alembic(db_url, "upgrade", "head")
    assert verify(db_url).returncode == 0


def test_finish_online_before_the_upgrade_is_one_sentence(db_url):
    alembic(db_url, "upgrade", "0001")
    result = finish_online(db_url, check=False)
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: llm_usage_events has no total_tokens column: run 'alembic upgrade head'")


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_mariadb_online_upgrade_alters_in_place_and_fills_in_batches(db_url):
    seed_large(db_url, rows=20_000)
    up = alembic(db_url, "-x", "online=true", "-x", "batch_rows=3000", "-x", "progress_every=0", "upgrade", "head")
    assert "[1/3] Schema (online, committed): added total_tokens" in up.stderr
    assert len(re.findall(r"backfill: [\d,]+ / 20,000 rows", up.stderr)) == 7
    assert "replica lag is not watched on mysql" in up.stderr
    rows = token_rows(db_url)
    assert all(t == (p or 0) + (c or 0) for p, c, t in rows.values()) and len(rows) == 20_000
    assert columns_of(db_url)["prompt_tokens"]["nullable"]


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_mariadb_online_upgrade_on_a_table_it_cannot_change_without_a_lock_is_refused(db_url):
    seed_large(db_url, rows=100)
    engine = create_engine(db_url)
    with engine.begin() as connection:  # a FULLTEXT index: InnoDB rebuilds it only under a lock
        connection.execute(text("ALTER TABLE llm_usage_events ADD FULLTEXT INDEX ft_model (model)"))
    engine.dispose()
    before = token_rows(db_url)
    message = fails(db_url, "-x", "online=true", "upgrade", "head")
    assert "cannot change llm_usage_events with ALGORITHM=INPLACE, LOCK=NONE (" in message, message
    assert "Fulltext index creation requires a lock" in message and "run without -x online=true" in message
    assert alembic(db_url, "current").stdout.strip() == "0001"
    assert token_rows(db_url) == before and "total_tokens" not in columns_of(db_url)
    alembic(db_url, "upgrade", "head")  # the default mode does it
    assert verify(db_url).returncode == 0


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_mariadb_default_mode_is_one_alter_whose_copy_fills_the_totals(db_url):
    seed_large(db_url, rows=5000)
    up = alembic(db_url, "upgrade", "head")
    assert "[2/3] Backfilled 5000 rows in the ALTER's one table copy" in up.stderr
    assert columns_of(db_url)["total_tokens"]["default"] == "0"
    assert all(t == p + c for p, c, t in token_rows(db_url).values())
    sql = alembic(db_url, "upgrade", "0001:0002", "--sql").stdout
    assert len(re.findall(r"^ALTER TABLE llm_usage_events", sql, re.MULTILINE)) >= 1


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_a_row_the_application_holds_makes_the_batch_retry_not_wait_or_fail(db_url):
    seed_large(db_url, rows=30_000)
    alembic(db_url, "upgrade", "0001")
    engine = create_engine(db_url)
    holder = engine.connect()
    released = threading.Event()

    def hold_then_release() -> None:  # the application keeps one row of a middle batch locked for 3 s
        holder.execute(text("SELECT id FROM llm_usage_events WHERE id = 15000 FOR UPDATE")).all()
        time.sleep(3)
        holder.rollback()
        released.set()

    args = ["-x", "online=true", "-x", "batch_rows=5000", "-x", "online_lock_timeout=1s", "-x", "lock_timeout=30s"]
    process = start_alembic(db_url, *args, "upgrade", "head")
    for line in process.stderr:  # the schema change is committed: now lock the row
        if "[1/3] Schema (online, committed)" in line:
            threading.Thread(target=hold_then_release, daemon=True).start()
            break
    _, log = process.communicate(timeout=300)
    holder.close()
    engine.dispose()
    assert process.returncode == 0, log
    assert released.is_set()
    assert "batch met a row lock held past online_lock_timeout (attempt 1), retrying" in log, log
    assert all(t == p + c for p, c, t in token_rows(db_url).values())


@pytest.mark.parametrize("backend", ["sqlite"])
def test_finish_online_on_a_sqlite_path_with_no_database_creates_none(db_url):
    result = finish_online(db_url, check=False)
    assert result.returncode == 3 and result.stderr.startswith("error: No SQLite database at ")
    assert not Path(db_url.database).exists()


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_mariadb_default_mode_with_an_old_writer_running_fills_its_rows_too(db_url):
    seed_large(db_url, rows=100_000)  # a copy long enough for the writer to insert during and after it
    stop, phases, errors = threading.Event(), {"now": "upgrade"}, []
    writer = threading.Thread(target=old_writer, args=(db_url, stop, phases, errors), daemon=True)
    writer.start()
    try:
        up = alembic(db_url, "upgrade", "head")  # DDL commits at once there: nothing keeps the writer out
    finally:
        stop.set()
        writer.join(30)
    assert not errors and phases.get("upgrade"), (errors, phases)
    assert "in the ALTER's one table copy" in up.stderr
    # rows it inserted after the proof (the default mode leaves no trigger) get theirs; the old rows whose splits it
    # bumped after the copy keep a stale total, which finish-online says (exit 1) and repair-totals repairs
    finished = finish_online(db_url, check=False)
    engine = create_engine(db_url)
    counts = (
        "SELECT SUM(CASE WHEN provider = 'old-code' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN provider = 'old-code' AND total_tokens <> prompt_tokens + completion_tokens THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN total_tokens <> prompt_tokens + completion_tokens THEN 1 ELSE 0 END) FROM llm_usage_events"
    )
    with engine.connect() as connection:
        inserted, wrong, stale = connection.execute(text(counts)).one()
    assert inserted > 0 and wrong == 0, (inserted, wrong)
    if stale:
        assert finished.returncode == 1, finished.stdout + finished.stderr
        assert f"{stale} rows of llm_usage_events still have a total that is not the sum" in finished.stdout
        repaired = autopack_command(db_url, "repair-totals")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert f"Repaired {stale} rows" in repaired.stdout
    else:
        assert finished.returncode == 0, finished.stdout + finished.stderr
    with engine.connect() as connection:
        assert connection.execute(text(counts)).one()[2] == 0
    engine.dispose()
