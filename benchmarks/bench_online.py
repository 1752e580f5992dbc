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

``--replica`` (issue 13): the same writer and reader on the primary of a private primary + streaming replica
(``tests/replica_cluster.py``: Debian's binaries, run as root), comparing ``-x online=true`` with its default
replica limit (``online``) against ``-x max_replica_lag=off`` (``online-no-limit``). In place of the lock sampler,
every 100 ms the primary's ``pg_stat_replication`` gives the replica's ``replay_lag`` (NULL, which PostgreSQL
reports once the replica has caught up and nothing new arrives, counts as 0 and is counted) and its unreplayed WAL
(``pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)``): their peak and median, and how long after the command
the replica still needed to replay everything it wrote, since without a limit it can end with the replica behind.

Every 5 ms a fourth client samples what the writer's backend waits on (``pg_stat_activity``): the slow statements'
wait events, and the longest a writer statement was seen waiting on a lock (wait_event_type ``Lock``, from its first
such sample to its last). Mode ``none`` runs the same clients for 15 s with no migration: the writer's p99 each
other mode is compared with, in the same run (issue 30: ≤ 1.5x, and no lock wait over 100 ms).

Modes alternate within a run, each round on a fresh copy of one seeded database; with ``--repeats`` the
figures printed are medians over the rounds.

    BENCH_POSTGRES=postgresql://postgres@127.0.0.1:5432/postgres python benchmarks/bench_online.py --rows 1000000
    python benchmarks/bench_online.py --replica --rows 1000000 --repeats 3
    python benchmarks/bench_online.py --modes none,online --repeats 3 [--replica]
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

sys.path.insert(0, str(ROOT / "tests"))
from replica_cluster import primary_and_replica_cluster, unavailable

BUILD144 = "head"  # 0002, BUILD-144, which the floors describe

INTERVAL_S = 0.01
WAIT_INTERVAL_S = 0.005
SLOW_S = 0.05  # a writer statement slower than this has its wait events reported
CLIENT_NAME = "bench-client"
REPLICA_INTERVAL_S = 0.1
CATCH_UP_TIMEOUT_S = 600
NONE = "none"  # no migration: the writer and reader alone for NONE_S, the p99 the online mode is compared with
NONE_S = 15.0
MODES = {
    NONE: [],
    "default": [],
    "online": ["-x", "online=true"],
    # short batches with a pause after each, to see whether pacing the backfill spares the writer
    "online-paced": ["-x", "online=true", "-x", "batch_seconds=100ms", "-x", "batch_pause=100ms"],
    "online-no-limit": ["-x", "online=true", "-x", "max_replica_lag=off"],
}
# the writer, as pre-BUILD-144 code, and the reader, as the dashboard (see the module docstring)
WRITER_STATEMENT = (
    "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, "
    "created_at, is_doctor_call) VALUES ('old-code', 'm', 'builder', %s, 5, now(), false)"
)
READER_STATEMENT = "SELECT id, provider, model, prompt_tokens, completion_tokens FROM llm_usage_events WHERE id = %s"


def client(
    conninfo: str, statement: str, params, stop: threading.Event, latencies: list[float], starts: list[float]
) -> None:
    with psycopg.connect(conninfo, autocommit=True, application_name=CLIENT_NAME) as connection:
        i = 0
        while not stop.is_set():
            i += 1
            start = time.perf_counter()
            cursor = connection.execute(statement, params(i), prepare=False)
            if statement.startswith("SELECT"):
                cursor.fetchall()
            latencies.append(time.perf_counter() - start)
            starts.append(start)
            time.sleep(INTERVAL_S)


def wait_sampler(conninfo: str, stop: threading.Event, samples: list[tuple[float, str]]) -> None:
    """Every 5 ms, what the writer's backend waits on (pg_stat_activity), to say where its slow statements went."""
    query = (
        "SELECT COALESCE(wait_event_type || ':' || wait_event, 'CPU or client') FROM pg_stat_activity "
        "WHERE application_name = %s AND query LIKE 'INSERT%%' AND state = 'active'"
    )
    with psycopg.connect(conninfo, autocommit=True) as connection:
        while not stop.is_set():
            now = time.perf_counter()
            samples.extend((now, event) for (event,) in connection.execute(query, (CLIENT_NAME,)).fetchall())
            time.sleep(WAIT_INTERVAL_S)


def slow_write_waits(latencies: list[float], starts: list[float], samples: list[tuple[float, str]]) -> str:
    """The wait events sampled inside the writer's statements slower than SLOW_S, most frequent first."""
    counts: dict[str, int] = {}
    for start, latency in zip(starts, latencies, strict=True):
        if latency > SLOW_S:
            for at, event in samples:
                if start <= at <= start + latency:
                    counts[event] = counts.get(event, 0) + 1
    return ", ".join(f"{event} {n}" for event, n in sorted(counts.items(), key=lambda item: -item[1])) or "-"


def longest_lock_wait(latencies: list[float], starts: list[float], samples: list[tuple[float, str]]) -> float:
    """The longest a writer statement was seen waiting on a lock (wait_event_type Lock): in each statement, the time
    from its first Lock sample to its last (plus one sampling interval), the longest over all statements."""
    longest = 0.0
    lock_samples = [at for at, event in samples if event.startswith("Lock:")]
    for start, latency in zip(starts, latencies, strict=True):
        inside = [at for at in lock_samples if start <= at <= start + latency]
        if inside:
            longest = max(longest, inside[-1] - inside[0] + WAIT_INTERVAL_S)
    return longest


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


def replica_sampler(conninfo: str, stop: threading.Event, samples: list[tuple]) -> None:
    """(replay_lag in seconds or None, unreplayed WAL bytes) of each replica, every 100 ms, read on the primary as
    the throttle reads them."""
    query = (
        "SELECT EXTRACT(epoch FROM replay_lag), pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) "
        "FROM pg_stat_replication"
    )
    with psycopg.connect(conninfo, autocommit=True) as connection:
        while not stop.is_set():
            samples.extend(connection.execute(query).fetchall())
            time.sleep(REPLICA_INTERVAL_S)


def replica_catch_up_s(conninfo: str) -> float:
    """Seconds until every replica has replayed the primary's WAL up to now: before a round so that it starts from
    a replica that is not still replaying the fresh copy, after the command to see what it left behind (a
    written-to primary is never exactly caught up, so this waits for the position of the call, not for zero)."""
    query = "SELECT COALESCE(bool_and(replay_lsn >= %s::pg_lsn), false) FROM pg_stat_replication"
    with psycopg.connect(conninfo, autocommit=True) as connection:
        target = connection.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        start = time.perf_counter()
        while not connection.execute(query, (target,)).fetchone()[0]:
            if not connection.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0]:
                raise SystemExit("the replica is not streaming (no row in pg_stat_replication): see replica.log")
            if time.perf_counter() - start > CATCH_UP_TIMEOUT_S:
                raise SystemExit(f"the replica did not replay up to {target} in {CATCH_UP_TIMEOUT_S} s")
            time.sleep(INTERVAL_S)
        return time.perf_counter() - start


def replica_summary(samples: list[tuple], catch_up_s: float, log: str) -> dict:
    """The sampled lag, NULL ``replay_lag`` as 0 (and counted), and how often the command said it waited."""
    lags = [float(lag or 0) for lag, _ in samples]
    lag_bytes = [float(b) / 2**20 for _, b in samples if b is not None]
    return {
        "lag_samples": len(samples),
        "lag_null": sum(lag is None for lag, _ in samples),
        "lag_peak_s": max(lags, default=0.0),
        "lag_median_s": statistics.median(lags) if lags else 0.0,
        "bytes_peak_mib": max(lag_bytes, default=0.0),
        "bytes_median_mib": statistics.median(lag_bytes) if lag_bytes else 0.0,
        "catch_up_s": catch_up_s,
        "throttled": log.count("throttled:"),
    }


def run(
    url: str,
    rows: int,
    extra: list[str] | None,
    command: tuple[str, str] = ("upgrade", BUILD144),
    replica: bool = False,
) -> dict:
    """One measured command with the writer and reader running, and the lock sampler or, with ``replica``, the
    replica sampler; ``extra`` None: no command, the clients alone for ``NONE_S``."""
    conninfo = url.replace("+psycopg", "")
    if replica:
        replica_catch_up_s(conninfo)
    stop = threading.Event()
    writes, write_starts, reads, read_starts, samples, waits = [], [], [], [], [], []
    threads = [
        threading.Thread(target=client, args=(conninfo, WRITER_STATEMENT, lambda i: (i,), stop, writes, write_starts)),
        threading.Thread(
            target=client,
            args=(conninfo, READER_STATEMENT, lambda i: (1 + (i * 7919) % rows,), stop, reads, read_starts),
        ),
        threading.Thread(target=replica_sampler if replica else sampler, args=(conninfo, stop, samples)),
        threading.Thread(target=wait_sampler, args=(conninfo, stop, waits)),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    start = time.perf_counter()
    if extra is None:  # the same clients, no migration
        argv = [sys.executable, "-c", f"import time; time.sleep({NONE_S})"]
    else:
        argv = [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *extra, *command]
    result = subprocess.run(
        argv,
        env={**os.environ, "DATABASE_URL": url},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    catch_up_s = replica_catch_up_s(conninfo) if replica else 0.0
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
        "slow_writes": sum(latency > SLOW_S for latency in writes),
        "slow_write_waits": slow_write_waits(writes, write_starts, waits),
        "write_lock_wait": longest_lock_wait(writes, write_starts, waits),
        **(
            replica_summary(samples, catch_up_s, result.stderr)
            if replica
            else {"longest_hold": max(samples, default=0.0)}
        ),
    }


def at_head_with_total_only_rows(url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", BUILD144],
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


def measure(admin: str, args: argparse.Namespace, modes: list[str], replica: bool) -> dict[str, dict]:
    """Per mode, the median of each figure over ``args.repeats`` rounds; the modes alternate so that a drift of the
    machine falls on all of them, and every round starts from a fresh copy of one seed."""
    command = ("upgrade", BUILD144) if args.direction == "upgrade" else ("downgrade", "-1")
    seed = pg_seed(admin, args.rows)
    rounds: dict[str, list[dict]] = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode in modes:
            url = pg_fresh(admin, seed)
            if args.direction == "downgrade":
                at_head_with_total_only_rows(url)
            rounds[mode].append(run(url, args.rows, None if mode == NONE else MODES[mode], command, replica))
            print(f"{mode}: {rounds[mode][-1]}", file=sys.stderr, flush=True)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute("DROP DATABASE IF EXISTS bench_work")
        connection.execute(f"DROP DATABASE {seed}")
    return {mode: {key: summary(r[key] for r in rs) for key in rs[0]} for mode, rs in rounds.items()}


def summary(values):
    """The median of a figure over the rounds; the rounds' texts one after another."""
    values = list(values)
    return " / ".join(values) if isinstance(values[0], str) else statistics.median(values)


def measure_with_replica(args: argparse.Namespace, modes: list[str]) -> dict[str, dict]:
    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"--replica: {reason}")
    with primary_and_replica_cluster(replica_parent=args.replica_on) as (primary, _):
        return measure(primary.set(drivername="postgresql").render_as_string(False), args, modes, replica=True)


def measure_alone(args: argparse.Namespace, modes: list[str]) -> dict[str, dict]:
    admin, server = pg_admin_url()
    try:
        return measure(admin, args, modes, replica=False)
    finally:
        if server is not None:
            server.cleanup()


CLIENT_COLUMNS = (
    ("writer max s", "write_max", ".3f"),
    ("writer p99 s", "write_p99", ".3f"),
    ("writer longest lock wait s", "write_lock_wait", ".3f"),
    ("reader max s", "read_max", ".3f"),
    ("reader p99 s", "read_p99", ".3f"),
)
LOCK_COLUMNS = (("longest ACCESS EXCLUSIVE s", "longest_hold", ".3f"),)
REPLICA_COLUMNS = (
    ("replay_lag peak s", "lag_peak_s", ".3f"),
    ("replay_lag median s", "lag_median_s", ".3f"),
    ("byte lag peak MiB", "bytes_peak_mib", ".1f"),
    ("byte lag median MiB", "bytes_median_mib", ".2f"),
    ("replica done after s", "catch_up_s", ".2f"),
    ("samples", "lag_samples", ".0f"),
    ("NULL replay_lag samples", "lag_null", ".0f"),
    ("'throttled' log lines", "throttled", ".0f"),
)


def print_table(args: argparse.Namespace, results: dict[str, dict]) -> None:
    tail = REPLICA_COLUMNS if args.replica else LOCK_COLUMNS
    columns = ((f"{args.direction} s", "upgrade_s", ".2f"), *CLIENT_COLUMNS, *tail)
    print("| mode | rows | " + " | ".join(header for header, _, _ in columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for mode, r in results.items():
        figures = " | ".join(format(r[key], spec) for _, key, spec in columns)
        print(f"| {mode} | {args.rows:,} | {figures} |")
    if NONE in results:
        for mode, r in results.items():
            if mode != NONE:
                ratio = r["write_p99"] / results[NONE]["write_p99"]
                print(f"\nwriter p99 {mode} / {NONE} (no migration, same run): {ratio:.2f}x")
    every, over = WAIT_INTERVAL_S * 1000, SLOW_S * 1000
    print(f"\nWait events sampled every {every:.0f} ms inside writer statements over {over:.0f} ms:")
    for mode, r in results.items():
        print(f"- {mode}: {r['slow_writes']:.0f} slow statements (median); {r['slow_write_waits']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--modes", help=f"comma-separated, of {', '.join(MODES)} (default: default,online; online,online-no-limit)"
    )
    parser.add_argument(
        "--direction",
        choices=("upgrade", "downgrade"),
        default="upgrade",
        help="downgrade: bring the table to head first (default mode, 1,000 total-only rows added), then measure "
        "'alembic downgrade -1'",
    )
    parser.add_argument(
        "--replica",
        action="store_true",
        help="on a private primary + streaming replica (root, Debian's postgresql binaries; BENCH_POSTGRES unused): "
        "replay lag in time and bytes in place of the lock sampler",
    )
    parser.add_argument(
        "--replica-on",
        type=Path,
        help="a folder for the replica's data (e.g. /dev/shm): the replica on a disk of its own, as on its own host, "
        "so that its WAL writes and fsyncs do not share the primary's disk (default: beside the primary)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every mode, alternating; medians printed")
    args = parser.parse_args()
    modes = (args.modes or ("online,online-no-limit" if args.replica else "default,online")).split(",")
    results = (measure_with_replica if args.replica else measure_alone)(args, modes)
    print_table(args, results)


if __name__ == "__main__":
    main()
