"""Benchmark: the dashboard's two requests through the app against one raw GROUP BY over the events.

For each engine and size it builds a table at head with N rows spread evenly over the last 60 days (4 providers,
12 models, a third total-only, seeded by one INSERT ... SELECT), makes the hourly aggregate (``autopack
usage-aggregate create``, timed), then, alternating and repeating, measures per period (day, week, month):

- ``raw``: the floor, one plain ``SELECT provider, SUM(...), COUNT(*) WHERE created_at >= :start GROUP BY
  provider`` over the events (the same sums, no instant rules, no undated line, no exact sums);
- ``usage``: the whole request ``GET /dashboard/usage`` through the app (TestClient), database warm;
- ``breakdown``: the whole request ``GET /dashboard/usage/breakdown``;
- with ``--events``, the same two requests reading the events alone (``events-usage``, ``events-breakdown``),
  as the dashboard does without the aggregate.

It prints medians in ms and the ratios request / raw.

    python benchmarks/bench_dashboard.py --rows 100000,1000000,10000000 --repeats 7
    BENCH_POSTGRES=postgresql://postgres@127.0.0.1:5432/postgres BENCH_MYSQL=mysql://root@127.0.0.1:3306 \\
        python benchmarks/bench_dashboard.py --engines sqlite,postgresql,mariadb
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from app_client import app_client  # noqa: E402

from autopack.dashboard import PERIOD_DAYS, period_start  # noqa: E402
from autopack.database import make_engine, with_driver  # noqa: E402
from autopack.usage_recorder import utcnow  # noqa: E402
from support import alembic  # noqa: E402

RAW = (
    "SELECT provider, SUM(COALESCE(prompt_tokens, 0)), SUM(COALESCE(completion_tokens, 0)), SUM(total_tokens), "
    "COUNT(*) FROM llm_usage_events WHERE created_at >= :start GROUP BY provider ORDER BY provider"
)
COLUMNS = "provider, model, role, prompt_tokens, completion_tokens, total_tokens, created_at, is_doctor_call"
ROW = (  # row i of N, SQL over an integer i: the provider, model, splits, total and age the benchmark has always used
    "CONCAT('provider-', i % 4), CONCAT('model-', i % 12), 'builder', CASE WHEN i % 3 = 0 THEN NULL ELSE "
    "1000 + i % 97 END, CASE WHEN i % 3 = 0 THEN NULL ELSE 200 + i % 13 END, CASE WHEN i % 3 = 0 THEN 5000 ELSE "
    "1200 + i % 97 + i % 13 END"
)


def database(engine_name: str) -> str:
    if engine_name == "sqlite":
        return f"sqlite:///{tempfile.mkdtemp()}/dashboard.db"
    server = os.environ["BENCH_POSTGRES" if engine_name == "postgresql" else "BENCH_MYSQL"]
    name = f"bench_dashboard_{uuid.uuid4().hex[:8]}"
    admin = create_engine(with_driver(make_url(server)), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return make_url(server).set(database=name).render_as_string(False)


def seed(url: str, rows: int) -> None:
    alembic(url, "upgrade", "head")
    engine = make_engine(url)
    now, seconds = utcnow(), timedelta(days=60).total_seconds()
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            ago = f"'-' || (i * {seconds} / {rows}) || ' seconds'"
            at = f"strftime('%Y-%m-%d %H:%M:%f', '{now.isoformat(sep=' ')}', {ago})"
            row = ROW.replace("CONCAT('provider-', i % 4)", "'provider-' || (i % 4)").replace(
                "CONCAT('model-', i % 12)", "'model-' || (i % 12)"
            )
            source = f"WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {rows - 1}) "
            connection.exec_driver_sql(f"INSERT INTO llm_usage_events ({COLUMNS}) {source}SELECT {row}, {at}, 0 FROM s")
            connection.exec_driver_sql("ANALYZE")
        elif engine.dialect.name == "postgresql":
            at = f"TIMESTAMP '{now}' - i * INTERVAL '{seconds / rows} seconds'"
            connection.exec_driver_sql(
                f"INSERT INTO llm_usage_events ({COLUMNS}) SELECT {ROW}, {at}, false "
                f"FROM generate_series(0, {rows - 1}) AS i".replace("%", "%%")  # the driver's own placeholders
            )
            connection.exec_driver_sql("ANALYZE llm_usage_events")
        else:
            at = f"TIMESTAMP'{now}' - INTERVAL FLOOR(seq * {seconds * 1e6 / rows}) MICROSECOND"
            connection.exec_driver_sql(
                f"INSERT INTO llm_usage_events ({COLUMNS}) SELECT {ROW.replace('i %', 'seq %')}, {at}, false "
                f"FROM seq_0_to_{rows - 1}".replace("%", "%%")
            )
            connection.exec_driver_sql("ANALYZE TABLE llm_usage_events")
    engine.dispose()


def make_aggregate(url: str) -> float:
    started = time.perf_counter()
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "autopack", "usage-aggregate", "create"], env=env, check=True)
    return time.perf_counter() - started


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1000


def measure(url: str, repeats: int, events: bool) -> dict[tuple[str, str], list[float]]:
    engine = make_engine(url)
    times: dict[tuple[str, str], list[float]] = {}
    with app_client(engine) as client, Session(engine) as db:
        for _ in range(repeats):
            for period in PERIOD_DAYS:
                start = period_start(period)

                def raw(start=start):
                    db.execute(text(RAW), {"start": start}).all()
                    db.rollback()

                def request(path, period=period):
                    answer = client.get(f"/dashboard/usage{path}?period={period}")
                    assert answer.status_code == 200, answer.text

                actions = [("raw", raw), ("usage", lambda: request("")), ("breakdown", lambda: request("/breakdown"))]
                if events:
                    actions += [
                        ("events-usage", lambda: without(request, "")),
                        ("events-breakdown", lambda: without(request, "/breakdown")),
                    ]
                for name, action in actions:
                    times.setdefault((period, name), []).append(timed(action))
    engine.dispose()
    return times


def without(request, path: str) -> None:
    """The request as the dashboard answers it with no aggregate (its sessions told there is none)."""
    import autopack.dashboard_source as source

    kept = source.has_aggregate
    source.has_aggregate = lambda db: False
    try:
        request(path)
    finally:
        source.has_aggregate = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--engines", default="sqlite")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--events", action="store_true", help="also time the requests without the aggregate")
    args = parser.parse_args()
    names = ["raw", "usage", "breakdown"] + (["events-usage", "events-breakdown"] if args.events else [])
    for engine_name in args.engines.split(","):
        for rows in (int(n) for n in args.rows.split(",")):
            url = database(engine_name)
            started = time.perf_counter()
            seed(url, rows)
            seeded = time.perf_counter() - started
            made = make_aggregate(url)
            print(f"{engine_name}: {rows:,} rows seeded in {seeded:.0f} s; aggregate made in {made:.1f} s", flush=True)
            times = measure(url, args.repeats, args.events)
            print(f"{'period':<7} " + " ".join(f"{n + ' ms':>18}" for n in names) + "  usage/raw breakdown/raw")
            for period in PERIOD_DAYS:
                medians = {n: statistics.median(times[(period, n)]) for n in names}
                ratios = f"{medians['usage'] / medians['raw']:10.3f} {medians['breakdown'] / medians['raw']:13.3f}"
                print(f"{period:<7} " + " ".join(f"{medians[n]:18.1f}" for n in names) + f"  {ratios}", flush=True)
            drop(engine_name, url)


def drop(engine_name: str, url: str) -> None:
    if engine_name == "sqlite":
        os.remove(make_url(url).database)
        return
    server = make_url(url)
    admin = create_engine(
        with_driver(server.set(database="postgres" if engine_name == "postgresql" else None)),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE {server.database}")
    admin.dispose()


if __name__ == "__main__":
    main()
