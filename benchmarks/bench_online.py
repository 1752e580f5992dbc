"""Benchmark: what the application feels during the PostgreSQL upgrade (or ``--direction downgrade``), default mode
vs ``-x online=true``.

On a pre-BUILD-144 table of N rows (default 1M), while ``alembic upgrade head`` runs, three clients run on
their own connections until it ends:

- a writer, as pre-BUILD-144 code: INSERT one event and COMMIT, every 10 ms;
- a reader, as the dashboard: SELECT one event's columns by id, every 10 ms;
- a lock sampler: every 10 ms, whether an ACCESS EXCLUSIVE lock on llm_usage_events is granted (pg_locks),
  giving the longest continuous hold (to the sampling interval).

It prints the upgrade's wall time, each client's slowest and 99th-percentile statement, and the longest
ACCESS EXCLUSIVE hold, per mode.

    BENCH_POSTGRES=postgresql://postgres@127.0.0.1:5432/postgres python benchmarks/bench_online.py --rows 1000000
"""

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from bench_migration import ROOT, pg_admin_url, pg_fresh, pg_seed

INTERVAL_S = 0.01
# the writer, as pre-BUILD-144 code, and the reader, as the dashboard (see the module docstring)
WRITER_STATEMENT = (
    "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, "
    "created_at, is_doctor_call) VALUES ('old-code', 'm', 'builder', %s, 5, now(), false)"
)
READER_STATEMENT = "SELECT id, provider, model, prompt_tokens, completion_tokens FROM llm_usage_events WHERE id = %s"


def client(conninfo: str, statement: str, params, stop: threading.Event, latencies: list[float]) -> None:
    with psycopg.connect(conninfo, autocommit=True) as connection:
        i = 0
        while not stop.is_set():
            i += 1
            start = time.perf_counter()
            cursor = connection.execute(statement, params(i), prepare=False)
            if statement.startswith("SELECT"):
                cursor.fetchall()
            latencies.append(time.perf_counter() - start)
            time.sleep(INTERVAL_S)


def sampler(conninfo: str, stop: threading.Event, holds: list[float]) -> None:
    query = (
        "SELECT COUNT(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "WHERE c.relname = 'llm_usage_events' AND l.mode = 'AccessExclusiveLock' AND l.granted"
    )
    held_since = None
    with psycopg.connect(conninfo, autocommit=True) as connection:
        while not stop.is_set():
            now = time.perf_counter()
            held = connection.execute(query).fetchone()[0] > 0
            if held and held_since is None:
                held_since = now
            elif not held and held_since is not None:
                holds.append(now - held_since)
                held_since = None
            time.sleep(INTERVAL_S)
        if held_since is not None:
            holds.append(time.perf_counter() - held_since)


def run(url: str, rows: int, extra: list[str], command: tuple[str, str] = ("upgrade", "head")) -> dict:
    conninfo = url.replace("+psycopg", "")
    stop = threading.Event()
    writes, reads, holds = [], [], []
    threads = [
        threading.Thread(target=client, args=(conninfo, WRITER_STATEMENT, lambda i: (i,), stop, writes)),
        threading.Thread(
            target=client, args=(conninfo, READER_STATEMENT, lambda i: (1 + (i * 7919) % rows,), stop, reads)
        ),
        threading.Thread(target=sampler, args=(conninfo, stop, holds)),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *extra, *command],
        env={**os.environ, "DATABASE_URL": url},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    if result.returncode:
        raise SystemExit(result.stderr)

    def p99(values):
        return statistics.quantiles(values, n=100)[98] if len(values) > 1 else max(values, default=0)

    return {
        "upgrade_s": elapsed,
        "writes": len(writes),
        "write_max": max(writes),
        "write_p99": p99(writes),
        "reads": len(reads),
        "read_max": max(reads),
        "read_p99": p99(reads),
        "longest_hold": max(holds, default=0.0),
    }


def at_head_with_total_only_rows(url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
        env={**os.environ, "DATABASE_URL": url},
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    with psycopg.connect(url.replace("+psycopg", "")) as connection:
        connection.execute(
            "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at, is_doctor_call) "
            "SELECT 'new-code', 'm', 'builder', 1000 + i, now(), false FROM generate_series(1, 1000) AS i"
        )
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE llm_usage_events")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--modes", default="default,online")
    parser.add_argument(
        "--direction",
        choices=("upgrade", "downgrade"),
        default="upgrade",
        help="downgrade: bring the table to head first (default mode, 1,000 total-only rows added), then measure "
        "'alembic downgrade -1'",
    )
    args = parser.parse_args()
    command = ("upgrade", "head") if args.direction == "upgrade" else ("downgrade", "-1")
    admin, server = pg_admin_url()
    try:
        seed = pg_seed(admin, args.rows)
        results = {}
        for mode in args.modes.split(","):
            url = pg_fresh(admin, seed)
            if args.direction == "downgrade":
                at_head_with_total_only_rows(url)
            results[mode] = run(url, args.rows, ["-x", "online=true"] if mode == "online" else [], command)
            print(f"{mode}: {results[mode]}", file=sys.stderr, flush=True)
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute("DROP DATABASE IF EXISTS bench_work")
            connection.execute(f"DROP DATABASE {seed}")
    finally:
        if server is not None:
            server.cleanup()
    print(
        f"| mode | rows | {args.direction} s | writer max s | writer p99 s | reader max s | reader p99 s |"
        " longest ACCESS EXCLUSIVE s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode, r in results.items():
        print(
            f"| {mode} | {args.rows:,} | {r['upgrade_s']:.2f} | {r['write_max']:.3f} | {r['write_p99']:.3f} | "
            f"{r['read_max']:.3f} | {r['read_p99']:.3f} | {r['longest_hold']:.3f} |"
        )


if __name__ == "__main__":
    main()
