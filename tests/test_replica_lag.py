"""The online backfill waits for a streaming replica that falls behind, on a real primary and replica this test
starts itself (initdb, pg_basebackup -R -X stream, as the postgres OS user), and says so in its log."""

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from replica_cluster import binaries, primary_and_replica_cluster, unavailable, wait_for
from sqlalchemy.engine import URL

from support import POSTGRES_BACKENDS, alembic, scalar, seed_large, start_alembic

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FINGERPRINT = (
    "SELECT md5(string_agg(concat_ws(':', id, prompt_tokens, completion_tokens, total_tokens), ',' ORDER BY id)) "
    "FROM llm_usage_events"
)


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[URL, URL]]:
    reason = unavailable()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    with primary_and_replica_cluster() as urls:
        yield urls


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


def test_a_wal_archiver_beside_the_replica_is_not_waited_for(primary_and_replica):
    """pg_receivewal (Barman's streaming archiver) replays nothing: its NULL replay position is not 'lag unreadable',
    which would stop every run after replica_wait_max while the real standby is caught up."""
    primary, _replica = primary_and_replica
    seed_large(primary, 50_000)
    archive = Path(tempfile.mkdtemp(prefix="autopack-walarchive-"))
    shutil.chown(archive, "postgres")
    receiver = subprocess.Popen(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(binaries() / "pg_receivewal"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(archive),
            "--no-loop",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: scalar(primary, "SELECT count(*) FROM pg_stat_replication") == 2)
        args = ("-x", "online=true", "-x", "batch_rows=5000", "-x", "replica_wait_max=20s", "upgrade", "head")
        up = alembic(primary, *args)
        assert "not waiting for pg_receivewal: a WAL receiver that replays nothing" in up.stderr, up.stderr
        assert "throttled" not in up.stderr and filled(primary) == 50_000
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)
        shutil.rmtree(archive, ignore_errors=True)
