"""Benchmark: the BUILD-144 migration against the floor of the same change, on SQLite and PostgreSQL.

For each engine and size N it builds a pre-BUILD-144 table (Autopack's columns and five indexes) with N
rows once, then, alternating and repeating, measures from a fresh copy of it:

- ``alembic upgrade head`` and then ``alembic downgrade -1``: whole processes, as an operator runs them,
  with each process's peak RSS (from wait4); and ``alembic current`` on the same database, the start-up
  cost every command pays, so that time per row can be compared across sizes without it;
- the floor, timed inside one connection: on SQLite one hand-written copy into the new table computing
  total_tokens in the same INSERT ... SELECT, then the index rebuild, in one transaction; on PostgreSQL
  the ADD COLUMN and one bare full-table UPDATE in one transaction;
- on PostgreSQL also the table + index size (``pg_total_relation_size``) after against before, and the WAL
  each wrote (``pg_current_wal_lsn`` before and after, nothing else running), upgrade against the floor.

It prints medians, seconds per million rows, and ratios (migration / floor, downgrade / upgrade).

    python benchmarks/bench_migration.py --sizes 100000,1000000,10000000 --repeats 3
    BENCH_POSTGRES=postgresql://postgres@127.0.0.1:5432/postgres python benchmarks/bench_migration.py

PostgreSQL: ``BENCH_POSTGRES`` names a server (its user must be able to create databases); without it
a throwaway server is started with pgserver.
"""

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

BUILD144 = "head"  # 0002, BUILD-144, which the floors describe

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (
    "provider, model, run_id, phase_id, role, prompt_tokens, completion_tokens, created_at, is_doctor_call, "
    "doctor_model, doctor_action"
)
INDEXED = ("id", "provider", "model", "run_id", "created_at", "is_doctor_call")  # the baseline's six


def alembic(url: str, *args: str, tree: Path = ROOT) -> tuple[float, int]:
    """Run alembic as a separate process, from the migrations ``tree`` (this checkout, or another one's
    ``alembic.ini`` and ``src`` for bench_tree_against_tree.py); (wall seconds, peak RSS in MiB)."""
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(tree / "src")}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "alembic", "-c", str(tree / "alembic.ini"), *args],
        env=env,
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"alembic {' '.join(args)} failed:\n{stderr.decode()}")
    return elapsed, usage.ru_maxrss // 1024


# --- SQLite ------------------------------------------------------------------------------------------


def sqlite_seed(path: Path, rows: int) -> None:
    alembic(f"sqlite:///{path}", "upgrade", "0001")
    connection = sqlite3.connect(path)
    connection.execute("DROP INDEX IF EXISTS ix_llm_usage_events_id")  # indexes built after the load, faster
    for column in INDEXED[1:]:
        connection.execute(f"DROP INDEX ix_llm_usage_events_{column}")
    connection.execute(
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
        f"INSERT INTO llm_usage_events ({COLUMNS}) SELECT 'provider-' || (i % 5), 'model-' || (i % 17), "
        "'run-' || (i / 1000), 'phase-' || (i % 9), 'builder', (i * 7919) % 20000, (i * 104729) % 5000, "
        "datetime('2025-01-01', '+' || (i / 10) || ' seconds'), i % 50 = 0, NULL, NULL FROM n"
    )
    for column in INDEXED:
        connection.execute(f"CREATE INDEX ix_llm_usage_events_{column} ON llm_usage_events ({column})")
    connection.commit()
    connection.close()


def sqlite_floor(path: Path) -> float:
    connection = sqlite3.connect(path, isolation_level=None)
    start = time.perf_counter()
    connection.execute("BEGIN")
    connection.execute(
        "CREATE TABLE new_events (id INTEGER NOT NULL, provider VARCHAR NOT NULL, model VARCHAR NOT NULL, "
        "run_id VARCHAR, phase_id VARCHAR, role VARCHAR NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER, "
        "created_at DATETIME NOT NULL, is_doctor_call BOOLEAN NOT NULL, doctor_model VARCHAR, doctor_action VARCHAR, "
        "total_tokens INTEGER DEFAULT 0 NOT NULL, CONSTRAINT pk_llm_usage_events PRIMARY KEY (id))"
    )
    connection.execute(
        f"INSERT INTO new_events (id, {COLUMNS}, total_tokens) SELECT id, {COLUMNS}, "
        "COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0) FROM llm_usage_events"
    )
    connection.execute("DROP TABLE llm_usage_events")
    connection.execute("ALTER TABLE new_events RENAME TO llm_usage_events")
    for column in INDEXED:
        connection.execute(f"CREATE INDEX ix_llm_usage_events_{column} ON llm_usage_events ({column})")
    connection.execute("COMMIT")
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed


def sqlite_round(seed: Path, work: Path) -> dict:
    shutil.copyfile(seed, work)
    floor = sqlite_floor(work)
    shutil.copyfile(seed, work)
    url = f"sqlite:///{work}"
    startup, _ = alembic(url, "current")
    up, up_rss = alembic(url, "upgrade", BUILD144)
    down, down_rss = alembic(url, "downgrade", "-1")
    return {"floor": floor, "upgrade": up, "downgrade": down, "startup": startup, "rss": max(up_rss, down_rss)}


# --- PostgreSQL --------------------------------------------------------------------------------------


def pg_admin_url() -> tuple[str, object]:
    if os.environ.get("BENCH_POSTGRES"):
        return os.environ["BENCH_POSTGRES"], None
    import pgserver

    server = pgserver.get_server(tempfile.mkdtemp(prefix="bench-pg-"), cleanup_mode="stop")
    return server.get_uri(), server


def pg_url(admin: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(admin).set(drivername="postgresql+psycopg", database=database).render_as_string(False)


def pg_seed(admin: str, rows: int) -> str:
    name = f"bench_seed_{rows}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name}")
        connection.execute(f"CREATE DATABASE {name}")
    url = pg_url(admin, name)
    alembic(url, "upgrade", "0001")
    with psycopg.connect(url.replace("+psycopg", "")) as connection:
        for column in INDEXED[1:]:
            connection.execute(f"DROP INDEX ix_llm_usage_events_{column}")
        connection.execute(
            f"INSERT INTO llm_usage_events ({COLUMNS}) SELECT 'provider-' || (i % 5), 'model-' || (i % 17), "
            "'run-' || (i / 1000), 'phase-' || (i % 9), 'builder', (i * 7919::bigint) % 20000, "
            "(i * 104729::bigint) % 5000, TIMESTAMP '2025-01-01' + (i / 10) * INTERVAL '1 second', i % 50 = 0, "
            f"NULL, NULL FROM generate_series(1, {rows}) AS i"
        )
        for column in INDEXED[1:]:
            connection.execute(f"CREATE INDEX ix_llm_usage_events_{column} ON llm_usage_events ({column})")
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE llm_usage_events")
    return name


def pg_fresh(admin: str, seed: str) -> str:
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute("DROP DATABASE IF EXISTS bench_work")
        connection.execute(f"CREATE DATABASE bench_work TEMPLATE {seed}")
        connection.execute("CHECKPOINT")
    return pg_url(admin, "bench_work")


def pg_table_and_wal(url: str) -> tuple[int, int]:
    """(table + index bytes of llm_usage_events, the server's current WAL position in bytes)."""
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as connection:
        size = connection.execute("SELECT pg_total_relation_size('llm_usage_events')").fetchone()[0]
        wal = connection.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()[0]
        return size, int(wal)


def pg_floor(url: str) -> dict:
    """The floor (DECISIONS, issue 12): ADD COLUMN and a bare full-table UPDATE in one transaction, timed."""
    size_before, wal_before = pg_table_and_wal(url)
    with psycopg.connect(url.replace("+psycopg", "")) as connection:
        start = time.perf_counter()
        connection.execute("ALTER TABLE llm_usage_events ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0")
        connection.execute(
            "UPDATE llm_usage_events SET total_tokens = COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)"
        )
        connection.commit()
        elapsed = time.perf_counter() - start
    size_after, wal_after = pg_table_and_wal(url)
    return {"floor": elapsed, "floor_size": size_after / size_before, "floor_wal": wal_after - wal_before}


def pg_round(admin: str, seed: str) -> dict:
    floor = pg_floor(pg_fresh(admin, seed))
    url = pg_fresh(admin, seed)
    startup, _ = alembic(url, "current")
    size_before, wal_before = pg_table_and_wal(url)
    up, up_rss = alembic(url, "upgrade", BUILD144)
    size_after, wal_after = pg_table_and_wal(url)
    down, down_rss = alembic(url, "downgrade", "-1")
    return {
        **floor,
        "upgrade": up,
        "downgrade": down,
        "startup": startup,
        "rss": max(up_rss, down_rss),
        "size": size_after / size_before,
        "wal": wal_after - wal_before,
        "size_before": size_before,
    }


# --- report ------------------------------------------------------------------------------------------


def summarize(engine: str, rows: int, rounds: list[dict]) -> dict:
    median = {k: statistics.median(r[k] for r in rounds) for k in ("floor", "upgrade", "downgrade", "startup")}
    summary = {
        "engine": engine,
        "rows": rows,
        **median,
        "rss": max(r["rss"] for r in rounds),
        "ratio": median["upgrade"] / median["floor"],
        "down_ratio": median["downgrade"] / median["upgrade"],
        "s_per_m": median["upgrade"] / rows * 1e6,
        "work_s_per_m": (median["upgrade"] - median["startup"]) / rows * 1e6,
    }
    if engine == "postgresql":
        pg = {k: statistics.median(r[k] for r in rounds) for k in ("size", "floor_size", "wal", "floor_wal")}
        summary.update(pg, size_before=rounds[0]["size_before"], wal_ratio=pg["wal"] / pg["floor_wal"])
    return summary


def print_table(results: list[dict]) -> None:
    print(
        "| engine | rows | floor s | upgrade s | downgrade s | upgrade / floor | downgrade / upgrade |"
        " upgrade s per 1M rows | (upgrade - start-up) s per 1M rows | peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['engine']} | {r['rows']:,} | {r['floor']:.2f} | {r['upgrade']:.2f} | {r['downgrade']:.2f} | "
            f"{r['ratio']:.2f}x | {r['down_ratio']:.2f}x | {r['s_per_m']:.2f} | {r['work_s_per_m']:.2f} | "
            f"{r['rss']} |",
            flush=True,
        )
    pg = [r for r in results if "wal" in r]
    if pg:
        print()
        print(
            "| rows | table+indexes before MiB | after upgrade / before | after floor / before | upgrade WAL MiB |"
            " floor WAL MiB | WAL upgrade / floor |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in pg:
            print(
                f"| {r['rows']:,} | {r['size_before'] / 2**20:.1f} | {r['size']:.3f}x | {r['floor_size']:.3f}x | "
                f"{r['wal'] / 2**20:.0f} | {r['floor_wal'] / 2**20:.0f} | {r['wal_ratio']:.2f}x |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-sqlite-"))
    admin = server = None
    try:
        for engine in args.engines.split(","):
            if engine == "postgresql":
                admin, server = pg_admin_url()
            for rows in sizes:
                print(f"{engine}: seeding {rows:,} rows ...", file=sys.stderr, flush=True)
                if engine == "sqlite":
                    seed = workdir / f"seed-{rows}.db"
                    sqlite_seed(seed, rows)
                    rounds = [sqlite_round(seed, workdir / "work.db") for _ in range(args.repeats)]
                    seed.unlink()
                else:
                    seed = pg_seed(admin, rows)
                    rounds = [pg_round(admin, seed) for _ in range(args.repeats)]
                    with psycopg.connect(admin, autocommit=True) as connection:
                        connection.execute("DROP DATABASE IF EXISTS bench_work")
                        connection.execute(f"DROP DATABASE {seed}")
                for r in rounds:
                    print(f"  round: {r}", file=sys.stderr, flush=True)
                results.append(summarize(engine, rows, rounds))
                print_table(results[-1:])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if server is not None:
            server.cleanup()
    print()
    print_table(results)


if __name__ == "__main__":
    main()
