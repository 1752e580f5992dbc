"""A SQLite file a crashed writer left with a hot journal (rollback-journal mode): verify and backup see the
committed state, as any SQLite client that can write does ."""

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, alembic, line, verify

ROWS = 4000
TORN_TOTAL = 999_999  # what the killed transaction was writing: never committed


def seeded(path: Path) -> None:
    alembic(f"sqlite:///{path}", "upgrade", "head")
    db = sqlite3.connect(path)
    db.executemany(
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, total_tokens, "
        "created_at, is_doctor_call) VALUES ('openai', 'gpt-4o', 'builder', ?, 5, ? + 5, '2025-11-01 12:00:00', 0)",
        [(i, i) for i in range(ROWS)],
    )
    db.commit()
    db.close()


CRASHING_WRITER = f"""
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode = DELETE")
db.execute("PRAGMA cache_size = 5")  # a few pages: the change spills into the file before any commit
db.execute("BEGIN")
db.execute("UPDATE llm_usage_events SET total_tokens = {TORN_TOTAL}, model = hex(randomblob(60))")
print("written", flush=True)
os.kill(os.getpid(), {signal.SIGKILL})  # dies mid-transaction: no rollback, no unlock of the journal
"""


def crashed_mid_transaction(path: Path) -> None:
    """Kill a writer in the middle of a big UPDATE and prove the journal it leaves is hot."""
    result = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(path)], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL and result.stdout == "written\n", result.stderr
    journal = path.with_name(path.name + "-journal")
    assert journal.exists() and journal.stat().st_size > 0
    reader = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as error:  # hot: a read-only connection cannot roll it back
        reader.execute("SELECT count(*) FROM llm_usage_events").fetchone()
    reader.close()
    assert error.value.sqlite_errorname == "SQLITE_READONLY_ROLLBACK"


def committed_totals(path: Path) -> tuple[int, int, int]:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*), SUM(total_tokens), SUM(model = 'gpt-4o') FROM llm_usage_events").fetchone()
    finally:
        db.close()


COMMITTED = (ROWS, sum(i + 5 for i in range(ROWS)), ROWS)


def test_verify_reads_the_committed_state_of_a_file_with_a_hot_journal(tmp_path):
    path = tmp_path / "autopack.db"
    seeded(path)
    crashed_mid_transaction(path)
    result = verify(f"sqlite:///{path}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "read-only" not in result.stdout + result.stderr
    assert f"{ROWS} of {ROWS} rows have total_tokens > 0" in line(result.stdout, "total_tokens populated")
    assert "0 rows whose total_tokens is not prompt + completion" in result.stdout  # no torn 999999 totals
    assert not path.with_name("autopack.db-journal").exists()  # rolled back, as any writing client would
    assert committed_totals(path) == COMMITTED


def test_backup_copies_the_committed_state_of_a_file_with_a_hot_journal(tmp_path):
    path = tmp_path / "autopack.db"
    seeded(path)
    crashed_mid_transaction(path)
    result = subprocess.run(
        [sys.executable, "-m", "autopack", "backup"],
        env={**os.environ, "DATABASE_URL": f"sqlite:///{path}"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"({ROWS} rows of llm_usage_events" in result.stdout
    assert committed_totals(tmp_path / "autopack.db.backup") == COMMITTED
    assert committed_totals(path) == COMMITTED
