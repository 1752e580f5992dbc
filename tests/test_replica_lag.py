"""The online backfill waits for a streaming replica that falls behind, on a real primary and replica this test
starts itself (initdb, pg_basebackup -R -X stream, as the postgres OS user), and says so in its log."""

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, make_url

from support import POSTGRES_BACKENDS, alembic, scalar, seed_large, start_alembic

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FINGERPRINT = (
    "SELECT md5(string_agg(concat_ws(':', id, prompt_tokens, completion_tokens, total_tokens), ',' ORDER BY id)) "
    "FROM llm_usage_events"
)


def binaries() -> Path | None:
    """Debian's PostgreSQL binaries (``.ci/run`` installs the package), newest version first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_basebackup"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, timeout=120)


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[URL, URL]]:
    bin_dir = binaries()
    if bin_dir is None or shutil.which("runuser") is None or os.geteuid() != 0:
        reason = "a streaming replica needs Debian's postgresql binaries and root (runuser -u postgres)"
        if IN_CI:
            pytest.fail(f"required in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="autopack-replica-"))
    shutil.chown(folder, "postgres")
    primary, replica = folder / "primary", folder / "replica"
    ports = free_port(), free_port()
    started = []
    try:
        as_postgres(str(bin_dir / "initdb"), "-D", str(primary), "-U", "postgres", "--auth=trust")
        with open(primary / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {ports[0]}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{folder}'\n"
                "wal_level = replica\nmax_wal_senders = 4\n"
            )
        with open(primary / "pg_hba.conf", "a") as hba:
            hba.write("host replication postgres 127.0.0.1/32 trust\n")
        as_postgres(str(bin_dir / "pg_ctl"), "-D", str(primary), "-l", str(folder / "primary.log"), "-w", "start")
        started.append(primary)
        as_postgres(
            str(bin_dir / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(ports[0]),
            "-U",
            "postgres",
            "-D",
            str(replica),
            "-R",
            "-X",
            "stream",
        )
        conf = (replica / "postgresql.conf").read_text().replace(f"port = {ports[0]}", f"port = {ports[1]}")
        (replica / "postgresql.conf").write_text(conf)
        as_postgres(str(bin_dir / "pg_ctl"), "-D", str(replica), "-l", str(folder / "replica.log"), "-w", "start")
        started.append(replica)
        urls = tuple(make_url(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres") for port in ports)
        wait_for(lambda: scalar(urls[0], "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == 1)
        yield urls
    finally:
        for data in reversed(started):
            subprocess.run(
                ["runuser", "-u", "postgres", "--", str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(folder, ignore_errors=True)


def wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def caught_up(primary: URL) -> bool:
    return (
        scalar(
            primary,
            "SELECT COALESCE(MAX(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0) FROM pg_stat_replication",
        )
        == 0
    )


def seeded_with_replay_paused(primary: URL, replica: URL, rows: int) -> None:
    """A pre-BUILD-144 table of ``rows`` on the primary, replayed on the replica, whose replay is then paused."""
    seed_large(primary, rows)
    wait_for(lambda: caught_up(primary))
    scalar(replica, "SELECT pg_wal_replay_pause()")


def filled(url: URL) -> int:
    try:
        return scalar(url, "SELECT count(*) FROM llm_usage_events WHERE total_tokens <> 0")
    except Exception:  # the column is not there yet
        return 0


def test_a_paused_replica_stops_the_online_backfill_until_it_resumes(primary_and_replica):
    primary, replica = primary_and_replica
    seeded_with_replay_paused(primary, replica, 600_000)  # about 3x the default 64 MiB of WAL when backfilled
    to_fill = scalar(primary, "SELECT count(*) FROM llm_usage_events WHERE prompt_tokens + completion_tokens <> 0")
    process = start_alembic(primary, "-x", "online=true", "upgrade", "head")
    for line in process.stderr:
        if "throttled:" in line:
            assert "MiB behind" in line, line
            break
    else:
        pytest.fail(f"no throttled line; exit {process.wait()}")
    held = filled(primary)
    time.sleep(5.5)
    assert filled(primary) == held and process.poll() is None  # no batch while the replica is behind
    assert 0 < held < to_fill
    scalar(replica, "SELECT pg_wal_replay_resume()")
    process.communicate(timeout=300)
    assert process.returncode == 0
    assert filled(primary) == to_fill
    assert alembic(primary, "current").stdout.strip() == "0002 (head)"
    wait_for(lambda: caught_up(primary))
    assert scalar(replica, FINGERPRINT) == scalar(primary, FINGERPRINT)


def test_a_replica_that_never_catches_up_stops_the_backfill_resumably(primary_and_replica):
    primary, replica = primary_and_replica
    seeded_with_replay_paused(primary, replica, 300_000)
    args = ("-x", "online=true", "-x", "max_replica_lag_bytes=1MB", "-x", "replica_wait_max=3s", "upgrade", "head")
    result = alembic(primary, *args, check=False)
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED: ")]
    assert result.returncode != 0 and len(failed) == 1, result.stdout + result.stderr
    assert "waited 3s in all for streaming replicas" in failed[0] and "re-running the same command resumes" in failed[0]
    assert alembic(primary, "current").stdout.strip() == "0001"
    scalar(replica, "SELECT pg_wal_replay_resume()")
    alembic(primary, "-x", "online=true", "upgrade", "head")
    assert filled(primary) == 300_000  # every row's splits sum to more than 0 here (seed_large)
    wait_for(lambda: caught_up(primary))
    assert scalar(replica, FINGERPRINT) == scalar(primary, FINGERPRINT)


def test_max_replica_lag_off_does_not_wait(primary_and_replica):
    primary, replica = primary_and_replica
    seeded_with_replay_paused(primary, replica, 100_000)
    up = alembic(
        primary, "-x", "online=true", "-x", "max_replica_lag=off", "-x", "max_replica_lag_bytes=1MB", "upgrade", "head"
    )
    assert "throttled" not in up.stderr and filled(primary) == 100_000
    scalar(replica, "SELECT pg_wal_replay_resume()")


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_batch_pause_and_batch_seconds_keep_every_row_right(db_url):
    seed_large(db_url, 50_000)
    options = ["-x", "batch_rows=1000", "-x", "batch_pause=5ms", "-x", "batch_seconds=0.05s", "-x", "progress_every=0"]
    up = alembic(db_url, "-x", "online=true", *options, "upgrade", "head")
    sizes = [int(d.replace(",", "")) for d in re.findall(r"backfill: ([\d,]+) / ", up.stderr)]
    assert sizes[-1] == 50_000 and len(sizes) < 50  # batches grew from 1,000 towards 0.05 s each
    assert filled(db_url) == 50_000
