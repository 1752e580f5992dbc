"""Benchmark: the whole SQLite ``alembic upgrade head`` process against the physical floor of the same change.

The floor (issue 30): a separate ``python3`` process running ``BEGIN; ALTER TABLE llm_usage_events ADD COLUMN
total_tokens INTEGER NOT NULL DEFAULT 0; UPDATE llm_usage_events SET total_tokens = COALESCE(prompt_tokens, 0) +
COALESCE(completion_tokens, 0); COMMIT``: no check, no report, no Alembic. For each size it builds a
pre-BUILD-144 table (Autopack's columns and six indexes, ``bench_migration.sqlite_seed``) once and then, alternating
within each round, times from a fresh copy of it: the floor process, the ``alembic upgrade head`` process, and
``alembic current`` (what every Alembic command pays to start: interpreter, imports, env.py's connection). Medians.

    python benchmarks/bench_sqlite_floor.py --sizes 1000000,10000000 --repeats 5
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_migration import alembic, sqlite_seed

FLOOR = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN")
connection.execute("ALTER TABLE llm_usage_events ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0")
connection.execute(
    "UPDATE llm_usage_events SET total_tokens = COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)"
)
connection.execute("COMMIT")
"""


def floor(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["python3", "-c", FLOOR, str(path)], check=True)
    return time.perf_counter() - start


def one_round(seed: Path, work: Path) -> dict:
    shutil.copyfile(seed, work)
    floor_s = floor(work)
    shutil.copyfile(seed, work)
    url = f"sqlite:///{work}"
    startup, _ = alembic(url, "current")
    upgrade, _ = alembic(url, "upgrade", "head")
    return {"floor": floor_s, "upgrade": upgrade, "startup": startup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| rows | floor s | upgrade s | upgrade / floor | start-up s | (upgrade - start-up) / floor |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for rows in (int(size) for size in args.sizes.split(",")):
            seed, work = Path(folder) / "seed.db", Path(folder) / "work.db"
            sqlite_seed(seed, rows)
            rounds = [one_round(seed, work) for _ in range(args.repeats)]
            median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            print(
                f"| {rows:,} | {median['floor']:.2f} | {median['upgrade']:.2f} | "
                f"{median['upgrade'] / median['floor']:.2f}x | {median['startup']:.2f} | "
                f"{(median['upgrade'] - median['startup']) / median['floor']:.2f}x |",
                flush=True,
            )
            seed.unlink()


if __name__ == "__main__":
    main()
