"""Online runs stopped midway and the fill trigger among the operator's own triggers.

- PostgreSQL fires a table's BEFORE ROW triggers in name order: the fill trigger runs last, so an operator's
  trigger that changes a split on INSERT is summed as stored.
- MariaDB commits each DDL statement: a re-run of a stopped online upgrade replaces its fill triggers in place
  (``CREATE OR REPLACE``) instead of dropping and re-creating them, so there is never a moment without them.
- Ctrl-C or SIGTERM outside the batches (the schema change waiting for its lock, ``finish-online``) is one
  sentence saying what the stop leaves, never a traceback or a silent exit; a signal cuts ``batch_pause`` short.
- Throttling options without ``-x online=true`` are refused, not silently ignored; a batch that gives up on a
  row the application holds says so, not the default mode's lock_timeout sentence.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from support import (
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    ROOT,
    alembic,
    execute,
    fails,
    finish_online,
    scalar,
    seed_large,
    start_alembic,
    token_rows,
    verify,
)

SERVER_BACKENDS = [*POSTGRES_BACKENDS, *MYSQL_BACKENDS]
OLD_INSERT = (
    "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at, "
    "is_doctor_call) VALUES ('old-code', 'm', 'builder', 9000, 100, CURRENT_TIMESTAMP, false)"
)


HOLD = "SELECT id FROM llm_usage_events WHERE id = 1 FOR UPDATE"  # an open application transaction on the table


def stopped_on(process, sig: signal.Signals, marker: str, after_s: float = 0.0) -> tuple[int, str]:
    """Send ``sig`` ``after_s`` after ``marker`` is in the process's log; (exit status, everything it printed)."""
    seen = []
    for line in process.stderr:
        seen.append(line)
        if marker in line:
            break
    time.sleep(after_s)
    process.send_signal(sig)
    out, rest = process.communicate(timeout=120)
    return process.returncode, "".join(seen) + rest + (out or "")


def one_sentence(output: str) -> str:
    assert "Traceback" not in output, output
    failed = [line for line in output.splitlines() if line.startswith("FAILED: ")]
    assert len(failed) == 1, output
    return failed[0]


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_the_fill_trigger_runs_after_the_operators_own_before_trigger(db_url):
    seed_large(db_url, rows=2_000)
    execute(
        db_url,
        "CREATE FUNCTION cap_prompt() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "NEW.prompt_tokens := LEAST(NEW.prompt_tokens, 4000); RETURN NEW; END $$",
        "CREATE TRIGGER trg_cap_prompt BEFORE INSERT ON llm_usage_events FOR EACH ROW EXECUTE FUNCTION cap_prompt()",
    )
    alembic(db_url, "-x", "online=true", "upgrade", "head")
    execute(db_url, OLD_INSERT)  # pre-BUILD-144 code, after the stamp, before finish-online
    newest = scalar(db_url, "SELECT MAX(id) FROM llm_usage_events")
    assert token_rows(db_url)[newest] == (4000, 100, 4100)  # was 9100: the fill summed the split before the cap


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_a_mariadb_rerun_never_leaves_the_table_without_its_fill_triggers(db_url):
    seed_large(db_url, rows=30_000)
    paced = ["-x", "online=true", "-x", "batch_rows=500", "-x", "batch_pause=50ms", "-x", "progress_every=0"]
    status, output = stopped_on(
        start_alembic(db_url, *paced, "upgrade", "head", stdout=-1), signal.SIGTERM, "backfill: "
    )
    assert status != 0 and "Stopped on SIGTERM between batches" in output, output
    counts, stop = [], threading.Event()
    query = text(
        "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
        "AND EVENT_OBJECT_TABLE = 'llm_usage_events'"
    )

    def watch() -> None:
        engine = create_engine(db_url)
        with engine.connect() as connection:
            while not stop.is_set():
                counts.append(connection.execute(query).scalar())
                connection.rollback()
                stop.wait(0.01)  # a tight loop of metadata reads could starve the re-run's exclusive lock under load
        engine.dispose()

    for _ in range(3):  # each re-run replaces the triggers; stopped again so that the next one does it too
        watcher = threading.Thread(target=watch)
        watcher.start()
        process = start_alembic(db_url, *paced, "upgrade", "head", stdout=-1)
        status, output = stopped_on(process, signal.SIGTERM, "backfill: ")
        stop.set()
        watcher.join()
        stop.clear()
        assert status != 0, output
    assert len(counts) > 100 and set(counts) == {2}, sorted(set(counts))  # before the fix: 0 or 1 seen between
    alembic(db_url, "-x", "online=true", "upgrade", "head")
    assert all(total == (p or 0) + (c or 0) for p, c, total in token_rows(db_url).values())


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_online_schema_change_waits_for_its_lock_is_one_sentence(db_url, sig):
    seed_large(db_url, rows=1_000)
    before = token_rows(db_url)
    engine = create_engine(db_url)
    with engine.connect() as holder:  # an application transaction holding the table
        holder.execute(text(HOLD))
        process = start_alembic(db_url, "-x", "online=true", "upgrade", "head", stdout=-1)
        status, output = stopped_on(process, sig, "lock not granted within")
        holder.rollback()
    engine.dispose()
    name = "Ctrl-C (SIGINT)" if sig == signal.SIGINT else "SIGTERM"
    assert status != 0 and f"Stopped on {name}" in one_sentence(output), output
    assert "re-running the same command" in output, output
    assert token_rows(db_url) == before
    alembic(db_url, "-x", "online=true", "upgrade", "head")
    assert all(total == p + c for p, c, total in token_rows(db_url).values())


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_signal_cuts_a_long_batch_pause_short(db_url):
    seed_large(db_url, rows=5_000)
    paced = ["-x", "online=true", "-x", "batch_rows=1000", "-x", "batch_pause=1h", "-x", "progress_every=0"]
    process = start_alembic(db_url, *paced, "upgrade", "head", stdout=-1)
    started = time.monotonic()
    status, output = stopped_on(process, signal.SIGINT, "[1/3]", after_s=1.0)  # in the pause before a batch
    assert time.monotonic() - started < 60, output  # before the fix: the hour's pause, then one more batch
    assert status != 0 and "Stopped on SIGINT between batches" in one_sentence(output), output
    assert "re-run 'alembic -x online=true upgrade head'" in verify(db_url).stdout


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_a_signal_during_finish_online_is_one_sentence_and_a_rerun_finishes(db_url):
    seed_large(db_url, rows=2_000)
    alembic(db_url, "-x", "online=true", "upgrade", "head")
    engine = create_engine(db_url)
    with engine.connect() as holder:  # the application holds the table: finish-online retries its trigger drop
        holder.execute(text(HOLD))
        process = subprocess.Popen(
            [sys.executable, "-m", "autopack", "finish-online"],
            env={**os.environ, "DATABASE_URL": db_url.render_as_string(False)},
            cwd=ROOT,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        status, output = stopped_on(process, signal.SIGTERM, "lock not granted within")
        holder.rollback()
    engine.dispose()
    assert status == 3 and "Traceback" not in output, output
    assert "error: Stopped on SIGTERM" in output and "re-run 'python -m autopack finish-online'" in output, output
    assert "finish-online" in verify(db_url).stdout  # the trigger is still there: verify names the step
    finish_online(db_url)
    assert all(total == p + c for p, c, total in token_rows(db_url).values())


@pytest.mark.parametrize("backend", ["sqlite", *POSTGRES_BACKENDS])
def test_throttling_options_without_online_mode_are_refused(db_url):
    seed_large(db_url, rows=100)
    sentence = fails(db_url, "-x", "max_replica_lag=100ms", "-x", "batch_pause=5s", "upgrade", "head")
    assert "-x batch_pause, -x max_replica_lag" in sentence and "without -x online=true" in sentence
    assert alembic(db_url, "current").stdout.strip() == "0001"


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_a_batch_giving_up_on_a_held_row_names_online_lock_timeout(db_url):
    seed_large(db_url, rows=3_000)
    engine = create_engine(db_url)
    with engine.connect() as holder:
        paced = ["-x", "online_retries=2", "-x", "batch_rows=1000", "-x", "batch_pause=300ms"]
        process = start_alembic(db_url, "-x", "online=true", *paced, "upgrade", "head", stdout=-1)
        for line in process.stderr:  # the schema change and trigger are in: hold a row the batches need
            if "[1/3]" in line:
                holder.execute(text("UPDATE llm_usage_events SET role = 'held' WHERE id = 2500"))
                break
        out, rest = process.communicate(timeout=120)
        holder.rollback()
    engine.dispose()
    sentence = one_sentence(out + rest)
    assert "a row lock held past online_lock_timeout" in sentence
    assert "an application transaction holds rows" in sentence and "lock_timeout=10s" not in sentence, sentence
    assert "re-running the same command resumes" in sentence


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_an_operators_before_trigger_named_after_the_fill_trigger_is_refused_online(db_url):
    """PostgreSQL fires BEFORE row triggers in name order: 'zz_policy…' would fire after the fill and the total
    would miss the split it caps (9100 stored for 4000 + 100)."""
    seed_large(db_url, rows=100)
    execute(
        db_url,
        "CREATE FUNCTION cap_prompt() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "NEW.prompt_tokens := LEAST(NEW.prompt_tokens, 4000); RETURN NEW; END $$",
        "CREATE TRIGGER zz_policy_cap_prompt BEFORE INSERT OR UPDATE ON llm_usage_events "
        "FOR EACH ROW EXECUTE FUNCTION cap_prompt()",
    )
    message = fails(db_url, "-x", "online=true", "upgrade", "head")
    assert message.startswith(
        "llm_usage_events has BEFORE trigger zz_policy_cap_prompt, which PostgreSQL fires after the online mode's "
        "fill trigger zz_llm_usage_events_build144_fill_total"
    ) and message.endswith("nothing was changed."), message
    assert alembic(db_url, "current").stdout.strip() == "0001"
    alembic(db_url, "upgrade", "head")  # the default mode has no fill trigger to order


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_finish_online_retries_a_batch_that_meets_a_held_row_instead_of_holding_its_range(db_url):
    """finish-online's batches are the online backfill's: a row the application holds is waited for at most
    online_lock_timeout and the batch retried, so the rows it already locked are not held for lock_timeout."""
    alembic(db_url, "upgrade", "head")
    execute(db_url, *[OLD_INSERT] * 5)  # old code after a default-mode upgrade: totals left at 0
    engine = create_engine(db_url)
    with engine.connect() as holder:
        holder.execute(text(HOLD))
        threading.Timer(3.0, holder.rollback).start()  # the application's transaction ends after a while
        done = finish_online(db_url)
    engine.dispose()
    assert "retrying" in done.stderr + done.stdout, done.stderr
    assert all(total == prompt + completion for prompt, completion, total in token_rows(db_url).values())
