"""A failed migration says so on stderr as well as in Alembic's `FAILED:` line on stdout, so that an operator who
redirects stdout (a log file, `> /dev/null`) still sees the failure: through `alembic -c alembic.ini` and through
the `autopack` command."""

import os
import subprocess
import sys
from pathlib import Path

from support import ROOT, alembic

REFUSED = ("-x", "online=true", "downgrade", "-1")  # SQLite has no online mode: refused before any change


def failed_sentences(result: subprocess.CompletedProcess) -> tuple[list[str], list[str]]:
    on_stdout = [line.removeprefix("FAILED: ") for line in result.stdout.splitlines() if line.startswith("FAILED: ")]
    on_stderr = [line.split("FAILED: ", 1)[1] for line in result.stderr.splitlines() if "FAILED: " in line]
    return on_stdout, on_stderr


def test_alembic_says_the_failure_on_stderr_too(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    alembic(url, "upgrade", "head")
    result = alembic(url, *REFUSED, check=False)
    on_stdout, on_stderr = failed_sentences(result)
    assert result.returncode != 0 and len(on_stdout) == 1, result.stdout + result.stderr
    assert on_stderr == on_stdout and "does not apply to sqlite" in on_stderr[0]
    assert "Traceback" not in result.stderr


def test_the_autopack_command_says_the_failure_on_stderr_too(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    alembic(url, "upgrade", "head")
    result = subprocess.run(
        [sys.executable, "-m", "autopack", *REFUSED],
        env={**os.environ, "DATABASE_URL": url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    on_stdout, on_stderr = failed_sentences(result)
    assert result.returncode != 0 and len(on_stdout) == 1, result.stdout + result.stderr
    assert on_stderr == on_stdout and "does not apply to sqlite" in on_stderr[0]
    assert str(ROOT) not in result.stderr  # one sentence, no traceback naming the checkout's files
