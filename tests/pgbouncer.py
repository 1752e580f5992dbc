"""A private PgBouncer (Debian's ``pgbouncer``, which ``.ci/run`` installs) in front of a test's PostgreSQL server:
started as the ``postgres`` OS user with its own config in a temporary folder, on a free port, ``auth_type =
trust``, in the pool mode a test asks for, with or without ``ignore_startup_parameters``."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from replica_cluster import free_port
from sqlalchemy.engine import URL

PGBOUNCER = "/usr/sbin/pgbouncer"


def unavailable() -> str | None:
    """Why no PgBouncer can be started here, or None."""
    if not Path(PGBOUNCER).exists() or shutil.which("runuser") is None or os.geteuid() != 0:
        return "PgBouncer tests need Debian's pgbouncer and root (runuser -u postgres); .ci/run installs it"
    return None


@contextmanager
def pgbouncer(
    server: URL,
    pool_mode: str,
    ignore: str | None = None,
    pool_size: int = 2,
    users: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> Iterator[URL]:
    """Yield ``server`` (a database URL) as reached through a new PgBouncer; stopped at exit. ``users``: the roles
    besides postgres a test connects as (trust still looks each up in the auth file)."""
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    port = free_port()
    host = server.host or server.query.get("host") or "127.0.0.1"
    (folder / "userlist.txt").write_text("".join(f'"{user}" ""\n' for user in ("postgres", *users)))
    lines = [
        "[databases]",
        f"* = host={host} port={server.port or 5432}",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {folder}/userlist.txt",
        f"pool_mode = {pool_mode}",
        f"default_pool_size = {pool_size}",
        "max_client_conn = 200",
        f"logfile = {folder}/pgbouncer.log",
        f"pidfile = {folder}/pgbouncer.pid",
        "admin_users = postgres",
    ]
    if ignore:
        lines.append(f"ignore_startup_parameters = {ignore}")
    lines += extra  # e.g. "server_round_robin = 1", "server_reset_query ="
    (folder / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
    shutil.chown(folder, "postgres")
    for child in folder.iterdir():
        shutil.chown(child, "postgres")
    subprocess.run(
        ["runuser", "-u", "postgres", "--", PGBOUNCER, "-d", str(folder / "pgbouncer.ini")],
        check=True,
        capture_output=True,
        timeout=30,
    )
    through = server.set(host="127.0.0.1", port=port).difference_update_query(["host"])
    try:
        wait_until_up(through)
        yield through
    finally:
        pid = (folder / "pgbouncer.pid").read_text().strip() if (folder / "pgbouncer.pid").exists() else ""
        if pid:
            os.kill(int(pid), signal.SIGTERM)
            for _ in range(50):
                try:
                    os.kill(int(pid), 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        shutil.rmtree(folder, ignore_errors=True)


def wait_until_up(url: URL, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(libpq(url), connect_timeout=2, autocommit=True) as connection:
                connection.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, "PgBouncer did not start"
            time.sleep(0.2)


def libpq(url: URL) -> str:
    """A libpq connection string for ``url`` (no SQLAlchemy driver name)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)
