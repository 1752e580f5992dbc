"""A private PostgreSQL publisher and subscriber (two clusters made with initdb as the postgres OS user, on free ports,
``wal_level = logical``), for the logical-replication tests: a plain context manager, like ``replica_cluster``'s.
The tests make the publication and the subscription themselves (``subscribe``)."""

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from replica_cluster import as_postgres, binaries, free_port, stop, wait_for
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from support import scalar


def start_cluster(bin_dir: Path, folder: Path, name: str, port: int) -> Path:
    """initdb and start a cluster that takes logical replication connections from 127.0.0.1 without a password."""
    data = folder / name
    as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{folder}'\n"
            "wal_level = logical\nmax_wal_senders = 8\nmax_replication_slots = 8\n"
            "max_logical_replication_workers = 4\nwal_retrieve_retry_interval = 200ms\n"
        )
    as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / f"{name}.log"), "-w", "start")
    return data


@contextmanager
def publisher_and_subscriber() -> Iterator[tuple[URL, URL, Path]]:
    """(publisher URL, subscriber URL, the folder holding both server logs); both stopped and removed after."""
    bin_dir = binaries()
    assert bin_dir is not None
    folder = Path(tempfile.mkdtemp(prefix="autopack-logical-"))
    shutil.chown(folder, "postgres")
    started = []
    try:
        urls = []
        for name in ("publisher", "subscriber"):
            port = free_port()
            started.append(start_cluster(bin_dir, folder, name, port))
            urls.append(make_url(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"))
        yield urls[0], urls[1], folder
    finally:
        for data in reversed(started):
            stop(bin_dir, data)
        shutil.rmtree(folder, ignore_errors=True)


def autocommit(url: URL, *statements: str) -> None:
    """Statements that may not run in a transaction block (CREATE / DROP SUBSCRIPTION), one at a time."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def subscribe(publisher: URL, subscriber: URL, publication: str = "usage_pub") -> None:
    """A subscription on ``subscriber`` to ``publication`` of ``publisher``, with its initial copy done."""
    conninfo = f"host=127.0.0.1 port={publisher.port} user=postgres dbname=postgres"
    autocommit(subscriber, f"CREATE SUBSCRIPTION usage_sub CONNECTION '{conninfo}' PUBLICATION {publication}")
    wait_for(lambda: scalar(subscriber, "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'") == 0)


def caught_up(publisher: URL) -> bool:
    """The subscription's slot has confirmed everything the publisher wrote so far."""
    lag = scalar(
        publisher,
        "SELECT COALESCE(MAX(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)), -1) "
        "FROM pg_replication_slots WHERE slot_type = 'logical'",
    )
    return lag is not None and lag <= 0


def applying(subscriber: URL) -> bool:
    """The subscription's apply worker is running (it exits, and restarts to fail again, on an apply error)."""
    return bool(scalar(subscriber, "SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL"))


def server_log(folder: Path, name: str) -> str:
    return (folder / f"{name}.log").read_text(errors="replace")


def wait_until(condition, timeout_s: float = 60) -> None:
    wait_for(condition, timeout_s)
