"""``python -m autopack``: ``verify`` the BUILD-144 criteria, ``finish-online`` an online upgrade, or ``backup`` a
SQLite database, on DATABASE_URL."""

import argparse
import logging
import sys
from pathlib import Path

from alembic.util import CommandError

from autopack.database import database_url
from autopack.migrations.connection import DEFAULT_BUSY_TIMEOUT_S, DEFAULT_LOCK_TIMEOUT, parse_url
from autopack.migrations.errors import one_sentence_errors


def run_verify() -> int:
    from autopack.read_only import read_only_connection
    from autopack.verify import render, verify

    url = parse_url(database_url())
    # reads only: no write lock on SQLite, a READ ONLY transaction on a server; verify takes no timeout option
    with (
        one_sentence_errors(
            url, busy_timeout_s=DEFAULT_BUSY_TIMEOUT_S, lock_timeout=DEFAULT_LOCK_TIMEOUT, writes=False, wait_hint=None
        ),
        read_only_connection(url, lock_wait_s=DEFAULT_BUSY_TIMEOUT_S) as connection,
    ):
        result = verify(connection)
    print(render(result, url))
    return 0 if result.ok else 1


def run_finish_online() -> int:
    from autopack.finish_online import finish_online
    from autopack.migrations.connection import (
        connected,
        migration_engine,
        refuse_transaction_pooler,
        require_sqlite_file,
        settings_for_the_session,
        transaction_settings,
    )
    from autopack.migrations.interrupts import interrupts_in_one_sentence

    url = parse_url(database_url())
    require_sqlite_file(url, may_create=False)  # a mistyped path is one sentence, never a new empty file
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # lock retries and backfill progress, as it goes
    timeouts = {"busy_timeout_s": DEFAULT_BUSY_TIMEOUT_S, "lock_timeout": DEFAULT_LOCK_TIMEOUT}
    engine = migration_engine(url, **timeouts)
    stopped = (
        "the batches done so far are committed and the fill trigger may be gone already: re-run "
        "'python -m autopack finish-online' to finish"
    )
    try:
        with (
            interrupts_in_one_sentence(stopped),
            one_sentence_errors(url, **timeouts, wait_hint=None),
            connected(engine, url) as connection,
        ):
            if url.get_backend_name() != "sqlite":  # SQLite: no trigger, and its engine opens each transaction
                refuse_transaction_pooler(connection, url, "finish-online")  # many transactions, one session
                settings = transaction_settings(DEFAULT_LOCK_TIMEOUT, None)
                with settings_for_the_session(connection, settings):
                    finished = finish_online(connection.execution_options(isolation_level="AUTOCOMMIT"))
            else:
                finished = finish_online(connection)
    finally:
        engine.dispose()
    print(finished.sentence())
    return 0


def run_backup(destination: Path | None) -> int:
    from autopack.backup import backup_sqlite

    url = parse_url(database_url())
    backup = backup_sqlite(url, destination, busy_timeout_s=DEFAULT_BUSY_TIMEOUT_S)
    print(
        f"Backed up {backup.source} to {backup.path} ({backup.rows} rows of llm_usage_events, {backup.pages} pages, "
        "a consistent snapshot including any WAL content)."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autopack")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("verify", help="check the BUILD-144 validation criteria on DATABASE_URL")
    commands.add_parser(
        "finish-online",
        help="after an online upgrade, once no pre-BUILD-144 code writes: drop the fill trigger, fill what is left",
    )
    backup = commands.add_parser("backup", help="copy the SQLite database on DATABASE_URL with SQLite's backup API")
    backup.add_argument("--to", type=Path, help="destination file (default: the database's path + .backup)")
    args = parser.parse_args(argv)
    try:
        if args.command == "finish-online":
            return run_finish_online()
        return run_verify() if args.command == "verify" else run_backup(args.to)
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
