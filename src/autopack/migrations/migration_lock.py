"""One migrator at a time: a session-level lock held for the whole run, taken before the revision is read.

Why. Several Autopack instances starting together each call ``init_db()``, and two operators may type
``alembic upgrade head`` at once. Without a lock both read revision 0001 and both migrate: the second fails
midway, or (online mode, which commits as it goes) both backfill the same rows. So every command that changes
the database (upgrade, downgrade, stamp) first takes a lock that lives as long as its session, not its
transaction (the online mode commits between batches): PostgreSQL's ``pg_advisory_lock`` on upstream
Autopack's key, MariaDB's ``GET_LOCK``. A second migrator waits for it, saying so, and then reads the
revision afresh: the first has finished, so Alembic finds head and does nothing (env.py logs that). SQLite
needs no lock of its own: every migration holds ``BEGIN EXCLUSIVE`` and reads the revision inside it (a
second migrator waits up to ``-x busy_timeout``).
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic.util import CommandError

from autopack.migrations.options import Options, interval_seconds

log = logging.getLogger("alembic.build144")

PG_KEY = 0x4155544F5041434B  # 'AUTOPACK': the advisory lock key upstream Autopack's init_db uses
# MariaDB's lock names are server-wide: one per database, so that two Autopack databases migrate side by side
MARIADB_NAME = "CONCAT('autopack_migrations:', DATABASE())"
POLL_S = 0.5
SAY_EVERY_S = 10.0
# advisory locks are per database, like the lock itself: a holder in another database is not ours
PG_HOLDER = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = :low AND classid = :high "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


@contextmanager
def one_migrator_at_a_time(connection: sa.Connection, options: Options, changes: bool = True) -> Iterator[None]:
    """Hold the migration lock around a run that ``changes`` the database; wait at most ``-x migration_lock_wait``."""
    dialect = connection.dialect.name
    if not changes or dialect not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    take, release = (
        ("SELECT pg_try_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)")
        if dialect == "postgresql"
        else (f"SELECT GET_LOCK({MARIADB_NAME}, 0)", f"SELECT RELEASE_LOCK({MARIADB_NAME})")
    )
    names = {"key": PG_KEY} if dialect == "postgresql" else {}
    started, last_said = time.monotonic(), None
    limit = interval_seconds(options.migration_lock_wait)
    while not connection.execute(sa.text(take), names).scalar():
        now = time.monotonic()
        if last_said is None or now - last_said >= SAY_EVERY_S:
            log.info("waiting for the migration lock: %s (%.0fs so far)", holder(connection), now - started)
            last_said = now
        if now - started > limit:
            connection.rollback()
            raise CommandError(
                f"Another migration of this database held the migration lock for {options.migration_lock_wait} "
                f"({holder(connection)}): let it finish, or raise -x migration_lock_wait; nothing was changed."
            )
        time.sleep(POLL_S)
    if last_said is not None:
        log.info("took the migration lock after %.1fs: reading the revision afresh", time.monotonic() - started)
    connection.commit()  # the lock is the session's; Alembic begins its own transaction
    try:
        yield
    finally:
        try:
            connection.execute(sa.text(release), names)
            connection.commit()
        except sa.exc.DBAPIError:  # a broken connection: its session is gone, and the lock with it
            pass


def holder(connection: sa.Connection) -> str:
    """Who holds the lock, as an operator would look it up."""
    if connection.dialect.name == "postgresql":
        pids = connection.execute(sa.text(PG_HOLDER), {"low": PG_KEY & 0xFFFFFFFF, "high": PG_KEY >> 32}).scalars()
        found = ", ".join(str(pid) for pid in pids)
        return f"held by backend pid {found} (pg_stat_activity)" if found else "held by another session"
    found = connection.execute(sa.text(f"SELECT IS_USED_LOCK({MARIADB_NAME})")).scalar()
    return f"held by connection {found} (SHOW PROCESSLIST)" if found else "held by another session"


def say_if_nothing_was_done(applied: list[dict], heads: tuple[str, ...]) -> None:
    """A run that applied no revision says so, with the revision found (another migrator may have done it)."""
    if not applied:
        log.info("Nothing to do: the database is already at %s", ", ".join(heads) or "no revision")
