"""The README's runbook block, run line by line on a legacy database, and the backup it starts with."""

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from legacy import ROWS, build, expected_total
from support import ROOT, token_rows

BIN = Path(sys.executable).parent


def runbook_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Upgrade runbook") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith(("source ", "export ", "#"))]


def run(line: str, url) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": str(url), "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_runbook_block_runs_verbatim_on_a_pre_build144_database(tmp_path):
    url = make_url(f"sqlite:///{tmp_path / 'autopack.db'}")
    build(url, "pre_build144")
    commands = runbook_commands()
    assert commands == [
        "python -m autopack backup",
        "alembic upgrade head",
        "python -m autopack verify",
        "alembic current",
        "alembic downgrade -1",
    ]
    backup, upgrade, verify, current, downgrade = (run(c, url) for c in commands)
    for result in (backup, upgrade, verify, current, downgrade):
        assert result.returncode == 0, result.stdout + result.stderr
    assert current.stdout.strip() == "0002 (head)"  # what the runbook says to look for before rolling back
    assert backup.stdout.startswith(f"Backed up {tmp_path / 'autopack.db'} to {tmp_path / 'autopack.db.backup'} (")
    backup_url = make_url(f"sqlite:///{tmp_path / 'autopack.db.backup'}")
    assert list(token_rows(backup_url).values()) == [(p, c) for p, c, _ in ROWS["pre_build144"]]
    assert "detected state: pre-BUILD-144" in upgrade.stderr
    assert verify.stdout.strip().endswith("All checks passed.")
    assert "Running downgrade 0002 -> 0001" in downgrade.stderr
    schema = sqlite3.connect(tmp_path / "autopack.db")  # the pre-BUILD-144 schema, the baseline's index kept
    columns = {row[1]: row[3] for row in schema.execute("PRAGMA table_info(llm_usage_events)")}
    indexes = {row[1] for row in schema.execute("PRAGMA index_list(llm_usage_events)")}
    schema.close()
    assert "total_tokens" not in columns and columns["prompt_tokens"] == columns["completion_tokens"] == 1
    assert "ix_llm_usage_events_is_doctor_call" in indexes
    assert run("alembic upgrade head", url).returncode == 0
    assert list(token_rows(url).values()) == [(p, c, expected_total(p, c, t)) for p, c, t in ROWS["pre_build144"]]


def test_backup_includes_what_is_still_in_the_wal_and_never_overwrites(tmp_path):
    path = tmp_path / "autopack.db"
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE llm_usage_events (x INTEGER)")  # backup checks this table's rows in the copy
    writer.executemany("INSERT INTO llm_usage_events VALUES (?)", [(i,) for i in range(1000)])
    writer.commit()  # committed, but only in autopack.db-wal: a cp of autopack.db alone would miss it
    assert (tmp_path / "autopack.db-wal").stat().st_size > 0
    url = f"sqlite:///{path}"
    first = run("python -m autopack backup", url)
    assert first.returncode == 0, first.stderr
    with sqlite3.connect(tmp_path / "autopack.db.backup") as copy:
        assert copy.execute("SELECT COUNT(*), SUM(x) FROM llm_usage_events").fetchone() == (1000, sum(range(1000)))
    again = run("python -m autopack backup", url)
    assert again.returncode == 3
    assert again.stderr.strip() == (
        f"error: {tmp_path / 'autopack.db.backup'} already exists: move it away or name another with --to; "
        "nothing was written."
    )
    writer.close()


@pytest.mark.parametrize("url", ["postgresql://ops:hunter2@db.internal/autopack"])
def test_backup_of_postgresql_points_to_pg_dump(url):
    result = run("python -m autopack backup", url)
    assert result.returncode == 3
    assert "pg_dump --format=custom" in result.stderr and "hunter2" not in result.stderr
