"""Several migrators at once: Autopack instances starting together each call ``init_db()``, and two
operators may type ``alembic upgrade head`` together. One migrates; the others wait for the migration lock, then
find head and do nothing, exiting 0. The overlap is forced: the test holds the lock (PostgreSQL's advisory lock,
MariaDB's GET_LOCK, SQLite's lock file and an exclusive transaction, as a migrator does) while the four start, and
lets go once all four wait (on SQLite past the 10 s busy_timeout, after which a bare BEGIN EXCLUSIVE gives up).
"""

import fcntl
import os
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import create_engine, text

import legacy
from support import MYSQL_BACKENDS, POSTGRES_BACKENDS, ROOT, alembic, current, seed_large, token_rows

INIT_DB = "import logging; logging.basicConfig(level=logging.INFO); from autopack.database import init_db; init_db()"
MIGRATED = "Running upgrade 0001 -> 0002"
NOTHING = "Nothing to do: the database is already at 0002"
WAITING = "waiting for the migration lock"
PG_KEY = 0x4155544F5041434B
MARIADB_LOCK = "CONCAT('autopack_migrations:', MD5(DATABASE()))"


class Migrator:
    """A process started with the database locked by the test; its log read as it comes."""

    def __init__(self, url, command: list[str]) -> None:
        self.process = subprocess.Popen(
            command,
            env={**os.environ, "DATABASE_URL": url.render_as_string(False)},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def log(self) -> str:
        return "".join(self.lines)

    def finish(self) -> tuple[int, str]:
        self.process.wait(timeout=300)
        self.reader.join(timeout=10)
        return self.process.returncode, self.log()


def wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def four_at_once(url, command: list[str]) -> list[tuple[int, str]]:
    """Hold the migration lock, start four migrators, let go once each is waiting (server engines: each says so;
    SQLite: each is blocked in its busy wait), and return their exit status and log."""
    engine = create_engine(url)
    with engine.connect() as holder:
        dialect = holder.dialect.name
        if dialect == "postgresql":
            holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_KEY})
        elif dialect == "sqlite":
            lock_file = open(f"{url.database}.migration-lock", "a")  # noqa: SIM115
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            holder.exec_driver_sql("BEGIN EXCLUSIVE")
        else:
            holder.execute(text(f"SELECT GET_LOCK({MARIADB_LOCK}, 10)"))
        migrators = [Migrator(url, command) for _ in range(4)]
        try:
            wait_for(lambda: all(WAITING in m.log() for m in migrators))
            if dialect == "sqlite":
                time.sleep(11)  # longer than the busy_timeout a bare BEGIN EXCLUSIVE waits
        finally:
            if dialect == "sqlite":
                holder.exec_driver_sql("COMMIT")
                lock_file.close()
            else:
                release = (
                    "SELECT pg_advisory_unlock(:k)"
                    if dialect == "postgresql"
                    else f"SELECT RELEASE_LOCK({MARIADB_LOCK})"
                )
                holder.execute(text(release), {"k": PG_KEY})
                holder.commit()
        results = [m.finish() for m in migrators]
    engine.dispose()
    return results


def exactly_one_migrated(results: list[tuple[int, str]]) -> None:
    assert all(status == 0 for status, _ in results), results
    migrated = [log for _, log in results if MIGRATED in log]
    assert len(migrated) == 1, results
    assert sum(NOTHING in log for _, log in results) == 3, results


@pytest.mark.parametrize("backend", ["sqlite", *POSTGRES_BACKENDS, *MYSQL_BACKENDS])
def test_four_init_db_calls_at_0001_migrate_once(db_url):
    seed_large(db_url, rows=20_000)
    before = token_rows(db_url)
    exactly_one_migrated(four_at_once(db_url, [sys.executable, "-c", INIT_DB]))
    assert current(db_url) == "0002 (head)"
    after = token_rows(db_url)
    assert after.keys() == before.keys()
    assert all(after[i] == (p, c, p + c) for i, (p, c) in ((i, r[:2]) for i, r in before.items()))


@pytest.mark.parametrize("backend", [*POSTGRES_BACKENDS, *MYSQL_BACKENDS])
def test_four_init_db_calls_on_an_unversioned_legacy_table_migrate_once(db_url):
    legacy.build(db_url, "pre_build144")
    rows = legacy.ROWS["pre_build144"]
    exactly_one_migrated(four_at_once(db_url, [sys.executable, "-c", INIT_DB]))
    after = token_rows(db_url)
    assert [after[i] for i in sorted(after)] == [(p, c, legacy.expected_total(p, c, t)) for p, c, t in rows]


@pytest.mark.parametrize("backend", [*POSTGRES_BACKENDS, *MYSQL_BACKENDS])
def test_four_online_upgrades_at_once_migrate_once(db_url):
    seed_large(db_url, rows=20_000)
    command = [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "-x", "online=true", "upgrade", "head"]
    exactly_one_migrated(four_at_once(db_url, command))
    assert all(total == p + c for p, c, total in token_rows(db_url).values())


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_current_never_waits_for_the_lock_and_a_long_wait_is_one_sentence(db_url):
    alembic(db_url, "upgrade", "0001")
    engine, elsewhere = create_engine(db_url), create_engine(db_url.set(database="postgres"))
    with engine.connect() as holder, elsewhere.connect() as other_database:
        # the same key held in another database of the server: a lock of its own, never named as ours
        other_database.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_KEY})
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_KEY})
        pid = holder.execute(text("SELECT pg_backend_pid()")).scalar()
        assert current(db_url) == "0001"
        failed = alembic(db_url, "-x", "migration_lock_wait=2s", "upgrade", "head", check=False)
        holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_KEY})
    engine.dispose()
    elsewhere.dispose()
    assert failed.returncode != 0 and "Traceback" not in failed.stderr + failed.stdout
    assert f"held the migration lock for 2s (held by backend pid {pid} (pg_stat_activity))" in failed.stdout, (
        failed.stdout
    )
    assert current(db_url) == "0001"


def test_init_db_runs_in_any_thread_and_leaves_the_applications_signal_handlers_alone(tmp_path):
    """Applications call it from a worker thread (asyncio.to_thread); Python lets only the main thread set a
    signal handler, and the application's own SIGTERM handler must still be the one after start-up."""
    script = (
        "import signal, concurrent.futures as f; from autopack.database import init_db\n"
        "mine = lambda *_: None; signal.signal(signal.SIGTERM, mine)\n"
        "f.ThreadPoolExecutor(1).submit(init_db).result()\n"
        "init_db()\n"
        "assert signal.getsignal(signal.SIGTERM) is mine, signal.getsignal(signal.SIGTERM)\n"
    )
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "DATABASE_URL": url},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert current(url) == "0002 (head)"


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_a_mariadb_url_without_a_database_is_one_sentence(db_url):
    server = db_url._replace(database=None)  # URL.set(database=None) would keep it
    for command in (["upgrade", "head"], ["current"]):
        failed = alembic(server, "-x", "migration_lock_wait=30s", *command, check=False, timeout=20)
        assert failed.returncode != 0 and "Traceback" not in failed.stdout + failed.stderr, failed.stderr
        assert "names no database on the server: add it to DATABASE_URL" in failed.stdout, failed.stdout
