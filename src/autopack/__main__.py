"""``autopack`` (or ``python -m autopack``): ``verify`` the BUILD-144 criteria, ``finish-online`` an online upgrade,
``repair-totals`` that old code left stale, ``restore-set-aside``, or ``backup`` a SQLite database, on DATABASE_URL;
and Alembic's own commands (``autopack upgrade head``, ``autopack -x online=true upgrade head``, ``autopack
downgrade -1``, ``current``, ``history``, ``stamp``, ...) on this tree, from a checkout or an installed wheel."""

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic.util import CommandError
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from autopack.database import database_url
from autopack.migrations.build144 import where_the_table_is
from autopack.migrations.build144.usage_table import TABLE
from autopack.migrations.runtime.connection import DEFAULT_BUSY_TIMEOUT_S, DEFAULT_LOCK_TIMEOUT, parse_url
from autopack.migrations.runtime.errors import one_sentence_errors

# Exit statuses, documented in docs/application.md: argparse's own 2 is arguments the command cannot use
PASSED, CHECK_FAILED, BAD_ARGUMENTS, CANNOT_CHECK = 0, 1, 2, 3


@contextmanager
def reading(url: URL) -> Iterator[Connection]:
    """One read-only transaction on ``url``, as ``verify`` and ``plan`` read: no write lock on SQLite, READ ONLY on a
    server; they take no timeout option, and a failure is one sentence."""
    from autopack.read_only import read_only_connection

    with (
        one_sentence_errors(
            url,
            busy_timeout_s=DEFAULT_BUSY_TIMEOUT_S,
            lock_timeout=DEFAULT_LOCK_TIMEOUT,
            table=TABLE,
            writes=False,
            wait_hint=None,
        ),
        read_only_connection(url, lock_wait_s=DEFAULT_BUSY_TIMEOUT_S) as connection,
    ):
        yield connection


def run_verify(as_json: bool = False) -> int:
    from autopack.verify import as_json as verification_json
    from autopack.verify import render, verify

    url = parse_url(database_url())
    with reading(url) as connection:
        result = verify(connection)
    print(json.dumps(verification_json(result, url), indent=2) if as_json else render(result, url))
    return PASSED if result.ok else CHECK_FAILED


def run_plan(direction: str, online: bool, as_json: bool) -> int:
    from autopack.migrations.runtime.connection import sqlite_path
    from autopack.upgrade_plan import make_plan, no_database_yet

    url = parse_url(database_url())
    path = sqlite_path(url)
    if url.get_backend_name() == "sqlite" and path is not None and not path.exists():
        plan = no_database_yet(url, direction, online)  # what upgrade head would create, read from nothing
    else:
        with reading(url) as connection:
            plan = make_plan(connection, url, direction, online=online)
    print(json.dumps(plan.as_json(), indent=2) if as_json else plan.render())
    return PASSED if plan.proceeds else CHECK_FAILED


def run_finish_online() -> int:
    from autopack.finish_online import finish_online

    stopped = (
        "the batches done so far are committed and the fill trigger may be gone already: re-run "
        "'python -m autopack finish-online' to finish"
    )
    finished = in_committed_batches("finish-online", finish_online, stopped)
    print(finished.sentence())
    return 1 if finished.stale else 0


def run_repair_totals() -> int:
    from autopack.repair_totals import COMMAND, repair_totals

    stopped = f"the batches done so far are committed: re-run '{COMMAND}' to finish"
    repaired = in_committed_batches("repair-totals", repair_totals, stopped)
    print(repaired.sentence())
    return 0 if repaired.left == 0 else 1


def run_restore_set_aside() -> int:
    from autopack.restore_set_aside import COMMAND, restore_set_aside

    stopped = f"the restore is one statement: re-run '{COMMAND}'"
    restored = in_committed_batches("restore-set-aside", restore_set_aside, stopped)
    print(restored.sentence())
    return 0


def run_usage_aggregate(action: str) -> int:
    from autopack import usage_hourly

    def work(connection: Connection) -> str:
        if action == "drop":
            dropped = usage_hourly.drop(connection)
            return (
                f"Dropped {usage_hourly.TABLE} and its triggers; the dashboard reads the events."
                if dropped
                else f"There was no {usage_hourly.TABLE}: nothing to drop."
            )
        buckets = (usage_hourly.create if action == "create" else usage_hourly.rebuild)(connection)
        made = "Made and filled" if action == "create" else "Refilled"
        return f"{made} {usage_hourly.TABLE} from {TABLE}: {buckets} hourly buckets; the dashboard reads it."

    stopped = "the aggregate's change is one transaction (MariaDB: the table and triggers stay, refill them): re-run it"
    try:
        print(in_committed_batches(f"usage-aggregate {action}", work, stopped))
    except usage_hourly.AggregateError as refused:  # the run would be wrong here: nothing was changed
        print(f"error: {refused}", file=sys.stderr)
        return CHECK_FAILED
    return PASSED


def in_committed_batches(command: str, work, stopped: str):
    """``work(connection)`` on DATABASE_URL with the migration's timeouts, committing as it goes: on a server in
    autocommit, with the lock timeout for the session; a transaction pooler refused (many transactions)."""
    from autopack.migrations.runtime.connection import (
        connected,
        migration_engine,
        refuse_transaction_pooler,
        require_sqlite_file,
        settings_for_the_session,
        transaction_settings,
    )
    from autopack.migrations.runtime.interrupts import interrupts_in_one_sentence

    url = parse_url(database_url())
    require_sqlite_file(url, may_create=False)  # a mistyped path is one sentence, never a new empty file
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # lock retries and backfill progress, as it goes
    timeouts = {"busy_timeout_s": DEFAULT_BUSY_TIMEOUT_S, "lock_timeout": DEFAULT_LOCK_TIMEOUT}
    engine = migration_engine(url, **timeouts)
    try:
        with (
            interrupts_in_one_sentence(stopped),
            one_sentence_errors(url, **timeouts, table=TABLE, wait_hint=None),
            connected(engine, url, where_the_table_is.CHECKS) as connection,
        ):
            if url.get_backend_name() == "sqlite":  # SQLite: no trigger, and its engine opens each transaction
                return work(connection)
            refuse_transaction_pooler(connection, url, command)  # many transactions, one session
            with settings_for_the_session(connection, transaction_settings(DEFAULT_LOCK_TIMEOUT, None)):
                return work(connection.execution_options(isolation_level="AUTOCOMMIT"))
    finally:
        engine.dispose()


def run_backup(destination: Path | None) -> int:
    from autopack.backup import backup_sqlite

    url = parse_url(database_url())
    backup = backup_sqlite(url, destination, busy_timeout_s=DEFAULT_BUSY_TIMEOUT_S)
    print(
        f"Backed up {backup.source} to {backup.path} ({backup.rows} rows of llm_usage_events, {backup.pages} pages, "
        "a consistent snapshot including any WAL content)."
    )
    return 0


# Alembic's commands, run on this tree's config (``tree_config``) with Alembic's own arguments and options
ALEMBIC_COMMANDS = ("upgrade", "downgrade", "current", "history", "heads", "stamp", "show", "check", "branches")
ALEMBIC_OPTIONS_WITH_VALUES = ("-x", "-n", "--name", "-c", "--config")


def alembic_command(argv: list[str]) -> str | None:
    """The Alembic command ``argv`` names (after Alembic's own options, such as ``-x online=true``), or None."""
    words = iter(argv)
    for word in words:
        if word in ALEMBIC_OPTIONS_WITH_VALUES:
            next(words, None)
        elif not word.startswith("-"):
            return word if word in ALEMBIC_COMMANDS else None
    return None


def run_alembic(argv: list[str], prog: str) -> int:
    """Alembic's command line on this tree: the checkout's alembic.ini, or the tree an installed wheel carries."""
    from alembic.config import CommandLine

    from autopack.migrations.tree_config import configure_logging, the_tree_config

    cli = CommandLine(prog=prog)
    options = cli.parser.parse_args(argv)
    config = the_tree_config(f"{prog} {options.cmd[0].__name__}", cmd_opts=options)
    configure_logging(config)
    cli.run_cmd(config, options)  # a CommandError: Alembic's one FAILED line, and exit status 255 (its -1)
    return 0


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("autopack-usage-migrations")
    except PackageNotFoundError:
        return "unknown (not installed)"


def json_version(command: str) -> int:
    """The version of the JSON ``command`` prints: a failure keeps the shape's own number."""
    if command == "plan":
        from autopack.upgrade_plan import JSON_VERSION
    else:
        from autopack.verify import JSON_VERSION
    return JSON_VERSION


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prog = "autopack" if Path(sys.argv[0]).name == "autopack" else "python -m autopack"
    if alembic_command(argv):
        try:
            return run_alembic(argv, prog)
        except CommandError as error:  # before Alembic runs: no tree to run it on
            print(f"error: {error}", file=sys.stderr)
            return CANNOT_CHECK
    parser = argparse.ArgumentParser(
        prog=prog,
        epilog=f"and Alembic's commands on this tree: {', '.join(ALEMBIC_COMMANDS)} (e.g. '{prog} upgrade head', "
        f"'{prog} -x online=true upgrade head', '{prog} downgrade -1'); see docs/application.md for exit statuses",
    )
    parser.add_argument("--version", action="version", version=f"autopack {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check the BUILD-144 validation criteria on DATABASE_URL")
    verify.add_argument("--json", action="store_true", help="print the result as JSON (docs/runbook.md: its keys)")
    commands.add_parser(
        "finish-online",
        help="after an online upgrade, once no pre-BUILD-144 code writes: drop the fill trigger, fill what is left",
    )
    commands.add_parser(
        "repair-totals",
        help="set each total_tokens that is not the sum of its splits (stale: old code updated the splits) to it",
    )
    commands.add_parser(
        "restore-set-aside",
        help="at 0002: put back rows a downgrade that did not finish left in the set-aside table",
    )
    plan = commands.add_parser(
        "plan", help="what 'upgrade head' (or --downgrade: 'downgrade -1') would do here; reads only, locks nothing"
    )
    plan.add_argument("--downgrade", action="store_true", help="plan 'downgrade -1' instead of 'upgrade head'")
    plan.add_argument("--online", action="store_true", help="plan the run with -x online=true")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (docs/runbook.md: its keys)")
    aggregate = commands.add_parser(
        "usage-aggregate",
        help="the hourly aggregate the dashboard reads: create (and fill) it, rebuild it from the events, or drop it",
    )
    aggregate.add_argument("action", choices=("create", "rebuild", "drop"))
    backup = commands.add_parser("backup", help="copy the SQLite database on DATABASE_URL with SQLite's backup API")
    backup.add_argument("--to", type=Path, help="destination file (default: the database's path + .backup)")
    args = parser.parse_args(argv)
    try:
        if args.command == "plan":
            return run_plan("downgrade" if args.downgrade else "upgrade", args.online, args.json)
        if args.command == "finish-online":
            return run_finish_online()
        if args.command == "repair-totals":
            return run_repair_totals()
        if args.command == "restore-set-aside":
            return run_restore_set_aside()
        if args.command == "usage-aggregate":
            return run_usage_aggregate(args.action)
        return run_verify(args.json) if args.command == "verify" else run_backup(args.to)
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        if getattr(args, "json", False):  # a reader of the JSON gets the failure in it too, in its own shape
            print(json.dumps({"version": json_version(args.command), "ok": False, "error": str(error)}, indent=2))
        return CANNOT_CHECK


if __name__ == "__main__":
    sys.exit(main())
