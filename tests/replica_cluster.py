"""A private PostgreSQL primary and one streaming replica (initdb, pg_basebackup -R -X stream, as the postgres OS
user, on free ports), for the replica-lag tests and ``benchmarks/bench_online.py --replica``: a plain context
manager, so that a benchmark can start the same cluster the tests prove the throttle on, without pytest."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from support import scalar


def binaries() -> Path | None:
    """Debian's PostgreSQL binaries (``.ci/run`` installs the package), newest version first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_basebackup"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why no cluster can be started here, or None: the callers decide whether that skips or fails."""
    if binaries() is None or shutil.which("runuser") is None or os.geteuid() != 0:
        return "a streaming replica needs Debian's postgresql binaries and root (runuser -u postgres)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, timeout=120)


def wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def start_primary(bin_dir: Path, folder: Path, port: int) -> Path:
    """initdb and start a primary that accepts one replication connection from 127.0.0.1 without a password."""
    primary = folder / "primary"
    as_postgres(str(bin_dir / "initdb"), "-D", str(primary), "-U", "postgres", "--auth=trust")
    with open(primary / "postgresql.conf", "a") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{folder}'\n"
            "wal_level = replica\nmax_wal_senders = 4\n"
        )
    with open(primary / "pg_hba.conf", "a") as hba:
        hba.write("host replication postgres 127.0.0.1/32 trust\n")
    as_postgres(str(bin_dir / "pg_ctl"), "-D", str(primary), "-l", str(folder / "primary.log"), "-w", "start")
    return primary


def start_replica(bin_dir: Path, folder: Path, ports: tuple[int, int]) -> Path:
    """A streaming replica of the primary on ``ports[0]``, listening on ``ports[1]`` (its configuration is the
    primary's, copied by pg_basebackup, with the port changed)."""
    replica = folder / "replica"
    basebackup = (str(bin_dir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(ports[0]), "-U", "postgres")
    # a physical slot keeps every WAL segment the replica has not received: without one, a big copy on the primary
    # can recycle segments the replica still needs and leave it stopped for good ("already been removed")
    as_postgres(*basebackup, "-D", str(replica), "-R", "-X", "stream", "-C", "-S", "replica")
    conf = (replica / "postgresql.conf").read_text().replace(f"port = {ports[0]}", f"port = {ports[1]}")
    (replica / "postgresql.conf").write_text(conf)
    as_postgres(str(bin_dir / "pg_ctl"), "-D", str(replica), "-l", str(folder / "replica.log"), "-w", "start")
    return replica


def stop(bin_dir: Path, data: Path) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
        capture_output=True,
        timeout=60,
    )


@contextmanager
def primary_and_replica_cluster(replica_parent: Path | None = None) -> Iterator[tuple[URL, URL]]:
    """(primary URL, replica URL), once the replica streams; both servers stopped and their files removed after.
    ``replica_parent``: where the replica's folder goes (another disk, as a replica on its own host has), by
    default beside the primary's."""
    bin_dir = binaries()
    assert bin_dir is not None, unavailable()
    folder = Path(tempfile.mkdtemp(prefix="autopack-replica-"))
    replica_folder = (
        Path(tempfile.mkdtemp(prefix="autopack-replica-", dir=replica_parent)) if replica_parent else folder
    )
    for owned in (folder, replica_folder):
        shutil.chown(owned, "postgres")
    ports = free_port(), free_port()
    started = []
    try:
        started.append(start_primary(bin_dir, folder, ports[0]))
        started.append(start_replica(bin_dir, replica_folder, ports))
        urls = tuple(make_url(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres") for port in ports)
        wait_for(lambda: scalar(urls[0], "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == 1)
        yield urls
    finally:
        for data in reversed(started):
            stop(bin_dir, data)
        for owned in (replica_folder, folder):
            shutil.rmtree(owned, ignore_errors=True)
