"""Every sentence an operator can read when the migrations tree refuses or fails, keyed by name: the catalogue.

This module holds the catalogue's machinery and the runtime's own sentences; ``build144.messages`` adds BUILD-144's
(importing ``autopack.migrations.build144`` registers them), so that every sentence is still one lookup.

Like strong_migrations' ``error_messages.rb``: one catalogue, each entry saying what happened and what to do,
and what the failure leaves, so that the wording lives in one place and docs/troubleshooting.md can be held
to it (tests/test_messages_documented.py: one entry there per message here). Code reads a sentence only
through ``sentence`` (or ``refusal``, the same as a ``CommandError``), never by editing a finished one: where a
failure leaves something other than "nothing was changed" (a read-only command, MariaDB's committed DDL), the
caller names that with ``leaves=``.

A sentence is ``what_happened``, then ``joined_by`` and ``what_to_do`` (when there is one), then ``"; "`` and
what the failure leaves (when it says), then a full stop. Fields are ``str.format`` names.
"""

import string
from dataclasses import dataclass

from alembic.util import CommandError

# What a failure leaves, worded once.
NOTHING_CHANGED = "nothing was changed"
NOTHING_WRITTEN = "nothing was written"
MARIADB_DDL_STAYS = "a schema change already made stays (MariaDB commits DDL at once) and re-running finishes the job"
MARIADB_RUNS_ON = "a statement MariaDB was running goes on until it ends (SHOW PROCESSLIST)"

LOCK_HOLDERS = (
    "stop the API server (uvicorn autopack.main:app), any autonomous executor and any database viewer "
    "(DB Browser, sqlite3 CLI), then re-run"
)


@dataclass(frozen=True)
class Message:
    what_happened: str
    what_to_do: str = ""
    leaves: str | None = NOTHING_CHANGED  # None: the sentence ends without saying (a read, or what_to_do says it)
    joined_by: str = ": "

    def template(self, leaves: str | None = NOTHING_CHANGED) -> str:
        """The sentence with its fields unfilled; ``leaves`` replaces "nothing was changed" where a failure
        leaves something else (None: a command that writes nothing, which has nothing to leave unchanged)."""
        text = self.what_happened + (self.joined_by + self.what_to_do if self.what_to_do else "")
        said = leaves if self.leaves == NOTHING_CHANGED else self.leaves
        return f"{text}; {said}." if said else f"{text}."

    def fields(self) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(self.template()) if name}


M = Message
MESSAGES: dict[str, Message] = {  # the runtime's own; build144.messages adds BUILD-144's
    "unknown_option": M(
        "Unknown option -x {key}",
        "this tree accepts -x {accepted} (see docs/configuration.md)",
    ),
    "option_not_valid": M("-x {key}={raw} is not valid", "expected {expected}"),
    "online_has_no_sql_script": M(
        "-x online=true has no --sql script",
        "the online mode commits as it goes and checks the table between steps, which a script cannot; apply the "
        "one-transaction script (without -x online=true), or run the online command against the database",
        leaves="no script was written",
    ),
    "pacing_without_online": M(
        "{throttling} paces the online backfill and has no effect without -x online=true (the default mode is one "
        "transaction)",
        "add -x online=true, or leave it out",
    ),
    "online_downgrade_not_here": M(
        "-x online=true downgrade is PostgreSQL's; on {dialect} run the downgrade without it (one table rebuild, "
        "writes wait for it)",
    ),
    "online_mode_not_here": M(
        "-x online=true is the PostgreSQL and MariaDB online mode and does not apply to {dialect}",
        "run without it (see docs/online-mode.md)",
    ),
    "version_table_not_a_name": M("{value_error}"),
    "url_empty": M(
        "DATABASE_URL is set but empty",
        "set it to the database's URL, or unset it to use the embedded default sqlite:///autopack.db",
        leaves=None,
    ),
    "sqlite_uri_without_file": M(
        "DATABASE_URL asks SQLite for a URI (uri=true) but its path does not start with file:, so SQLite would open a "
        "file named with the query in it",
        "write it as sqlite:///file:/path/to/autopack.db?mode=ro&uri=true, or drop uri=true",
        leaves=None,
    ),
    "url_not_usable": M(
        "DATABASE_URL is not a usable SQLAlchemy URL ({kind})",
        "expected e.g. sqlite:///autopack.db or postgresql+psycopg://user@host/db",
        leaves=None,
        joined_by="; ",
    ),
    "url_host_has_at": M(
        "DATABASE_URL's host contains '@'",
        "a password or user name holding '@' must be percent-encoded ('@' as %40, ':' as %3A, '/' as %2F), e.g. "
        "postgresql://app:p%40ss@db:5432/autopack",
    ),
    "driver_not_installed": M(
        "DATABASE_URL asks for the driver {driver}, whose module {module} is not installed",
        "write postgresql:// (psycopg 3) or mysql:// (PyMySQL), which this project installs, or pip install that "
        "driver",
    ),
    "sqlite_file_on_a_host": M(
        "DATABASE_URL names a file on host {authority}; SQLite opens only local files",
        "use file:/path/to/autopack.db",
        leaves=None,
    ),
    "no_sqlite_database": M(
        "No SQLite database at {path}",
        "check DATABASE_URL (only 'alembic upgrade' creates a new database)",
        leaves=None,
    ),
    "no_directory_for_sqlite": M(
        "Cannot create {path}: directory {directory} does not exist; check DATABASE_URL",
        leaves=None,
    ),
    "driver_option_unusable": M("DATABASE_URL has an option the {driver} driver cannot use ({error})", "fix it"),
    "session_read_only": M(
        "{where} accepts no writes (default_transaction_read_only is on for this role, database or URL, or the "
        "server is a standby)",
        "run the migration against the primary as a role that may write (ALTER ROLE ... RESET "
        "default_transaction_read_only)",
    ),
    "session_replication_role": M(
        "session_replication_role is '{role}' on {where} (a default of this role or database), under which triggers "
        "and foreign-key checks do not fire",
        "reset it for the migration's role (ALTER ROLE ... RESET session_replication_role)",
    ),
    "pooler_unknown": M(
        "Could not tell whether {where} is reached through a transaction-pooling connection pooler",
        "a second connection waited {waited}s for a server connection (a pooler whose server connections are all "
        "busy); {what} commits many transactions under one session lock and needs a connection of its own: point "
        "DATABASE_URL at PostgreSQL itself for this command, or re-run when the pooler is less busy",
    ),
    "transaction_pooler": M(
        "{where} is reached through a transaction-pooling connection pooler (PgBouncer pool_mode = transaction: each "
        "transaction may run on another server connection), which {what} cannot use",
        "it commits many transactions under one session lock; point DATABASE_URL at PostgreSQL itself or at a "
        "session-pooled port for this command (the default mode, init_db() and verify work through it)",
    ),
    "foreign_key_check_failed": M("Foreign key check failed after the migration ({rows} row(s) in {tables})"),
    "unknown_revision": M(
        "The database is at revision {head}, which this migrations tree does not know (a newer Autopack migrated "
        "it, or another Alembic tree shares the version table)",
        "run that release's migrations, or give this tree a version table of its own (export "
        "AUTOPACK_VERSION_TABLE=build144_alembic_version, then 'alembic upgrade head')",
    ),
    "startup_parameter_refused": M(
        "The server at {where} refused the startup parameter '{parameter}'",
        "a connection pooler (PgBouncer) takes no session settings at connection time; take ?{parameter}=... out of "
        "DATABASE_URL and set them on the role instead (ALTER ROLE ... SET search_path = ...), which reaches every "
        "server connection (ignore_startup_parameters would only drop them unread)",
    ),
    "statement_timeout_on_connect": M(
        "A statement_timeout cancelled the command on {where} as it connected ({reason})",
        "raise the role's or the database's setting",
    ),
    "statement_pooler": M(
        "{where} is a statement-pooling connection pooler (PgBouncer pool_mode = statement), which allows no "
        "transaction of more than one statement",
        "point DATABASE_URL at PostgreSQL itself or at a session- or transaction-pooled port",
    ),
    "sql_ascii": M(
        "The database at {where} has the SQL_ASCII encoding, whose text psycopg cannot decode",
        "add ?client_encoding=utf8 to DATABASE_URL if its text is UTF-8 (or the encoding it really holds)",
    ),
    "cannot_connect": M("Cannot connect to {where}", "{reason}; check DATABASE_URL and that the server is up"),
    "no_database_named": M(
        "{where} names no database on the server", "add it to DATABASE_URL (mysql://user@host:3306/autopack)"
    ),
    "url_options_dropped": M(
        "DATABASE_URL's options set {name}={value}, but the session has {name}={got}",
        "something between (a connection pooler such as PgBouncer with ignore_startup_parameters) dropped them; set "
        "it on the role instead (ALTER ROLE ... SET {name} = ...), which reaches every connection, or connect to "
        "PostgreSQL itself",
    ),
    "sqlite_locked": M(
        "The database {where} is locked by another process (waited {waited}s{wait_hint})",
        LOCK_HOLDERS,
    ),
    "sqlite_not_a_database": M("{where} is not a SQLite database or is corrupt ({text})"),
    "disk_full": M(
        "The disk holding {where} is full",
        "the rebuild needs free space about the size of {table}; free some and re-run",
    ),
    "sqlite_read_only": M(
        "{where} cannot be written ({text})",
        "the file, its directory (SQLite writes a journal beside it) or the mount is read-only for this user; run "
        "as the user that owns it",
    ),
    "server_read_only": M(
        "{where} accepts no writes ({text})",
        "it is a hot standby or the connection is read-only (default_transaction_read_only); run the migration "
        "against the primary",
    ),
    "row_level_security": M(
        "{table} on {where} has row-level security that would hide rows from this role ({text})",
        "every row must be seen, so run as a role with BYPASSRLS (ALTER ROLE … BYPASSRLS) or a superuser",
    ),
    "privilege_missing": M(
        "The role connected to {where} lacks a privilege the migration needs ({text})",
        "connect as the owner of {table} (ALTER, CREATE, UPDATE)",
    ),
    "sqlite_cannot_open": M(
        "Cannot open {where} ({text})",
        "check DATABASE_URL and the permissions of the file and of its directory (SQLite writes a journal beside the "
        "file)",
    ),
    "mariadb_online_alter_refused": M(
        "{where} cannot change {table} with ALGORITHM=INPLACE, LOCK=NONE ({text})",
        "run without -x online=true, in a maintenance window",
    ),
    "mariadb_lock_wait": M(
        "Could not lock {table} on {where} within lock_timeout={lock_timeout}",
        "another session holds it (SHOW PROCESSLIST); retry when it ends, or pass -x lock_timeout=30s",
    ),
    "statement_timeout": M(
        "A statement_timeout cancelled the command on {where} ({text})",
        "{more} the role's or the database's setting",
    ),
    "postgres_lock_timeout": M(
        "Could not lock {table} on {where} within lock_timeout={lock_timeout}",
        "another session holds it (see pg_stat_activity); retry when it ends, or pass -x lock_timeout=30s",
    ),
    "server_unreachable": M("Cannot connect to {where}", "{text}", leaves=None),
    "online_lock_retries_spent": M(
        "Could not lock {table} within online_lock_timeout={waited} in {attempts} attempts",
        "a long transaction holds it ({look})",
        leaves="{changed}",
    ),
    "online_batch_retries_spent": M(
        "A backfill batch met {met} in each of {attempts} attempts (waiting at most {waited} each time)",
        "an application transaction holds rows of {table} ({look})",
        leaves="the batches done so far are committed, {resumes}",
    ),
    "replicas_waited_too_long": M(
        "The backfill waited {waited} in all for streaming replicas ({reason})",
        "it stopped; {resumes} once they catch up (or raise "
        "-x replica_wait_max, or -x max_replica_lag=off for a replica delayed on purpose)",
        leaves=None,
    ),
    "stopped": M("Stopped on {signal}", "{what_is_left}", leaves=None),
    "stopped_between_batches": M(
        "Stopped on {signal} between batches, every batch done so far committed",
        "{resumes} where it stopped",
        leaves=None,
    ),
    "another_migration_holds_the_lock": M(
        "Another migration of this database held the migration lock for {wait} ({who})",
        "let it finish, or raise -x migration_lock_wait",
    ),
}
del M


def template(name: str, /, leaves: str | None = NOTHING_CHANGED) -> str:
    """The named sentence with its fields unfilled."""
    return MESSAGES[name].template(leaves)


def sentence(name: str, /, *, leaves: str | None = NOTHING_CHANGED, **fields: object) -> str:
    """The named sentence with ``fields`` filled in: the only way code words a failure for an operator."""
    return MESSAGES[name].template(leaves).format(**fields)


def refusal(name: str, /, *, leaves: str | None = NOTHING_CHANGED, **fields: object) -> CommandError:
    """The named sentence as the ``CommandError`` Alembic prints as ``FAILED: …`` (raise it)."""
    return CommandError(sentence(name, leaves=leaves, **fields))
