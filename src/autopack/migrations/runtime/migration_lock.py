"""One migrator at a time: a session-level lock held for the whole run, taken before the revision is read.

Why. Several Autopack instances starting together each call ``init_db()``, and two operators may type
``alembic upgrade head`` at once. Without a lock both read the same revision and both migrate: the second fails
midway, or (online mode, which commits as it goes) both backfill the same rows. So every command that changes
the database (upgrade, downgrade, stamp) first takes a lock that lives as long as its session, not its
transaction (the online mode commits between batches): PostgreSQL's ``pg_advisory_lock`` on upstream
Autopack's key, MariaDB's ``GET_LOCK``. A second migrator waits for it, saying so, and then reads the
revision afresh: the first has finished, so Alembic finds head and does nothing (env.py logs that). SQLite:
an exclusive ``flock`` on a file beside the database, held the same way (every migration also holds
``BEGIN EXCLUSIVE``, but waiting on that gives up after ``-x busy_timeout``, as it must for the application).
"""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import sqlalchemy as sa

from autopack.migrations.runtime.connection import sqlite_path
from autopack.migrations.runtime.engine_traits import traits_of
from autopack.migrations.runtime.messages import refusal
from autopack.migrations.runtime.options import Options, interval_seconds

log = logging.getLogger("alembic.build144")

PG_KEY = 0x4155544F5041434B  # 'AUTOPACK': the advisory lock key upstream Autopack's init_db uses
# MariaDB's lock names are server-wide: one per database, so that two Autopack databases migrate side by side;
# the database's name as MD5, so the name fits MySQL's 64-character limit (a database name can be 64 long)
MARIADB_NAME = "CONCAT('autopack_migrations:', MD5(DATABASE()))"
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
    if not changes:
        yield
    elif traits_of(connection.dialect).migration_lock == "file":
        with sqlite_lock_file(connection, options):
            yield
    elif traits_of(connection.dialect).migration_lock == "advisory" and not options.online:
        with transaction_lock(connection, options):
            yield
    else:
        with server_lock(connection, options):
            yield


@contextmanager
def transaction_lock(connection: sa.Connection, options: Options) -> Iterator[None]:
    """PostgreSQL's default mode is one transaction: its lock is that transaction's (``pg_advisory_xact_lock``), taken
    in the transaction Alembic then runs and commits, and released by its commit or rollback whatever happens. Through
    a transaction pooler a session lock would be taken on one server connection and released on another, leaving it
    held for every later migrator; a transaction lock cannot leak."""
    take = sa.text("SELECT pg_try_advisory_xact_lock(:key)")

    def taken() -> bool:
        if connection.execute(take, {"key": PG_KEY}).scalar():
            return True
        connection.rollback()  # hold no snapshot while waiting
        return False

    wait_until(taken, lambda: holder(connection), options)
    yield  # the transaction stays open: Alembic's begin_transaction() adopts it and commits it


@contextmanager
def server_lock(connection: sa.Connection, options: Options) -> Iterator[None]:
    """PostgreSQL's advisory lock (online mode, which commits as it goes; a transaction pooler is refused before) or
    MariaDB's named lock: the session's, so it outlives the run's commits."""
    advisory = traits_of(connection.dialect).migration_lock == "advisory"
    take, release = (
        ("SELECT pg_try_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)")
        if advisory
        else (f"SELECT GET_LOCK({MARIADB_NAME}, 0)", f"SELECT RELEASE_LOCK({MARIADB_NAME})")
    )
    names = {"key": PG_KEY} if advisory else {}

    def taken() -> bool:
        if connection.execute(sa.text(take), names).scalar():
            return True
        connection.rollback()  # hold no snapshot or transaction while waiting
        return False

    wait_until(taken, lambda: holder(connection), options)
    connection.commit()  # the lock is the session's; Alembic begins its own transaction
    try:
        yield
    finally:
        try:
            connection.execute(sa.text(release), names)
            connection.commit()
        except sa.exc.DBAPIError:  # a broken connection: its session is gone, and the lock with it
            pass


@contextmanager
def sqlite_lock_file(connection: sa.Connection, options: Options) -> Iterator[None]:
    """SQLite: an exclusive ``flock`` on ``<database>.migration-lock`` beside the file. ``BEGIN EXCLUSIVE`` alone
    makes a second migrator give up after ``-x busy_timeout`` (10 s), as it must for the application's writes;
    a migrator waits for another migrator as long as ``migration_lock_wait``. Not the database file itself:
    closing a second descriptor of it would drop SQLite's own POSIX locks."""
    path = sqlite_path(connection.engine.url)
    if path is None or fcntl is None:  # in memory, or Windows: BEGIN EXCLUSIVE still serialises
        yield
        return
    path = path.resolve()  # a symlink and its target share one lock (two hard links to one file do not)
    lock_path = path.with_name(path.name + ".migration-lock")
    try:
        handle = open(lock_path, "a")  # noqa: SIM115 (held for the whole run)
    except OSError as error:  # a folder the migration cannot write to fails at BEGIN EXCLUSIVE, in its own sentence
        log.info("no migration lock file (%s): another migrator is waited for only up to -x busy_timeout", error)
        yield
        return
    with handle:

        def taken() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        wait_until(taken, lambda: f"another migrator holds {lock_path}", options)
        yield  # closing the file releases the lock


def wait_until(taken: Callable[[], bool], who: Callable[[], str], options: Options) -> None:
    """Poll ``taken`` until it is true, saying who holds the lock every 10 s; one sentence after
    ``migration_lock_wait``. Ctrl-C cuts the wait short (the run's interrupt handling says what it left)."""
    started, last_said = time.monotonic(), None
    limit = interval_seconds(options.migration_lock_wait)
    while not taken():
        now = time.monotonic()
        if last_said is None or now - last_said >= SAY_EVERY_S:
            log.info("waiting for the migration lock: %s (%.0fs so far)", who(), now - started)
            last_said = now
        if now - started > limit:
            raise refusal("another_migration_holds_the_lock", wait=options.migration_lock_wait, who=who())
        time.sleep(POLL_S)
    if last_said is not None:
        log.info("took the migration lock after %.1fs: reading the revision afresh", time.monotonic() - started)


def holder(connection: sa.Connection) -> str:
    """Who holds the lock, as an operator would look it up."""
    if traits_of(connection.dialect).migration_lock == "advisory":
        pids = connection.execute(sa.text(PG_HOLDER), {"low": PG_KEY & 0xFFFFFFFF, "high": PG_KEY >> 32}).scalars()
        found = ", ".join(str(pid) for pid in pids)
        return f"held by backend pid {found} (pg_stat_activity)" if found else "held by another session"
    found = connection.execute(sa.text(f"SELECT IS_USED_LOCK({MARIADB_NAME})")).scalar()
    return f"held by connection {found} (SHOW PROCESSLIST)" if found else "held by another session"


def say_if_nothing_was_done(applied: list[dict], heads: tuple[str, ...]) -> bool:
    """A run that applied no revision says so, with the revision found (another migrator may have done it);
    True when it did."""
    if applied:
        return False
    log.info("Nothing to do: the database is already at %s", ", ".join(heads) or "no revision")
    return True
