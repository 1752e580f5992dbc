"""Benchmark: the dashboard's queries, placing each row by its instant (``event_time``), against the raw GROUP BY.

For each engine it builds a table at head with N rows spread evenly over the last 60 days (Autopack's own
``created_at`` form, 4 providers, 12 models, a third total-only), then, alternating and repeating, measures:

- ``raw``: the floor, the plain ``WHERE created_at >= :start GROUP BY`` per provider and per model that the
  dashboard ran before it read ``created_at`` in every form (no undated line, no exact sums);
- ``usage``: what ``GET /dashboard/usage`` runs now: ``usage_by_provider``, ``usage_by_model`` and ``undated_usage``;
- ``http``: the whole request ``GET /dashboard/usage`` through the app (TestClient), database warm.

per period (day, week, month). It prints medians in ms and the ratios usage / raw and http / raw.

    python benchmarks/bench_dashboard.py --rows 1000000 --repeats 7
    BENCH_POSTGRES=postgresql://postgres@127.0.0.1:5432/postgres BENCH_MYSQL=mysql://root@127.0.0.1:3306 \\
        python benchmarks/bench_dashboard.py --engines sqlite,postgresql,mariadb
"""

import argparse
import os
import statistics
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

from autopack.dashboard import PERIOD_DAYS, period_start, undated_usage, usage_by_model, usage_by_provider  # noqa: E402
from autopack.database import make_engine, with_driver  # noqa: E402
from autopack.usage_recorder import utcnow  # noqa: E402
from support import alembic  # noqa: E402

RAW = {
    grouping: (
        f"SELECT {grouping}, SUM(COALESCE(prompt_tokens, 0)), SUM(COALESCE(completion_tokens, 0)), "
        f"SUM(total_tokens), COUNT(*) FROM llm_usage_events WHERE created_at >= :start GROUP BY {grouping} "
        f"ORDER BY {grouping}"
    )
    for grouping in ("provider", "provider, model")
}


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
    now = utcnow()
    step = timedelta(days=60) / rows
    engine = make_engine(url)
    batch = 50_000
    with engine.begin() as connection:
        for first in range(0, rows, batch):
            values = []
            for i in range(first, min(rows, first + batch)):
                total_only = i % 3 == 0
                values.append(
                    {
                        "provider": f"provider-{i % 4}",
                        "model": f"model-{i % 12}",
                        "prompt": None if total_only else 1000 + i % 97,
                        "completion": None if total_only else 200 + i % 13,
                        "total": 5000 if total_only else 1200 + i % 97 + i % 13,
                        "at": now - step * i,
                    }
                )
            connection.execute(
                text(
                    "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, "
                    "total_tokens, created_at, is_doctor_call) VALUES (:provider, :model, 'builder', :prompt, "
                    ":completion, :total, :at, false)"
                ),
                values,
            )
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("ANALYZE")
        else:
            connection.exec_driver_sql(
                "ANALYZE llm_usage_events" if engine.dialect.name == "postgresql" else "ANALYZE TABLE llm_usage_events"
            )
    engine.dispose()


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1000


def measure(url: str, repeats: int) -> dict[tuple[str, str], list[float]]:
    engine = make_engine(url)
    times: dict[tuple[str, str], list[float]] = {}
    with app_client(engine) as client, Session(engine) as db:
        for _ in range(repeats):
            for period in PERIOD_DAYS:
                start = period_start(period)

                def raw(start=start):
                    for sql in RAW.values():
                        db.execute(text(sql), {"start": start}).all()

                def usage(period=period):
                    usage_by_provider(db, period, cap_tokens=0)
                    usage_by_model(db, period)
                    undated_usage(db)

                def http(period=period):
                    assert client.get(f"/dashboard/usage?period={period}").status_code == 200

                for name, action in (("raw", raw), ("usage", usage), ("http", http)):
                    times.setdefault((period, name), []).append(timed(action))
                db.rollback()
    engine.dispose()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--engines", default="sqlite")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for engine_name in args.engines.split(","):
        url = database(engine_name)
        started = time.perf_counter()
        seed(url, args.rows)
        print(f"{engine_name}: {args.rows:,} rows seeded in {time.perf_counter() - started:.0f} s", flush=True)
        times = measure(url, args.repeats)
        print(f"{'period':<7} {'raw ms':>8} {'usage ms':>9} {'http ms':>8} {'usage/raw':>10} {'http/raw':>9}")
        for period in PERIOD_DAYS:
            raw, usage, http = (statistics.median(times[(period, n)]) for n in ("raw", "usage", "http"))
            print(f"{period:<7} {raw:8.1f} {usage:9.1f} {http:8.1f} {usage / raw:10.2f} {http / raw:9.2f}")


if __name__ == "__main__":
    main()
