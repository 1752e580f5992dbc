"""Every sentence an operator can read when the migrations tree refuses or fails, keyed by name.

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
LEAVES = {
    "nothing changed": NOTHING_CHANGED,
    "nothing written": NOTHING_WRITTEN,
    "no script written": "no script was written",
    "MariaDB DDL stays": MARIADB_DDL_STAYS,
    "upgrade rolled back": "the migration's transaction was rolled back, nothing was changed; re-run the same command",
    "online upgrade resumes": (
        "the revision stays 0001 and re-running the same command resumes (once the schema change committed, "
        "the fill trigger stays meanwhile, so rows old code writes get their totals)"
    ),
    "online downgrade finishes": (
        "the revision stays 0002, rows set aside so far stay set aside, and re-running the same command finishes"
    ),
    "online downgrade stopped": (
        "the revision stays 0002, rows set aside so far stay in the set-aside table, and re-running the same command "
        "finishes"
    ),
    "MariaDB schema change stays": (
        "the schema change stays (MariaDB commits DDL at once) and re-running the same command finishes"
    ),
    "MariaDB stop": (
        "what MariaDB already committed (its DDL commits at once) stays and the revision is unchanged; "
        f"{MARIADB_RUNS_ON}: re-running the same command finishes"
    ),
    "online stop": (
        "the steps already committed stay and the revision is unchanged: re-running the same command finishes"
    ),
    "doctor index stays": (
        "the revision stays 0001, llm_usage_events keeps its rows and totals, and re-running the same command finishes"
    ),
}

WRITER_STILL_RUNNING = (
    "a writer still running (the BUILD-144 application: uvicorn autopack.main:app, any autonomous executor) wrote "
    "rows the old schema cannot hold after they were set aside: stop the application, then re-run"
)
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
MESSAGES: dict[str, Message] = {
    # -- the preflight checks (preflight_checks.CHECKS), one each --------------------------------------------------
    "id_not_an_integer": M(
        "{table}.id is {type}, not an integer",
        "BUILD-144's backfill and set-aside walk the table in ranges of integer ids (Autopack's id is INTEGER), so "
        "this tree cannot migrate it; migrate it by hand from the runbook's SQL, or give the table an integer id first",
    ),
    "overflowing_totals": M(
        "Rows of {table} whose prompt_tokens + completion_tokens exceed what total_tokens INTEGER can hold "
        "({limit}), ids {ids}",
        "correct their splits (they are likely corrupt) and re-run",
    ),
    "forbidding_checks": M(
        "{table} has CHECK constraint {checks}, which still forbids total-only rows (NULL splits) after the "
        "splits become nullable",
        "drop or relax it (PostgreSQL/MariaDB: ALTER TABLE {table} DROP CONSTRAINT <name>) and re-run",
    ),
    "refusing_publication": M(
        "{table} is in publication {publication}, which publishes UPDATEs, and has {why}",
        "PostgreSQL would refuse the backfill's UPDATE; run ALTER TABLE {table} REPLICA IDENTITY FULL (or DEFAULT), "
        "or take the table out of the publication, and re-run",
    ),
    "publisher_before_subscribers": M(
        "{table} is published by {publications} and this upgrade adds total_tokens, which each subscriber's table "
        "must have before this publisher sends it (else the subscription stops applying: 'missing replicated "
        "column')",
        "upgrade every subscriber's database first, then re-run here with -x subscribers_upgraded=true",
    ),
    "before_triggers_after_the_fill": M(
        "{table} has BEFORE trigger {triggers}, which PostgreSQL fires after the online mode's fill trigger {fill} "
        "(row triggers fire in name order), so a split it changes would not be in the total",
        "rename it to sort before {fill}, or run without -x online=true",
    ),
    "index_not_ours": M(
        "An index named like {index} already exists ({what}), which is not the plain index on {table} ({column}) "
        "that the pre-BUILD-144 schema declares and BUILD-144's upgrade adopts",
        "rename or drop it, then re-run the same command",
    ),
    "no_total_tokens": M(
        "{table} has no total_tokens although the database is stamped 0002 (stamped without being migrated?)",
        "there is nothing to downgrade; run 'python -m autopack verify' for the commands that fix it",
    ),
    "readers_of_total_tokens": M(
        "The downgrade drops total_tokens, which {readers} still read{s}",
        "the pre-BUILD-144 code's writes would then fail on {them}; drop or rewrite {them} first and re-run",
    ),
    "splits_not_null": M(
        "{table}'s {splits} is still NOT NULL although the database is stamped 0002 (stamped without being migrated?)",
        "run 'python -m autopack verify' for the commands that fix it",
    ),
    "subscriber_before_publisher": M(
        "{table} receives rows from subscription {subscriptions} and this downgrade drops total_tokens, which its "
        "publisher sends until it is downgraded itself (else the subscription stops applying: 'missing replicated "
        "column')",
        "downgrade the publisher's database first, then re-run here with -x publisher_downgraded=true",
    ),
    "set_aside_rows_published": M(
        "Publication {publications} sends every new table, so the rows this downgrade sets aside in {holdover} would "
        "reach its subscribers, which stop applying on a table they lack",
        "on each subscriber's database first run CREATE TABLE {holdover} AS SELECT id AS event_id, provider, model, "
        "role, created_at, prompt_tokens, completion_tokens, total_tokens FROM {table} WITH NO DATA, then re-run "
        "here with -x holdover_on_subscribers=true",
    ),
    "split_sums_past_integer": M(
        "Rows of {table} whose prompt_tokens + completion_tokens exceed what an INTEGER total can hold (ids "
        "{ids}) would stop the next upgrade",
        "the round trip would not be lossless, so the downgrade refuses; correct those splits first",
    ),
    "totals_a_widened_column_holds": M(
        "total_tokens is {type} here and rows hold totals the INTEGER column the next upgrade re-creates cannot "
        "(ids {ids})",
        "the round trip would not be lossless, so the downgrade refuses",
    ),
    "null_splits_in_history": M(
        "{table} is system-versioned and {versions} row versions (history included) hold NULL splits, which the "
        "pre-BUILD-144 NOT NULL columns cannot take",
        "the downgrade refuses; keep this revision, or remove system versioning first",
    ),
    "changed_again": M(
        "{holdover} still holds rows an earlier upgrade kept (ids {ids}) whose events have changed again",
        "setting them aside now would mix old and new values; compare each with llm_usage_events, delete the "
        "held row once resolved, and re-run",
    ),
    "rewritten_columns": M(
        "{table}.{columns} has ON UPDATE CURRENT_TIMESTAMP, so every UPDATE of the migration would rewrite it "
        "(events would move to today)",
        "ALTER TABLE {table} MODIFY it without ON UPDATE (keep its type and NOT NULL), then re-run",
    ),
    # -- the -x options and the version table (options.py) -----------------------------------------------------
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
    # -- the connection (connection.py) -------------------------------------------------------------------------
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
    "view_in_the_tables_name": M(
        "On {where}, {table} is a view and the usage table is {named}, named in other letter case, which {engine} "
        "treats as a separate table",
        "drop the view {table}, rename the table ({rename}), recreate the view under another name if something "
        "reads it, and re-run",
    ),
    "both_spellings": M(
        "{where} holds both {table} ({ours_rows} rows) and {named}, which {engine} treats as separate tables (an "
        "earlier run or the application may have created {table} beside an imported one)",
        "Autopack uses only {table}; move the rows to keep into one table, drop the other, name the one left {table} "
        "({rename}) and re-run",
    ),
    "table_in_other_case": M(
        "The usage table on {where} is named {named}, not {table}, and {engine} treats the two names as separate "
        "tables, so the migration would create a new, empty {table} beside it",
        "rename it ({rename}) and re-run",
    ),
    "url_options_dropped": M(
        "DATABASE_URL's options set {name}={value}, but the session has {name}={got}",
        "something between (a connection pooler such as PgBouncer with ignore_startup_parameters) dropped them; set "
        "it on the role instead (ALTER ROLE ... SET {name} = ...), which reaches every connection, or connect to "
        "PostgreSQL itself",
    ),
    "no_schema_in_search_path": M(
        "No schema of this connection's search_path ({search_path}) exists on {where}, so there is nowhere to look "
        "for or create {table}",
        "fix the search_path ({fix})",
    ),
    "table_not_in_first_schema": M(
        "{table} is in schema {found}, but this connection's first schema (its search_path, {search_path}) is "
        "{first}, where the migration would look for it and create a new, empty one",
        "put {found} first ({fix})",
    ),
    "table_outside_search_path": M(
        "{table} is in schema {found}, outside this connection's search_path ({search_path}), and the migration "
        "would create a new, empty one in {first}",
        "put that schema in the search_path ({fix})",
    ),
    # -- failures an operator can act on, from the database (errors.explain) ---------------------------------
    "sqlite_locked": M(
        "The database {where} is locked by another process (waited {waited}s{wait_hint})",
        LOCK_HOLDERS,
    ),
    "sqlite_not_a_database": M("{where} is not a SQLite database or is corrupt ({text})"),
    "disk_full": M(
        "The disk holding {where} is full",
        "the rebuild needs free space about the size of llm_usage_events; free some and re-run",
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
        "llm_usage_events on {where} has row-level security that would hide rows from this role ({text})",
        "every row must be seen, so run as a role with BYPASSRLS (ALTER ROLE … BYPASSRLS) or a superuser",
    ),
    "privilege_missing": M(
        "The role connected to {where} lacks a privilege the migration needs ({text})",
        "connect as the owner of llm_usage_events (ALTER, CREATE, UPDATE)",
    ),
    "sqlite_cannot_open": M(
        "Cannot open {where} ({text})",
        "check DATABASE_URL and the permissions of the file and of its directory (SQLite writes a journal beside the "
        "file)",
    ),
    "mariadb_online_alter_refused": M(
        "{where} cannot change llm_usage_events with ALGORITHM=INPLACE, LOCK=NONE ({text})",
        "run without -x online=true, in a maintenance window",
    ),
    "mariadb_lock_wait": M(
        "Could not lock llm_usage_events on {where} within lock_timeout={lock_timeout}",
        "another session holds it (SHOW PROCESSLIST); retry when it ends, or pass -x lock_timeout=30s",
    ),
    "statement_timeout": M(
        "A statement_timeout cancelled the command on {where} ({text})",
        "give it more time with {more} the role's or the database's setting",
    ),
    "postgres_lock_timeout": M(
        "Could not lock llm_usage_events on {where} within lock_timeout={lock_timeout}",
        "another session holds it (see pg_stat_activity); retry when it ends, or pass -x lock_timeout=30s",
    ),
    "server_unreachable": M("Cannot connect to {where}", "{text}", leaves=None),
    # -- failures after the change started, and what they leave ------------------------------------------------
    "failed_midway": M(
        "The BUILD-144 {step} failed while changing {table} ({error})",
        "fix the cause the database names, then re-run",
        leaves="{after}",
    ),
    "failed_midway_statement_timeout": M(
        "The BUILD-144 {step} failed while changing {table} ({error})",
        "a statement_timeout (the database's, the role's or -x statement_timeout) cancelled the backfill: give the "
        "migration more time with -x statement_timeout=2h (the default mode rewrites the table in one statement), "
        "or pass a smaller -x batch_rows where it runs batches, then re-run",
        leaves="{after}",
    ),
    "failed_midway_in_hooks": M(
        "The BUILD-144 {step} failed while changing {table} ({error})",
        "{hooks} on {table} run on each UPDATE and likely caused it: fix or disable them for the migration, then "
        "re-run",
        leaves="{after}",
    ),
    "still_to_fill": M(
        "After the backfill, rows of {table} still have total_tokens 0 while a split is set (ids {ids})",
        "a trigger or rule on the table, or another writer, undid the fill; see docs/troubleshooting.md",
        leaves="{after}",
    ),
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
        "it stopped; the revision stays 0001 and re-running the same command resumes once they catch up (or raise "
        "-x replica_wait_max, or -x max_replica_lag=off for a replica delayed on purpose)",
        leaves=None,
    ),
    "stopped": M("Stopped on {signal}", "{what_is_left}", leaves=None),
    "stopped_while_changing": M("Stopped on {signal} while changing {table}{running}", "{after}", leaves=None),
    "stopped_between_batches": M(
        "Stopped on {signal} between batches, every batch done so far committed",
        "the revision stays 0001 and re-running the same command resumes where it stopped",
        leaves=None,
    ),
    "online_downgrade_stopped": M(
        "The BUILD-144 online downgrade stopped ({error})", LEAVES["online downgrade stopped"], leaves=None
    ),
    "another_migration_holds_the_lock": M(
        "Another migration of this database held the migration lock for {wait} ({who})",
        "let it finish, or raise -x migration_lock_wait",
    ),
    "mariadb_downgrade_writer_still_running": M(
        "The BUILD-144 downgrade failed while changing {table} ({error})",
        WRITER_STILL_RUNNING,
        leaves="the revision stays 0002 and the {restored} rows set aside were put back, so the table holds what it "
        "held before",
    ),
    "null_ids_cannot_be_set_aside": M(
        "Rows of {table} with a NULL id cannot be set aside (the set-aside table finds each event by its id), and "
        "the pre-BUILD-144 schema cannot hold them",
        "give them ids (python -m autopack verify names the id's fix), then re-run",
    ),
    "rows_not_set_aside": M(
        "Rows of {table} the pre-BUILD-144 schema cannot hold were not set aside (ids {ids})",
        "another writer (the application still running: stop it, then re-run) or a trigger or rule on the table "
        "interfered",
    ),
    "sqlite_rebuild_would_lose": M(
        "{table} cannot be changed in place ({reason}) and rebuilding it would lose {losses} from its definition",
        "write prompt_tokens and completion_tokens as plain 'INTEGER NOT NULL' columns in its CREATE TABLE (or make "
        "the change by hand), then re-run",
    ),
    "doctor_index_still_invalid": M(
        "{index} was built but PostgreSQL still reports it INVALID", LEAVES["doctor index stays"], leaves=None
    ),
    "sub_partitioned_partition": M(
        "partition {partition} of {table} is itself partitioned, which -x online=true does not index concurrently",
        "run 'alembic upgrade head' without it (CREATE INDEX in one transaction); the partitions indexed so far keep "
        "their index, which that run adopts",
        leaves=None,
    ),
    "doctor_index_concurrently_failed": M(
        "Building {index} concurrently failed ({reason}; it waits for every older transaction, see "
        "pg_stat_activity, at most -x lock_timeout)",
        "the backfill is committed, " + LEAVES["doctor index stays"] + " (dropping the INVALID index it may have left)",
        leaves=None,
    ),
    "retired_revision": M(
        "Revision {bare} was retired ({why})",
        "name {instead} instead (head is 0002, BUILD-144: e.g. 'alembic upgrade 0001:0002 --sql', "
        "'alembic downgrade -1')",
    ),
    "cannot_restamp_retired": M(
        "The database is stamped {stamped}, which this tree restamps before reading it ({why}), and this "
        "connection cannot write alembic_version (a read-only role or a standby)",
        "run 'alembic upgrade head' once as the table's owner on the primary",
    ),
    # -- the baseline (0001) ----------------------------------------------------------------------------------
    "unknown_schema": M("Existing {table} matches no known Autopack schema", "{reason}", joined_by=": "),
    "baseline_would_drop_rows": M(
        "{table} holds {rows} rows and the baseline's downgrade would delete them all, so it refuses",
        "if an upgrade to 0002 failed, fix its cause and re-run 'alembic upgrade head' (see "
        "docs/troubleshooting.md); to remove the table on purpose, back it up and drop it yourself",
        leaves="{table} was not dropped",
    ),
    # -- the runtime commands: verify, backup, repair-totals, restore-set-aside, finish-online, init_db() ----------
    "verify_table_in_other_case": M(
        "The usage table is named {named} in this file: SQLite treats it as llm_usage_events, but verify reads the "
        "catalog by name",
        "run 'alembic upgrade head', which renames it to llm_usage_events (the application sees no difference), then "
        "verify again",
        leaves=None,
        joined_by="; ",
    ),
    "verify_no_table": M("There is no llm_usage_events table in this database", "check DATABASE_URL", leaves=None),
    "verify_not_autopacks_table": M(
        "llm_usage_events has no {missing}", "it is not a table Autopack made; check DATABASE_URL", leaves=None
    ),
    "sqlite_path_is_a_directory": M("{path} is a directory, not a SQLite database", "check DATABASE_URL", leaves=None),
    "hot_journal_read_only": M(
        "{path} has a hot journal, {journal}, left by a writer that stopped in the middle of a transaction, so the "
        "file may hold half of that transaction until a connection that can write rolls the journal back, and this "
        "one could not ({error})",
        "run this command, or any sqlite3 client reading the file, as a user who may write {path} and its directory "
        "(keep the -journal file: it holds the committed pages)",
    ),
    "read_lock_wait": M(
        "Could not read llm_usage_events on {where} within {waited}s",
        "another session holds a lock on it, such as a migration in progress (see {look}); re-run when it ends",
        leaves=None,
    ),
    "backup_no_table": M("There is no {table} table in {source}", "check DATABASE_URL", leaves=NOTHING_WRITTEN),
    "backup_postgresql": M(
        "python -m autopack backup copies SQLite databases; back up PostgreSQL with pg_dump --format=custom "
        '--file=autopack.dump "$DATABASE_URL" (pg_dump takes a postgresql:// URL, without +psycopg)',
        leaves=None,
    ),
    "backup_mariadb": M(
        "python -m autopack backup copies SQLite databases; back up MariaDB/MySQL with mariadb-dump "
        "--single-transaction -h {host} -P {port} -u {user} -p {database} > autopack.sql (mysqldump on MySQL)",
        leaves=None,
    ),
    "backup_not_a_sqlite_file": M(
        "{where} is not a SQLite file (in memory or another engine)",
        "there is nothing to copy; check DATABASE_URL",
        leaves=None,
    ),
    "backup_to_a_directory": M(
        "{destination} is a directory", "name the backup file itself, e.g. --to {suggested}", leaves=NOTHING_WRITTEN
    ),
    "backup_exists": M(
        "{destination} already exists", "move it away or name another with --to", leaves=NOTHING_WRITTEN
    ),
    "backup_no_directory": M(
        "Cannot write {destination}",
        "directory {directory} does not exist; create it or name another place with --to",
        leaves=NOTHING_WRITTEN,
    ),
    "backup_cannot_create": M(
        "Cannot write {destination} ({reason})", "name a writable place with --to", leaves=NOTHING_WRITTEN
    ),
    "backup_copy_failed": M(
        "Copying {source} to {destination} failed ({error})",
        "free space there or name another place with --to",
        leaves=NOTHING_WRITTEN,
    ),
    "backup_incomplete": M(
        "The backup {backup} holds {held} where {source} held {rows}, so it was removed",
        "re-run python -m autopack backup",
        leaves=None,
    ),
    "no_total_tokens_yet": M("{table} has no total_tokens column", "run 'alembic upgrade head' first"),
    "set_aside_rows_waiting": M(
        "{waiting} rows a downgrade set aside still read 0/0 splits",
        "run '{restore}' first (their totals are right and would be lost here), then repair-totals",
    ),
    "restore_at_0001": M(
        "{table} has no total_tokens column (the database is at 0001)",
        "'alembic upgrade head' restores the set-aside rows",
    ),
    "finish_online_before_upgrade": M(
        "{table} has no total_tokens column",
        "run 'alembic upgrade head' first (finish-online is the step after an online upgrade)",
    ),
    "finish_online_not_at_head": M(
        "The database is at revision {stamped}, not 0002",
        "an upgrade did not finish; re-run 'alembic -x online=true upgrade head' (or without -x online=true) first",
    ),
    "init_db_without_the_tree": M(
        "init_db() needs the migrations tree beside the package", "{ini} is missing", leaves=None
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
