"""Benchmark: the BUILD-144 upgrade on MariaDB, against the floor of the same change, and what a writer feels.

On a pre-BUILD-144 table of N rows (Autopack's columns and five indexes), copied fresh for every measurement,
alternating within each round, repeated (medians):

- ``floor``: the hand-written pair DECISIONS names, timed in one connection: one
  ``ALTER TABLE … ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0, MODIFY prompt_tokens INTEGER NULL,
  MODIFY completion_tokens INTEGER NULL`` and one full-table ``UPDATE … SET total_tokens = <the sum>``;
- ``one copy``: the same ALTER with ``DEFAULT (<the sum>)`` (the table copy computes the totals) and
  ``ALTER COLUMN total_tokens SET DEFAULT 0``: the fastest hand-written form, for reference;
- ``upgrade``: the whole ``alembic upgrade head`` process, as an operator runs it.

``--writer``: instead, while ``alembic upgrade head`` runs in the default mode and then with
``-x online=true`` (alternating), a writer as pre-BUILD-144 code INSERTs one event and commits every 10 ms;
prints each mode's wall time and the writer's slowest and 99th-percentile INSERT.

    BENCH_MARIADB=mysql://root@127.0.0.1:3306 python benchmarks/bench_mariadb.py --rows 1000000 --repeats 3
    BENCH_MARIADB=mysql://root@127.0.0.1:3306 python benchmarks/bench_mariadb.py --rows 1000000 --writer
"""

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import pymysql
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parent))
from bench_migration import COLUMNS, alembic

SEED, WORK = "bench_seed_mariadb", "bench_work_mariadb"
BUILD144 = "head"  # 0002, BUILD-144, which the floors describe

SUM = "COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)"
RELAX = "MODIFY prompt_tokens INTEGER NULL, MODIFY completion_tokens INTEGER NULL"
FLOOR = [
    f"ALTER TABLE llm_usage_events ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0, {RELAX}",
    f"UPDATE llm_usage_events SET total_tokens = {SUM}",
]
ONE_COPY = [
    f"ALTER TABLE llm_usage_events ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT ({SUM}), {RELAX}",
    "ALTER TABLE llm_usage_events ALTER COLUMN total_tokens SET DEFAULT 0",
]
WRITER_INSERT = (
    "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at, "
    "is_doctor_call) VALUES ('old-code', 'm', 'builder', %s, 5, NOW(), 0)"
)


def server() -> dict:
    url = make_url(os.environ.get("BENCH_MARIADB", "mysql://root@127.0.0.1:3306"))
    return {"host": url.host, "port": url.port or 3306, "user": url.username, "password": url.password or ""}


def connect(database: str | None = None) -> pymysql.Connection:
    return pymysql.connect(**server(), database=database, autocommit=True)


def sa_url(database: str) -> str:
    s = server()
    return f"mysql+pymysql://{s['user']}:{s['password']}@{s['host']}:{s['port']}/{database}"


def seed(rows: int) -> None:
    with connect() as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {SEED}")
        cursor.execute(f"CREATE DATABASE {SEED}")
    alembic(sa_url(SEED), "upgrade", "0001")
    with connect(SEED) as connection, connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO llm_usage_events ({COLUMNS}) SELECT CONCAT('provider-', seq % 5), "
            "CONCAT('model-', seq % 17), CONCAT('run-', seq DIV 1000), CONCAT('phase-', seq % 9), 'builder', "
            "(seq * 7919) % 20000, (seq * 104729) % 5000, "
            "TIMESTAMP '2025-01-01 00:00:00' + INTERVAL (seq DIV 10) SECOND, "
            f"seq % 50 = 0, NULL, NULL FROM seq_1_to_{rows}"
        )


def fresh() -> str:
    """A copy of the seed database (table, indexes, rows, revision): every measurement starts from one."""
    with connect() as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {WORK}")
        cursor.execute(f"CREATE DATABASE {WORK}")
        for table in ("llm_usage_events", "alembic_version"):
            cursor.execute(f"CREATE TABLE {WORK}.{table} LIKE {SEED}.{table}")
            cursor.execute(f"INSERT INTO {WORK}.{table} SELECT * FROM {SEED}.{table}")
    return sa_url(WORK)


def timed_sql(statements: list[str]) -> float:
    fresh()
    with connect(WORK) as connection, connection.cursor() as cursor:
        start = time.perf_counter()
        for statement in statements:
            cursor.execute(statement)
        return time.perf_counter() - start


def default_round() -> dict:
    floor = timed_sql(FLOOR)
    one_copy = timed_sql(ONE_COPY)
    upgrade, _ = alembic(fresh(), "upgrade", BUILD144)
    return {"floor": floor, "one copy": one_copy, "upgrade": upgrade}


def writer_round(mode: str) -> dict:
    url = fresh()
    stop, latencies, errors = threading.Event(), [], []

    def write() -> None:
        with connect(WORK) as connection, connection.cursor() as cursor:
            i = 0
            while not stop.is_set():
                i += 1
                start = time.perf_counter()
                try:
                    cursor.execute(WRITER_INSERT, (i % 1000,))
                except pymysql.MySQLError as error:  # counted, not hidden: a failed write is worse than a slow one
                    errors.append(error.args[0])
                latencies.append(time.perf_counter() - start)
                time.sleep(0.01)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    time.sleep(0.5)
    args = ["-x", "online=true"] if mode == "online" else []
    elapsed, _ = alembic(url, *args, "upgrade", BUILD144)
    stop.set()
    thread.join(30)
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    return {"upgrade": elapsed, "writer max": latencies[-1], "writer p99": p99, "writer errors": len(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--writer", action="store_true", help="writer latency, default mode against online")
    args = parser.parse_args()
    print(f"seeding {args.rows:,} rows ...", file=sys.stderr, flush=True)
    seed(args.rows)
    with connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT VERSION()")
        print(f"MariaDB {cursor.fetchone()[0]}, {args.rows:,} rows, {args.repeats} rounds, medians")
    try:
        if args.writer:
            rounds = {"default": [], "online": []}
            for _ in range(args.repeats):
                for mode in rounds:
                    rounds[mode].append(writer_round(mode))
                    print(f"  {mode}: {rounds[mode][-1]}", file=sys.stderr, flush=True)
            print("| mode | upgrade s | writer max ms | writer p99 ms | writer errors |\n|---|---:|---:|---:|---:|")
            for mode, results in rounds.items():
                m = {k: statistics.median(r[k] for r in results) for k in results[0]}
                print(
                    f"| {mode} | {m['upgrade']:.2f} | {m['writer max'] * 1000:.0f} | {m['writer p99'] * 1000:.0f} | "
                    f"{m['writer errors']:.0f} |"
                )
        else:
            results = []
            for _ in range(args.repeats):
                results.append(default_round())
                print(f"  round: {results[-1]}", file=sys.stderr, flush=True)
            m = {k: statistics.median(r[k] for r in results) for k in results[0]}
            print("| floor s | one copy s | upgrade s | upgrade / floor | one copy / floor |")
            print("|---:|---:|---:|---:|---:|")
            print(
                f"| {m['floor']:.2f} | {m['one copy']:.2f} | {m['upgrade']:.2f} | {m['upgrade'] / m['floor']:.2f}x | "
                f"{m['one copy'] / m['floor']:.2f}x |"
            )
    finally:
        with connect() as connection, connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {WORK}")
            cursor.execute(f"DROP DATABASE IF EXISTS {SEED}")


if __name__ == "__main__":
    main()
