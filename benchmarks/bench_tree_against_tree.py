"""Benchmark: this migrations tree against another checkout of it, the same databases, alternating.

For a change meant to preserve behaviour (a redesign of the modules): each round copies the same seeded
pre-BUILD-144 database twice and runs ``alembic upgrade head`` then ``alembic downgrade -1`` as whole processes,
once from the other tree and once from this one, in turns (which goes first alternates). It prints the medians
and the ratio this tree / other tree for each engine; the seeds are bench_migration.py's and bench_mariadb.py's.

    git worktree add /tmp/oldtree <commit before the change>
    python benchmarks/bench_tree_against_tree.py --other /tmp/oldtree --rows 1000000 --repeats 5
"""

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import bench_mariadb
import psycopg
from bench_migration import ROOT, alembic, pg_admin_url, pg_fresh, pg_seed, sqlite_seed


def timed(url_for_a_fresh_copy, tree: Path) -> tuple[float, float]:
    url = url_for_a_fresh_copy()
    up, _ = alembic(url, "upgrade", "head", tree=tree)
    down, _ = alembic(url, "downgrade", "-1", tree=tree)
    return up, down


def rounds(fresh, trees: dict[str, Path], repeats: int) -> dict[str, list[tuple[float, float]]]:
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for repeat in range(repeats):
        order = list(trees) if repeat % 2 == 0 else list(reversed(trees))
        for name in order:
            found[name].append(timed(fresh, trees[name]))
            print(f"  {name}: upgrade {found[name][-1][0]:.2f}s, downgrade {found[name][-1][1]:.2f}s", file=sys.stderr)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True, help="the other checkout (its alembic.ini and src/)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--engines", default="sqlite,postgresql,mariadb")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    trees = {"other": args.other.resolve(), "this": ROOT}
    print(
        "| engine | rows | other upgrade s | this upgrade s | upgrade this / other | other downgrade s "
        "| this downgrade s | downgrade this / other |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for engine in args.engines.split(","):
        print(f"{engine}: seeding {args.rows:,} rows ...", file=sys.stderr, flush=True)
        server = None
        workdir = Path(tempfile.mkdtemp(prefix="bench-trees-"))
        try:
            if engine == "sqlite":
                seed, work = workdir / "seed.db", workdir / "work.db"
                sqlite_seed(seed, args.rows)

                def fresh(seed=seed, work=work) -> str:
                    shutil.copyfile(seed, work)
                    return f"sqlite:///{work}"
            elif engine == "postgresql":
                admin, server = pg_admin_url()
                name = pg_seed(admin, args.rows)

                def fresh(admin=admin, name=name) -> str:
                    return pg_fresh(admin, name)
            else:
                bench_mariadb.seed(args.rows)
                fresh = bench_mariadb.fresh
            found = rounds(fresh, trees, args.repeats)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if engine == "postgresql":
                with psycopg.connect(admin, autocommit=True) as connection:
                    connection.execute("DROP DATABASE IF EXISTS bench_work")
                    connection.execute(f"DROP DATABASE IF EXISTS {name}")
                if server is not None:
                    server.cleanup()
        up = {n: statistics.median(r[0] for r in found[n]) for n in trees}
        down = {n: statistics.median(r[1] for r in found[n]) for n in trees}
        print(
            f"| {engine} | {args.rows:,} | {up['other']:.2f} | {up['this']:.2f} | {up['this'] / up['other']:.3f}x | "
            f"{down['other']:.2f} | {down['this']:.2f} | {down['this'] / down['other']:.3f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
