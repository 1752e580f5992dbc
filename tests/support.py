"""Helpers the tests share: run the real alembic CLI, seed rows with plain SQL, read rows back."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pymysql
from pymysql.constants import CLIENT
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import URL

ROOT = Path(__file__).resolve().parents[1]
PG_SERVERS = os.environ.get("AUTOPACK_TEST_POSTGRES", "pgserver").split()
MYSQL_SERVERS = os.environ.get("AUTOPACK_TEST_MYSQL", "mysql://root@127.0.0.1:3306").split()


def _label(engine: str, spec: str) -> str:
    return f"{engine}-{spec.split('@')[-1].split('/')[0]}"


POSTGRES_BACKENDS = [_label("postgresql", s) for s in PG_SERVERS]
MYSQL_BACKENDS = [_label("mariadb", s) for s in MYSQL_SERVERS]
# engines whose DDL is transactional: a failed or killed migration leaves nothing behind
TRANSACTIONAL_BACKENDS = ["sqlite", *POSTGRES_BACKENDS]
BACKENDS = [*TRANSACTIONAL_BACKENDS, *MYSQL_BACKENDS]
T0 = datetime(2025, 11, 1, 12, 0, 0)
TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")


def alembic(url: URL | str, *args: str, check: bool = True, timeout: float = 300, **env: str):
    """Run ``python -m alembic -c alembic.ini ARGS`` against ``url`` as an operator would."""
    environment = {**os.environ, "DATABASE_URL": url if isinstance(url, str) else url.render_as_string(False)}
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"alembic {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def start_alembic(url: URL, *args: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    """Start ``python -m alembic ARGS`` against ``url`` with its log readable line by line on ``stderr`` (and its
    ``FAILED:`` line on ``stdout`` if asked for)."""
    return subprocess.Popen(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
        env={**os.environ, "DATABASE_URL": url.render_as_string(hide_password=False)},
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=stdout,
        text=True,
    )


def default_signal_dispositions() -> None:
    """SIGINT and SIGTERM as Python sets them up by default, whatever this process inherited. A suite started in the
    background (``nohup pytest &``) inherits an ignored SIGINT, which every process it starts would inherit in turn
    (an ignored signal stays ignored across exec): the tests that stop a migration with SIGINT would wait in vain.
    A handler (not SIG_IGN) is reset to the default in each child as it starts."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def event_row(i: int, **values) -> dict:
    """A plain usage-event row; ``values`` override the defaults."""
    row = {
        "provider": ["anthropic", "openai", "google"][i % 3],
        "model": f"model-{i % 4}",
        "run_id": f"run-{i % 5}",
        "phase_id": None,
        "role": "builder",
        "created_at": T0 + timedelta(minutes=i),
        "is_doctor_call": False,
        "doctor_model": None,
        "doctor_action": None,
    }
    row.update(values)
    return row


def insert_events(connection: Connection, rows: list[dict]) -> None:
    """INSERT rows with plain SQL (the columns each row names), as an old Autopack would have."""
    for row in rows:
        columns = ", ".join(row)
        params = ", ".join(f":{c}" for c in row)
        connection.execute(text(f"INSERT INTO llm_usage_events ({columns}) VALUES ({params})"), row)


def token_rows(url: URL | str, columns: tuple[str, ...] = TOKENS) -> dict[int, tuple]:
    """id -> the token columns that exist now."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            present = {c["name"] for c in inspect(connection).get_columns("llm_usage_events")}
            wanted = [c for c in columns if c in present]
            result = connection.execute(text(f"SELECT id, {', '.join(wanted)} FROM llm_usage_events ORDER BY id"))
            return {row[0]: tuple(row[1:]) for row in result}
    finally:
        engine.dispose()


def columns_of(url: URL | str, table: str = "llm_usage_events") -> dict[str, dict]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {c["name"]: c for c in inspect(connection).get_columns(table)}
    finally:
        engine.dispose()


def table_names(url: URL | str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def execute(url: URL | str, *statements: str, **params) -> None:
    """Run plain SQL statements in one transaction, as an operator's psql/sqlite3 session would."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement), params)
    finally:
        engine.dispose()


def scalar(url: URL | str, sql: str):
    """One value read with plain SQL, as an operator's psql session would."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def audit_trigger(name: str, table: str = "llm_usage_events") -> list[str]:
    """A PostgreSQL audit trigger as operators add them: each row UPDATEd on ``table`` writes its id to ``audit``."""
    return [
        "CREATE TABLE audit (id INTEGER)",
        "CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO audit VALUES (NEW.id); RETURN NEW; END $$",
        f"CREATE TRIGGER {name} AFTER UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION audit_row()",
    ]


def fails(url: URL | str, *args: str, **env: str) -> str:
    """Run alembic expecting a clean failure: non-zero exit, no traceback, exactly one ``FAILED:`` sentence."""
    result = alembic(url, *args, check=False, **env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED: ")]
    assert len(failed) == 1, output
    return failed[0].removeprefix("FAILED: ")


def current(url: URL | str) -> str:
    """``alembic current`` as the operator reads it."""
    return alembic(url, "current").stdout.strip()


def forced_row_security(owner: str, policy: str) -> list[str]:
    """SQL that hands llm_usage_events to a new non-superuser ``owner`` with row-level security forced on it."""
    return [
        f"CREATE ROLE {owner} LOGIN",
        f"GRANT CREATE ON SCHEMA public TO {owner}",
        f"ALTER TABLE llm_usage_events OWNER TO {owner}",
        f"ALTER TABLE alembic_version OWNER TO {owner}",
        "ALTER TABLE llm_usage_events ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE llm_usage_events FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY tenant ON llm_usage_events USING ({policy})",
    ]


APP_INSERT = (
    "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, total_tokens, "
    "created_at, is_doctor_call) VALUES ('openai', 'gpt-4o', 'builder', 10, 5, 15, '2025-11-01 12:00:00', false)"
)
LOCK_HOLDERS = (
    "stop the API server (uvicorn autopack.main:app), any autonomous executor and any database viewer "
    "(DB Browser, sqlite3 CLI), then re-run"
)


@contextmanager
def application_committing(path: str) -> Iterator[dict]:
    """Another connection that, like the application, commits one usage event after another until the block
    ends; yields its tally ({'commits', 'errors'})."""
    tally: dict = {"commits": 0, "errors": []}
    stop = threading.Event()

    def commit_in_a_loop() -> None:
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            while not stop.is_set():
                db.execute("BEGIN IMMEDIATE")
                db.execute(APP_INSERT)
                time.sleep(0.005)  # the application's own work, inside its write transaction
                db.execute("COMMIT")
                tally["commits"] += 1
        except sqlite3.Error as error:
            tally["errors"].append(error)
        finally:
            db.close()

    writer = threading.Thread(target=commit_in_a_loop, daemon=True)
    writer.start()
    try:
        while tally["commits"] < 20 and not tally["errors"]:
            time.sleep(0.01)
        yield tally
    finally:
        stop.set()
        writer.join(30)


ROWS = 300_000  # about a second of upgrade here: long enough to be killed in the middle of it


def seed_large(url, rows=ROWS):
    """A baseline table of ``rows`` events: every 7th would be total-only once upgraded."""
    alembic(url, "upgrade", "0001")
    engine = create_engine(url)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text(
                    "INSERT INTO llm_usage_events (provider, model, run_id, role, prompt_tokens, completion_tokens,"
                    " created_at, is_doctor_call) SELECT 'p' || (i % 3), 'm' || (i % 7), 'r' || (i % 100), 'builder',"
                    " i % 1000, i % 333, TIMESTAMP '2025-01-01' + i * INTERVAL '1 second', false"
                    " FROM generate_series(1, :n) AS i"
                ),
                {"n": rows},
            )
        else:  # SQLite, MySQL: executemany (PyMySQL turns it into multi-row INSERTs)
            values = [
                {"p": f"p{i % 3}", "m": f"m{i % 7}", "r": f"r{i % 100}", "pt": i % 1000, "ct": i % 333}
                for i in range(1, rows + 1)
            ]
            for chunk in range(0, rows, 50_000):
                connection.execute(
                    text(
                        "INSERT INTO llm_usage_events"
                        " (provider, model, run_id, role, prompt_tokens, completion_tokens, created_at, is_doctor_call)"
                        " VALUES (:p, :m, :r, 'builder', :pt, :ct, '2025-01-01 00:00:00', 0)"
                    ),
                    values[chunk : chunk + 50_000],
                )
    engine.dispose()


def kill_midway(url, args, marker, delay_s):
    """Start ``alembic ARGS``, SIGKILL it ``delay_s`` after ``marker`` appears in its log; True if it was killed."""
    process = start_alembic(url, *args)
    for line in process.stderr:
        if marker in line:
            break
    time.sleep(delay_s)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if url.get_backend_name() == "postgresql":  # the killed client's server process rolls back on its own time
        engine = create_engine(url)
        with engine.connect() as connection:
            wait_until_alone(connection)
        engine.dispose()
    return process.returncode == -signal.SIGKILL


def wait_until_alone(connection: Connection) -> None:
    """PostgreSQL: wait (up to 10 s) until no other session is connected to this database."""
    for _ in range(100):
        others = connection.execute(
            text("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        ).scalar()
        if not others:
            break
        time.sleep(0.1)


def apply_script(url, script: str) -> None:
    """Feed the script to the engine's own driver, as a DBA's client would."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        connection = sqlite3.connect(url.database)
        connection.executescript(script)
        connection.close()
    elif backend == "postgresql":
        with psycopg.connect(url.set(drivername="postgresql").render_as_string(False), autocommit=True) as connection:
            connection.execute(script)
    else:
        connection = pymysql.connect(
            host=url.host,
            port=url.port or 3306,
            user=url.username,
            password=url.password or "",
            database=url.database,
            client_flag=CLIENT.MULTI_STATEMENTS,
            autocommit=True,
        )
        with connection.cursor() as cursor:
            cursor.execute(script)
            while cursor.nextset():
                pass
        connection.close()


def verify(url, cwd=ROOT):
    """Run ``python -m autopack verify`` against ``url`` as an operator would."""
    env = {**os.environ, "DATABASE_URL": url if isinstance(url, str) else url.render_as_string(False)}
    return subprocess.run(
        [sys.executable, "-m", "autopack", "verify"], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def autopack_command(url, command: str, timeout: float = 300):
    """Run ``python -m autopack COMMAND`` against ``url`` as an operator would."""
    env = {**os.environ, "DATABASE_URL": url if isinstance(url, str) else url.render_as_string(False)}
    return subprocess.run(
        [sys.executable, "-m", "autopack", *command.split()],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def finish_online(url, cwd=ROOT, check=True):
    """Run ``python -m autopack finish-online`` against ``url`` as an operator would (by default it must succeed)."""
    env = {**os.environ, "DATABASE_URL": url if isinstance(url, str) else url.render_as_string(False)}
    return subprocess.run(
        [sys.executable, "-m", "autopack", "finish-online"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )


def line(output, name):
    """The first line of ``output`` that mentions ``name``."""
    return next(x for x in output.splitlines() if name in x)
