"""BUILD-144's sentences in the catalogue (``runtime.messages``): its preflight checks, its failures and what each
leaves, its revisions' refusals, and the commands around it (verify, backup, repair-totals, restore-set-aside,
finish-online, init_db()). Registered when ``autopack.migrations.build144`` is imported."""

from autopack.migrations.runtime.messages import (  # re-exported: BUILD-144's code reads the catalogue from here
    LOCK_HOLDERS,
    MARIADB_DDL_STAYS,
    MARIADB_RUNS_ON,
    MESSAGES,
    NOTHING_CHANGED,
    NOTHING_WRITTEN,
    Message,
    refusal,
    sentence,
    template,
)

__all__ = [
    "LEAVES",
    "LOCK_HOLDERS",
    "MARIADB_DDL_STAYS",
    "MARIADB_RUNS_ON",
    "MESSAGES",
    "NOTHING_CHANGED",
    "NOTHING_WRITTEN",
    "WRITER_STILL_RUNNING",
    "refusal",
    "sentence",
    "template",
]

# What a failure leaves, worded once.
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
    "online resumes": "the revision stays 0001 and re-running the same command resumes",
    "fill trigger stays": "the trigger stays",
    "CHECKs stay": "they stay",
    "repair-totals resumes": "and re-running 'python -m autopack repair-totals' finishes",
    "finish-online resumes": (
        "the fill trigger is gone already, and re-running 'python -m autopack finish-online' finishes"
    ),
    "fill trigger gone": (
        "the fill trigger is gone: stop the pre-BUILD-144 writers still running, then re-run finish-online"
    ),
    "doctor index stays": (
        "the revision stays 0001, llm_usage_events keeps its rows and totals, and re-running the same command finishes"
    ),
}

WRITER_STILL_RUNNING = (
    "a writer still running (the BUILD-144 application: uvicorn autopack.main:app, any autonomous executor) wrote "
    "rows the old schema cannot hold after they were set aside: stop the application, then re-run"
)


M = Message
BUILD144_MESSAGES: dict[str, Message] = {
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
    "stopped_while_changing": M("Stopped on {signal} while changing {table}{running}", "{after}", leaves=None),
    "online_downgrade_stopped": M(
        "The BUILD-144 online downgrade stopped ({error})", LEAVES["online downgrade stopped"], leaves=None
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
    "no_migrations_tree": M(
        "{caller} cannot find the migrations tree",
        "neither {ini} nor the installed copy {installed} is there; reinstall the package (pip install autopack-usage-"
        "migrations) or run from a checkout",
        leaves=None,
    ),
}
del M
MESSAGES.update(BUILD144_MESSAGES)
