"""Large-table paths: progress lines, and PostgreSQL's online mode (committed batches, resume after a kill,
concurrent writers). Timing lives in benchmarks/, not here: these tests check rows, revisions and locks."""

import re
import signal
import subprocess
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from support import (
    POSTGRES_BACKENDS,
    alembic,
    finish_online,
    kill_midway,
    seed_large,
    start_alembic,
    table_names,
    wait_until_alone,
)

ROWS = 60_000


def assert_totals_right(url) -> int:
    """Every row's total is what the rule gives: the sum of its splits, or its own total when total-only."""
    engine = create_engine(url)
    with engine.connect() as connection:
        wrong = connection.execute(
            text(
                "SELECT COUNT(*) FROM llm_usage_events"
                " WHERE (prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL)"
                " AND total_tokens <> COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)"
            )
        ).scalar()
        rows = connection.execute(text("SELECT COUNT(*) FROM llm_usage_events")).scalar()
    engine.dispose()
    assert wrong == 0
    return rows


def revision(url) -> str:
    engine = create_engine(url)
    with engine.connect() as connection:
        value = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    return value


def pg_objects(url) -> tuple[int, int]:
    engine = create_engine(url)
    with engine.connect() as connection:
        triggers = connection.execute(text("SELECT COUNT(*) FROM pg_trigger WHERE tgname LIKE '%build144%'")).scalar()
        functions = connection.execute(text("SELECT COUNT(*) FROM pg_proc WHERE proname LIKE '%build144%'")).scalar()
    engine.dispose()
    return triggers, functions


def test_backfill_logs_progress_lines_up_to_every_row(db_url, backend):
    seed_large(db_url, rows=ROWS)
    batches = ["-x", "online=true"] if backend != "sqlite" else []  # the default there: one rewrite, one copy
    up = alembic(db_url, "-x", "progress_every=0", "-x", "batch_rows=10000", *batches, "upgrade", "head")
    lines = re.findall(
        r"backfill: ([\d,]+) / ([\d,]+) rows \(([\d.]+)%\), ([\d.]+)s elapsed, ([\d,]+) rows/s", up.stderr
    )
    done = [int(d.replace(",", "")) for d, *_ in lines]
    assert done == [10_000 * i for i in range(1, 7)]
    assert {t for _, t, *_ in lines} == {f"{ROWS:,}"}
    assert [float(p) for _, _, p, *_ in lines][-1] == 100.0
    etas = re.findall(r"rows/s, about (\d+)s left", up.stderr)
    assert len(etas) == len(lines) and etas[-1] == "0"
    assert assert_totals_right(db_url) == ROWS


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_table_rewrite_says_while_it_runs_that_it_still_does(db_url):
    seed_large(db_url, rows=300_000)
    up = alembic(db_url, "-x", "progress_every=0.001", "upgrade", "head")  # a line a second (at least 1 s apart)
    assert "backfill: one table rewrite, 300,000 of 300,000 rows to fill" in up.stderr, up.stderr
    seconds = [float(s) for s in re.findall(r"table rewrite: still running, (\d+)s elapsed", up.stderr)]
    assert seconds == sorted(seconds) and "Backfilled 300000 rows in one table rewrite" in up.stderr
    assert assert_totals_right(db_url) == 300_000


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_online_upgrade_commits_the_schema_then_batches_and_cleans_up(db_url):
    seed_large(db_url, rows=ROWS)
    up = alembic(db_url, "-x", "online=true", "-x", "batch_rows=7000", "upgrade", "head")
    assert "[1/3] Schema (online, committed): added total_tokens" in up.stderr
    assert f"total rows {ROWS}" in up.stderr
    assert revision(db_url) == "0002"
    assert assert_totals_right(db_url) == ROWS
    assert pg_objects(db_url) == (1, 1)  # the fill trigger stays for old writers until finish-online
    assert "once every instance runs BUILD-144 code, run 'python -m autopack finish-online'" in up.stderr
    assert "No new upgrade operations detected." in alembic(db_url, "check").stdout
    assert "Dropped the online upgrade's fill trigger; filled 0 rows" in finish_online(db_url).stdout
    assert pg_objects(db_url) == (0, 0)


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_online_upgrade_killed_mid_backfill_resumes_and_stamps_only_when_done(db_url):
    seed_large(db_url, rows=200_000)
    args = ["-x", "online=true", "-x", "batch_rows=2000", "upgrade", "head"]
    assert kill_midway(db_url, args, "[1/3] Schema (online, committed)", 0.3)
    assert revision(db_url) == "0001"  # not stamped: the backfill did not finish
    engine = create_engine(db_url)
    with engine.connect() as connection:
        # the killed client's server process may still finish (and commit) the batch it was running
        wait_until_alone(connection)
        done, left = connection.execute(
            text(
                "SELECT SUM(CASE WHEN total_tokens > 0 THEN 1 ELSE 0 END),"
                " SUM(CASE WHEN total_tokens = 0 AND prompt_tokens + completion_tokens > 0 THEN 1 ELSE 0 END)"
                " FROM llm_usage_events"
            )
        ).one()
    engine.dispose()
    assert done > 0 and left > 0, "the kill should land inside the backfill"
    again = alembic(db_url, *args)
    assert f"[2/3] Backfilled {left} rows" in again.stderr  # only what was left
    assert revision(db_url) == "0002"
    assert assert_totals_right(db_url) == 200_000
    assert pg_objects(db_url) == (1, 1)


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_online_upgrade_with_old_and_new_code_writing_meanwhile(db_url):
    seed_large(db_url, rows=200_000)
    stop = threading.Event()
    written = {"old": 0, "new": 0, "updated": 0}

    def writer():
        engine = create_engine(db_url)
        i = 0
        with engine.connect() as connection:
            while not stop.is_set():
                i += 1
                connection.execute(
                    text(  # pre-BUILD-144 code: knows nothing of total_tokens
                        "INSERT INTO llm_usage_events"
                        " (provider, model, role, prompt_tokens, completion_tokens, created_at, is_doctor_call)"
                        " VALUES ('old', 'm', 'builder', :p, 5, now(), false)"
                    ),
                    {"p": i},
                )
                written["old"] += 1
                connection.execute(
                    text("UPDATE llm_usage_events SET prompt_tokens = prompt_tokens + 1 WHERE id = :id"),
                    {"id": 1 + (i * 7919) % 200_000},
                )
                written["updated"] += 1
                if "total_tokens" in table_columns(connection):  # BUILD-144 code, once the column exists
                    connection.execute(
                        text(
                            "INSERT INTO llm_usage_events"
                            " (provider, model, role, total_tokens, created_at, is_doctor_call)"
                            " VALUES ('new', 'm', 'builder', 777, now(), false)"
                        )
                    )
                    written["new"] += 1
                connection.commit()
        engine.dispose()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        marker_seen = run_online_to_the_end(db_url, stop)
    finally:
        stop.set()
        thread.join(30)
    assert marker_seen
    assert written["old"] > 10 and written["new"] > 0 and written["updated"] > 10
    assert revision(db_url) == "0002"
    assert assert_totals_right(db_url) == 200_000 + written["old"] + written["new"]
    engine = create_engine(db_url)
    with engine.connect() as connection:
        assert (
            connection.execute(
                text(
                    "SELECT COUNT(*) FROM llm_usage_events WHERE provider = 'new' AND total_tokens = 777"
                    " AND prompt_tokens IS NULL"
                )
            ).scalar()
            == written["new"]
        )
    engine.dispose()
    assert "llm_usage_events_build144_holdover" not in table_names(db_url)


def table_columns(connection) -> set[str]:
    query = "SELECT column_name FROM information_schema.columns WHERE table_name = 'llm_usage_events'"
    return set(connection.execute(text(query)).scalars())


def run_online_to_the_end(url, stop: threading.Event) -> bool:
    """Run the online upgrade to its end; stop the writer once the backfill is done (before the trigger goes)."""
    process = start_alembic(url, "-x", "online=true", "-x", "batch_rows=2000", "upgrade", "head")
    seen = False
    output = []
    for line in process.stderr:
        output.append(line)
        if "[2/3] Backfilled" in line:
            seen = True
            stop.set()
    assert process.wait() == 0, "".join(output)
    return seen


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_online_backfill_between_batches_and_a_rerun_resumes_without_redoing(db_url, signum):
    seed_large(db_url, rows=300_000)
    args = ["-x", "online=true", "-x", "batch_rows=5000", "-x", "progress_every=0", "upgrade", "head"]
    process = start_alembic(db_url, *args, stdout=subprocess.PIPE)
    for line in process.stderr:
        if "backfill: 20,000 / " in line:
            break
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0]
    failed = [line for line in output.splitlines() if line.startswith("FAILED: ")]
    assert process.returncode != 0 and failed == [
        f"FAILED: Stopped on {signum.name} between batches, every batch done so far committed: the revision stays "
        "0001 and re-running the same command resumes where it stopped."
    ], output
    assert revision(db_url) == "0001"
    engine = create_engine(db_url)
    with engine.connect() as connection:
        done = dict(
            connection.execute(text("SELECT id, xmin::text FROM llm_usage_events WHERE total_tokens <> 0")).all()
        )
    engine.dispose()
    assert 20_000 <= len(done) < 300_000
    alembic(db_url, "-x", "online=true", "upgrade", "head")
    assert revision(db_url) == "0002" and assert_totals_right(db_url) == 300_000
    engine = create_engine(db_url)
    with engine.connect() as connection:
        after = dict(connection.execute(text("SELECT id, xmin::text FROM llm_usage_events")).all())
    engine.dispose()
    assert {i: after[i] for i in done} == done  # no row done twice: those rows were not written again


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_signal_during_the_last_batch_still_stops_before_the_stamp(db_url):
    """The run says 'stopping after the batch running now': when that batch was the last, it must still stop, not
    stamp 0002 and exit 0."""
    seed_large(db_url, rows=300_000)
    args = ["-x", "online=true", "-x", "batch_rows=300000", "upgrade", "head"]
    process = start_alembic(db_url, *args, stdout=subprocess.PIPE)
    for line in process.stderr:
        if "[1/3] Schema (online, committed)" in line:
            break
    time.sleep(0.3)  # inside the one batch
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0 and "FAILED: Stopped on SIGINT between batches" in output, output
    assert revision(db_url) == "0001"
    alembic(db_url, "-x", "online=true", "upgrade", "head")
    assert revision(db_url) == "0002" and assert_totals_right(db_url) == 300_000
