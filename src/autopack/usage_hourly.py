"""The hourly usage aggregate: what the dashboard reads so that its cost follows hours and models, not events.

``llm_usage_hourly`` holds, per UTC hour, provider and model, the sums the dashboard shows (events, prompt,
completion and total tokens, exact-split tokens, total-only events), with one more key, the UTC day the
breakdown counts the row on (the hour's day, except MariaDB's ``2026-12-00``: ordered just before the 1st, so in
the hour before it, and counted on the 1st, as ``event_time.utc_day`` says). Undated rows (``event_time``) sit in
the hour ``UNDATED``.

Database triggers keep it exact for every writer (the recorder, pre-BUILD-144 code, deletes, repair-totals,
restore-set-aside, finish-online): AFTER INSERT / UPDATE / DELETE on ``llm_usage_events``, each *appends* the
row's sums (the old row's negated on UPDATE and DELETE) to ``llm_usage_hourly_pending``, in the writer's
transaction. Appending, never updating a shared bucket row, is what keeps writers apart: an upsert of hot bucket
rows makes transactions that write several events deadlock one another (measured: 302 of 2,400 three-row
transactions on MariaDB, 53 on PostgreSQL). ``compact`` folds pending rows into the buckets (the dashboard does
it as it reads, past ``COMPACT_AT`` rows); readers add both, so the sums are exact before and after.

It is derived data, not BUILD-144's schema: ``autopack usage-aggregate create`` makes and fills it (``rebuild``
refills it, ``drop`` removes it), ``verify`` compares it with the events, and BUILD-144's downgrade drops it
(its triggers read ``total_tokens``). Without it the dashboard reads the events, as before.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import mysql, sqlite

from autopack.event_time import _sqlite_instant, utc_day

TABLE = "llm_usage_hourly"
PENDING = f"{TABLE}_pending"
TABLES = (TABLE, PENDING, "llm_usage_daily")
COMPACT_AT = 1000  # pending rows past which the dashboard folds them into the buckets as it reads
COMPACT_BATCH = 20_000  # pending rows folded per transaction
EVENTS = "llm_usage_events"
TRIGGERS = {op: f"{TABLE}_on_{op.lower()}" for op in ("INSERT", "UPDATE", "DELETE", "TRUNCATE")}
PG_FUNCTION = f"{TABLE}_keep"
UNDATED = -(2**62)  # the hour and day of undated rows: far before any instant an engine can hold
KEYS = ("hour", "day", "provider_null", "provider", "model_null", "model")
SUMS = ("events", "prompt_tokens", "completion_tokens", "total_tokens", "exact_split_tokens", "total_only_events")
HELD = (*SUMS, "other_forms")  # and, for SQLite's reading of a window's first hour, rows not in Autopack's own form
DAILY = "llm_usage_daily"  # the same sums per whole UTC day (the hours folded into it: hour // 24)
DAILY_KEYS = ("whole_day", *KEYS[1:])
WATCHED = ("created_at", "provider", "model", "prompt_tokens", "completion_tokens", "total_tokens")


def sum_values(row: str, dialect: str) -> list[str]:
    """The row's contribution to each of ``HELD`` (``row`` is ``NEW.``, ``OLD.`` or empty), in the dashboard's
    rules: NULL splits count 0; a row is exact-split when both splits are there, else total-only."""
    exact = f"{row}prompt_tokens IS NOT NULL AND {row}completion_tokens IS NOT NULL"
    return [
        "1",
        f"COALESCE({row}prompt_tokens, 0)",
        f"COALESCE({row}completion_tokens, 0)",
        f"{row}total_tokens",
        f"CASE WHEN {exact} THEN {row}total_tokens ELSE 0 END",
        f"CASE WHEN {exact} THEN 0 ELSE 1 END",
        f"CASE WHEN {own_form(row + 'created_at')} THEN 0 ELSE 1 END" if dialect == "sqlite" else "0",
    ]


def own_form(c: str) -> str:
    """SQLite: ``created_at`` is text in Autopack's own form (``2026-12-05 10:00:00[.ffffff]``), whose text order
    is its time order, so a window's first hour is found by a narrow range of the index."""
    digits = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]"
    return (  # and names a real instant as written (not 24:30:00 or 02-31, which SQLite moves to another day)
        f"(typeof({c}) = 'text' AND {c} GLOB '{digits}*' AND (length({c}) = 19 OR (substr({c}, 20, 1) = '.' "
        f"AND length({c}) > 20 AND NOT substr({c}, 21) GLOB '*[^0-9]*')) "
        f"AND strftime('%Y-%m-%d %H:%M:%S', julianday({c})) = substr({c}, 1, 19))"
    )


def _compiled(expression: sa.ColumnElement, dialect) -> str:
    return str(expression.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def hour_and_day(dialect: str, row: str, created_at_type: str = "") -> tuple[str, str]:
    """SQL for the row's UTC hour and day (since 1970-01-01), ``UNDATED`` for both when its instant is unknown:
    the same instant ``event_time`` places the row by, on each engine."""
    c = f"{row}created_at"
    if dialect == "sqlite":  # Unix seconds (SQLite's millisecond precision), read as the dashboard reads them
        seconds = (
            f"CAST(strftime('%s', {_compiled(_sqlite_instant(sa.literal_column(c)), sqlite.dialect())}) AS INTEGER)"
        )
        floor = "CASE WHEN s IS NULL THEN {u} ELSE (s - ((s % {n}) + {n}) % {n}) / {n} END"
        return seconds, floor  # the caller names ``seconds`` s and formats ``floor`` with n = 3600, 86400
    if dialect == "postgresql":  # extract(epoch) is exact (numeric), UTC for timestamp and timestamptz alike
        known = f"{c} IS NOT NULL AND isfinite({c})"
        return tuple(
            f"CASE WHEN {known} THEN floor(extract(epoch FROM {c}) / {n})::bigint ELSE {UNDATED} END"
            for n in (3600, 86400)
        )
    undated = f"{c} IS NULL OR {c} < '1000-01-01'"
    day = f"DATEDIFF({_compiled(utc_day(sa.literal_column(c), 'mariadb'), mysql.dialect())}, '1970-01-01')"
    if created_at_type.lower().startswith("timestamp"):  # an instant: read without the session's time zone
        return (
            f"CASE WHEN {undated} THEN {UNDATED} ELSE FLOOR(UNIX_TIMESTAMP({c}) / 3600) END",
            f"CASE WHEN {undated} THEN {UNDATED} ELSE FLOOR(UNIX_TIMESTAMP({c}) / 86400) END",
        )
    # a date MariaDB holds but no calendar has (month or day 00, or 2026-02-31 under ALLOW_INVALID_DATES) sorts
    # just before the first real date after it: in the hour before that date's midnight
    month_start = f"(MAKEDATE(YEAR({c}), 1) + INTERVAL (GREATEST(MONTH({c}), 1) - 1) MONTH)"
    after = (
        f"CASE WHEN MONTH({c}) = 0 THEN MAKEDATE(YEAR({c}), 1) WHEN DAYOFMONTH({c}) = 0 THEN {month_start} "
        f"ELSE {month_start} + INTERVAL 1 MONTH END"
    )
    unreal = f"MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0 OR DAYOFMONTH({c}) > DAYOFMONTH(LAST_DAY({month_start}))"
    return (
        f"CASE WHEN {undated} THEN {UNDATED} WHEN {unreal} THEN DATEDIFF({after}, '1970-01-01') * 24 - 1 "
        f"ELSE FLOOR(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', {c}) / 3600000000) END",
        f"CASE WHEN {undated} THEN {UNDATED} ELSE {day} END",
    )


def row_values(
    dialect: str, row: str, created_at_type: str = "", sign: str = "", binary: dict[str, str] | None = None
) -> tuple[list[str], str]:
    """The six keys and the row's sums (each times ``sign``) as SQL, and what they are read FROM: one row
    (``NEW.``/``OLD.``) in a trigger, or with ``row=''`` every row of the events table. Names are kept exactly as
    written (``binary``: the COLLATE that groups them byte for byte, for a GROUP BY); the dashboard groups them by
    the events' own collation as it reads."""
    as_written = binary or {}
    key_values = [
        f"CASE WHEN {row}provider IS NULL THEN 1 ELSE 0 END",
        f"COALESCE({row}provider, ''){as_written.get('provider', '')}",
        f"CASE WHEN {row}model IS NULL THEN 1 ELSE 0 END",
        f"COALESCE({row}model, ''){as_written.get('model', '')}",
    ]
    sums = [f"{sign}({value})" if sign else value for value in sum_values(row, dialect)]
    if dialect == "sqlite":  # the instant is read once per row
        seconds, floor = hour_and_day(dialect, row)
        hour, day = (floor.format(u=UNDATED, n=n) for n in (3600, 86400))
        source = f"(SELECT {seconds} AS s) AS t" if row else f"(SELECT *, {seconds} AS s FROM {EVENTS}) AS t"
        return [hour, day, *key_values, *sums], f" FROM {source}"
    hour, day = hour_and_day(dialect, row, created_at_type)
    return [hour, day, *key_values, *sums], "" if row else f" FROM {EVENTS}"


def append(dialect: str, row: str, created_at_type: str, sign: str) -> str:
    """One trigger step: append the row's sums (times ``sign``) to the pending rows."""
    values, source = row_values(dialect, row, created_at_type, sign)
    return f"INSERT INTO {PENDING} ({', '.join([*KEYS, *HELD])}) SELECT {', '.join(values)}{source}"


def upsert_statement(dialect: str, table: str = TABLE, keys: tuple[str, ...] = KEYS) -> str:
    """Add one bucket's sums (bound by name) to ``table``'s buckets, making the bucket if it is new."""
    columns = ", ".join([*keys, *HELD])
    values = ", ".join(f":{name}" for name in (*keys, *HELD))
    if dialect == "mysql":
        added = ", ".join(f"{name} = {name} + VALUES({name})" for name in HELD)
        return f"INSERT INTO {table} ({columns}) VALUES ({values}) ON DUPLICATE KEY UPDATE {added}"
    added = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in HELD)
    conflict = ", ".join(conflict_keys(dialect, keys))
    return f"INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT ({conflict}) DO UPDATE SET {added}"


def conflict_keys(dialect: str, keys: tuple[str, ...] = KEYS) -> list[str]:
    if dialect == "postgresql":  # a btree entry holds at most ~2.7 kB: long names are keyed by their md5
        return [f"md5({key})" if key in ("provider", "model") else key for key in keys]
    return list(keys)


def dialect_name(connection: Connection) -> str:
    name = connection.dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name


def created_at_type(connection: Connection) -> str:
    if dialect_name(connection) != "mysql":
        return ""
    return connection.exec_driver_sql(
        "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        f"AND TABLE_NAME = '{EVENTS}' AND COLUMN_NAME = 'created_at'"
    ).scalar_one()


def table_ddl(connection: Connection) -> list[str]:
    """The buckets (a unique key, sums wide enough for any total: NUMERIC / DECIMAL on the servers) and the
    pending rows. Names are stored byte for byte (PostgreSQL ``COLLATE "C"``, MariaDB the column's ``_bin``)."""
    dialect = dialect_name(connection)
    names = name_types(connection)
    wide = {"sqlite": "INTEGER", "postgresql": "NUMERIC(39)", "mysql": "DECIMAL(65)"}[dialect]

    def columns(sum_type: str, first: str = "hour") -> list[str]:
        return [
            f"{first} BIGINT NOT NULL",
            "day BIGINT NOT NULL",
            "provider_null SMALLINT NOT NULL",
            f"provider {names['provider']} NOT NULL",
            "model_null SMALLINT NOT NULL",
            f"model {names['model']} NOT NULL",
            *(f"{name} {sum_type} NOT NULL" for name in HELD),
        ]

    key = {
        "sqlite": "id INTEGER PRIMARY KEY",
        "postgresql": "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "mysql": "id BIGINT AUTO_INCREMENT PRIMARY KEY",
    }[dialect]
    return [
        f"CREATE TABLE {TABLE} ({', '.join(columns(wide))})",
        f"CREATE UNIQUE INDEX {TABLE}_key ON {TABLE} ({', '.join(conflict_keys(dialect))})",
        f"CREATE TABLE {DAILY} ({', '.join(columns(wide, 'whole_day'))})",
        f"CREATE UNIQUE INDEX {DAILY}_key ON {DAILY} ({', '.join(conflict_keys(dialect, DAILY_KEYS))})",
        f"CREATE TABLE {PENDING} ({', '.join([key, *columns(wide if dialect != 'sqlite' else 'INTEGER')])})",
    ]


def name_types(connection: Connection) -> dict[str, str]:
    """The aggregate's provider and model types: text kept byte for byte."""
    dialect = dialect_name(connection)
    if dialect == "sqlite":
        return dict.fromkeys(("provider", "model"), "TEXT")
    if dialect == "postgresql":
        return dict.fromkeys(("provider", "model"), 'TEXT COLLATE "C"')
    return {
        name: f"{column_type} CHARACTER SET {charset} COLLATE {charset}_bin"
        for name, (column_type, charset) in mariadb_name_columns(connection).items()
    }


def binary_collations(connection: Connection) -> dict[str, str]:
    """The COLLATE suffix that groups each name byte for byte in the fill (SQLite's ``COALESCE`` already does)."""
    dialect = dialect_name(connection)
    if dialect == "sqlite":
        return {}
    if dialect == "postgresql":
        return dict.fromkeys(("provider", "model"), ' COLLATE "C"')
    return {name: f" COLLATE {charset}_bin" for name, (_, charset) in mariadb_name_columns(connection).items()}


def mariadb_name_columns(connection: Connection) -> dict[str, tuple[str, str]]:
    """MariaDB: each of provider and model as (type, character set), refused in one sentence when it cannot be
    in a unique key (TEXT)."""
    rows = connection.exec_driver_sql(
        "SELECT COLUMN_NAME, COLUMN_TYPE, CHARACTER_SET_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
        f"DATABASE() AND TABLE_NAME = '{EVENTS}' AND COLUMN_NAME IN ('provider', 'model')"
    ).all()
    found = {name.lower(): (column_type.lower(), charset) for name, column_type, charset in rows}
    for name, (column_type, _) in found.items():
        if not column_type.startswith("varchar"):
            raise AggregateError(
                f"{EVENTS}.{name} is {column_type}, which a unique key cannot hold: make it VARCHAR(255) to use the "
                "hourly aggregate (the dashboard reads the events meanwhile)"
            )
    return found


def name_collations(connection: Connection) -> dict[str, str]:
    """The collation the events table groups and sorts each name by, as SQL to put after COLLATE (empty: SQLite's
    BINARY), so that the dashboard reads names through the aggregate as it reads them from the events."""
    dialect = dialect_name(connection)
    if dialect == "sqlite":
        sql = (
            connection.exec_driver_sql(
                f"SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '{EVENTS}'"
            ).scalar()
            or ""
        )
        found = {}
        for name in ("provider", "model"):
            match = re.search(rf"""["`\[]?\b{name}\b["`\]]?\s[^,]*?\bCOLLATE\s+["'`]?(\w+)""", sql, re.IGNORECASE)
            if match and match.group(1).upper() != "BINARY":
                found[name] = match.group(1)
        return found
    if dialect == "postgresql":
        rows = connection.exec_driver_sql(
            "SELECT a.attname, format('%%I.%%I', n.nspname, c.collname) FROM pg_attribute a JOIN pg_collation c "
            "ON c.oid = a.attcollation JOIN pg_namespace n ON n.oid = c.collnamespace "
            f"WHERE a.attrelid = to_regclass('{EVENTS}') AND a.attname IN ('provider', 'model')"
        ).all()
        return dict(rows)
    rows = connection.exec_driver_sql(
        "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        f"AND TABLE_NAME = '{EVENTS}' AND COLUMN_NAME IN ('provider', 'model')"
    ).all()
    return {name.lower(): collation for name, collation in rows if collation}


def trigger_ddl(connection: Connection) -> list[str]:
    dialect = dialect_name(connection)
    kind = created_at_type(connection)
    add_new, take_old = (append(dialect, "NEW.", kind, ""), append(dialect, "OLD.", kind, "-"))
    if dialect == "postgresql":
        old_row, new_row = (  # names byte for byte: a rename in case only is a change under any collation
            ", ".join(
                f'{row}.{name}::text COLLATE "C"' if name in ("provider", "model") else f"{row}.{name}"
                for name in WATCHED
            )
            for row in ("OLD", "NEW")
        )
        body = (
            f"BEGIN IF TG_OP = 'TRUNCATE' THEN DELETE FROM {PENDING}; DELETE FROM {TABLE}; DELETE FROM {DAILY}; "
            "RETURN NULL; END IF; "
            f"IF TG_OP = 'UPDATE' AND ({old_row}) IS NOT DISTINCT FROM ({new_row}) THEN RETURN NULL; END IF; "
            f"IF TG_OP <> 'INSERT' THEN {take_old}; END IF; "
            f"IF TG_OP <> 'DELETE' THEN {add_new}; END IF; RETURN NULL; END"
        )
        # run as the aggregate's owner, in the events table's schema: a writer needs no grant on the aggregate and
        # its search_path does not matter; no UPDATE OF list, so the columns stay alterable (the body checks them)
        schema = connection.exec_driver_sql(
            f"SELECT quote_ident(n.nspname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.oid = to_regclass('{EVENTS}')"
        ).scalar_one()
        return [
            f"CREATE FUNCTION {PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
            f"SET search_path = {schema}, pg_temp AS $$ {body} $$",
            f"CREATE TRIGGER {TRIGGERS['INSERT']} AFTER INSERT ON {EVENTS} FOR EACH ROW EXECUTE FUNCTION "
            f"{PG_FUNCTION}()",
            f"CREATE TRIGGER {TRIGGERS['UPDATE']} AFTER UPDATE ON {EVENTS} FOR EACH ROW EXECUTE "
            f"FUNCTION {PG_FUNCTION}()",
            f"CREATE TRIGGER {TRIGGERS['DELETE']} AFTER DELETE ON {EVENTS} FOR EACH ROW EXECUTE FUNCTION "
            f"{PG_FUNCTION}()",
            f"CREATE TRIGGER {TRIGGERS['TRUNCATE']} AFTER TRUNCATE ON {EVENTS} FOR EACH STATEMENT EXECUTE "
            f"FUNCTION {PG_FUNCTION}()",
        ]
    bodies = {"INSERT": [add_new], "UPDATE": [take_old, add_new], "DELETE": [take_old]}
    of = {"INSERT": "", "DELETE": "", "UPDATE": f" OF {', '.join(WATCHED)}" if dialect == "sqlite" else ""}
    statements = []
    for op, steps in bodies.items():
        if dialect == "sqlite":
            body = "".join(f"{step}; " for step in steps)
            statements.append(f"CREATE TRIGGER {TRIGGERS[op]} AFTER {op}{of[op]} ON {EVENTS} BEGIN {body}END")
        else:
            body = " ".join(f"{step};" for step in steps)
            if op == "UPDATE":  # MariaDB has no UPDATE OF: an update of other columns appends nothing
                same = " AND ".join(
                    f"BINARY OLD.{name} <=> BINARY NEW.{name}"
                    if name in ("provider", "model")
                    else f"OLD.{name} <=> NEW.{name}"
                    for name in WATCHED
                )
                body = f"IF NOT ({same}) THEN {body} END IF;"
            statements.append(f"CREATE TRIGGER {TRIGGERS[op]} AFTER {op} ON {EVENTS} FOR EACH ROW BEGIN {body} END")
    return statements


def fill_sql(connection: Connection) -> str:
    """Every hourly bucket from the events, in one INSERT ... SELECT ... GROUP BY (the table is empty before it)."""
    binary = binary_collations(connection)
    values, source = row_values(dialect_name(connection), "", created_at_type(connection), binary=binary)
    keys = [f"k{i}" for i in range(len(KEYS))]
    named = [f"{value} AS {name}" for value, name in zip(values, [*keys, *HELD], strict=True)]
    summed = [f"SUM({name})" for name in HELD]
    return (
        f"INSERT INTO {TABLE} ({', '.join([*KEYS, *HELD])}) SELECT {', '.join([*keys, *summed])} "
        f"FROM (SELECT {', '.join(named)}{source}) AS per_row GROUP BY {', '.join(keys)}"
    )


def whole_day_of(dialect: str, hour: str) -> str:
    """SQL for ``hour // 24`` (floor division, also before 1970)."""
    if dialect == "sqlite":
        return f"(({hour}) - ((({hour}) % 24) + 24) % 24) / 24"
    if dialect == "postgresql":
        return f"floor(({hour}) / 24.0)::bigint"
    return f"FLOOR(({hour}) / 24)"


def daily_fill_sql(dialect: str) -> str:
    """The daily buckets from the hourly ones (undated rows have no day)."""
    rest = ", ".join(KEYS[1:])
    summed = ", ".join(f"SUM({name})" for name in HELD)
    return (
        f"INSERT INTO {DAILY} ({', '.join([*DAILY_KEYS, *HELD])}) SELECT {whole_day_of(dialect, 'hour')} AS "
        f"whole_day, {rest}, {summed} FROM {TABLE} WHERE hour <> {UNDATED} GROUP BY 1, {rest}"
    )


class AggregateError(Exception):
    """The aggregate cannot be made here: one sentence saying why and what to do."""


SQLITE_OVERFLOW = (
    "a bucket's sum passes 2^63 tokens, more than SQLite's integers hold: 'autopack usage-aggregate drop' (the "
    "dashboard then reads the events, whose sums are exact at any size)"
)


@contextmanager
def sums_that_fit() -> Iterator[None]:
    """SQLite's "integer overflow" (a bucket past 2^63) as one sentence."""
    try:
        yield
    except sa.exc.OperationalError as error:
        if "integer overflow" in str(error.orig):
            raise AggregateError(SQLITE_OVERFLOW) from None
        raise


def installed(connection: Connection) -> bool:
    return sa.inspect(connection).has_table(TABLE)


def drop_ddl(dialect: str) -> list[str]:
    """Every statement IF EXISTS: the triggers, PostgreSQL's function, the table (``dialect``: SQLAlchemy's name)."""
    postgres = dialect == "postgresql"
    statements = [
        f"DROP TRIGGER IF EXISTS {name}" + (f" ON {EVENTS}" if postgres else "") for name in triggers(dialect)
    ]
    if postgres:
        statements.append(f"DROP FUNCTION IF EXISTS {PG_FUNCTION}()")
    return [*statements, *(f"DROP TABLE IF EXISTS {table}" for table in (PENDING, DAILY, TABLE))]


@contextmanager
def one_transaction(connection: Connection) -> Iterator[None]:
    """The work in one transaction: SQLite's (BEGIN EXCLUSIVE, opened by the engine), or on a server, whose
    command connection is in autocommit, an explicit one."""
    if dialect_name(connection) == "sqlite":
        yield
        connection.commit()
        return
    mariadb = dialect_name(connection) == "mysql"
    if mariadb:  # the tables locked whole, all at once: a writer waits before its statement, never inside it
        # (row locks taken by a scan made writers of several rows deadlock with it), readers of the aggregate too
        connection.exec_driver_sql("SET autocommit = 0")
        locked = ", ".join([f"{EVENTS} READ", *(f"{table} WRITE" for table in TABLES)])
        connection.exec_driver_sql(f"LOCK TABLES {locked}")
    else:
        connection.exec_driver_sql("BEGIN")
    try:
        yield
    except BaseException:
        connection.exec_driver_sql("ROLLBACK")
        if mariadb:
            connection.exec_driver_sql("UNLOCK TABLES")
            connection.exec_driver_sql("SET autocommit = 1")
        raise
    connection.exec_driver_sql("COMMIT")
    if mariadb:
        connection.exec_driver_sql("UNLOCK TABLES")
        connection.exec_driver_sql("SET autocommit = 1")


def refill(connection: Connection) -> int:
    """Empty the aggregate and fill it from the events, writers held off meanwhile; the number of buckets."""
    if dialect_name(connection) == "postgresql":  # writers wait (reads go on) until the refill commits
        connection.exec_driver_sql(f"LOCK TABLE {EVENTS} IN SHARE MODE")
    connection.exec_driver_sql(f"DELETE FROM {PENDING}")
    connection.exec_driver_sql(f"DELETE FROM {DAILY}")
    connection.exec_driver_sql(f"DELETE FROM {TABLE}")
    connection.exec_driver_sql(fill_sql(connection))
    connection.exec_driver_sql(daily_fill_sql(dialect_name(connection)))
    return connection.exec_driver_sql(f"SELECT COUNT(*) FROM {TABLE}").scalar_one()


def create(connection: Connection) -> int:
    """Make the aggregate, its triggers, and fill it; the number of buckets."""
    columns = {c["name"] for c in sa.inspect(connection).get_columns(EVENTS)}
    if "total_tokens" not in columns:
        raise AggregateError(f"{EVENTS} has no total_tokens (before BUILD-144): run 'autopack upgrade head' first")
    if installed(connection):
        raise AggregateError(f"{TABLE} is there already: 'autopack usage-aggregate rebuild' refills it")
    if row_security(connection):
        raise AggregateError(
            f"{EVENTS} has row-level security: one aggregate would show every role the usage its policies hide; "
            "the dashboard reads the events (each role sees its own rows)"
        )
    schema = [*table_ddl(connection), *trigger_ddl(connection), *copied_grants(connection)]
    if dialect_name(connection) == "mysql":  # DDL commits at once: make it, then fill it in one transaction
        for statement in schema:
            connection.exec_driver_sql(statement)
        with one_transaction(connection):
            return refill(connection)
    with sums_that_fit(), one_transaction(connection):
        if dialect_name(connection) == "postgresql":
            connection.exec_driver_sql(f"LOCK TABLE {EVENTS} IN SHARE ROW EXCLUSIVE MODE")
        for statement in schema:
            connection.exec_driver_sql(statement)
        return refill(connection)


def row_security(connection: Connection) -> bool:
    if dialect_name(connection) != "postgresql":
        return False
    query = f"SELECT COALESCE((SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass('{EVENTS}')), false)"
    return connection.exec_driver_sql(query).scalar()


def copied_grants(connection: Connection) -> list[str]:
    """PostgreSQL: each role's SELECT / INSERT / UPDATE / DELETE on the events, granted on the aggregate too, so
    that a dashboard role reads (and folds) it as it read the events."""
    if dialect_name(connection) != "postgresql":
        return []
    rows = connection.exec_driver_sql(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, a.privilege_type "
        "FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
        f"WHERE c.oid = to_regclass('{EVENTS}') AND a.grantee <> c.relowner "
        "AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')"
    ).all()
    return [f"GRANT {privilege} ON {', '.join(TABLES)} TO {grantee}" for grantee, privilege in rows]


def rebuild(connection: Connection) -> int:
    if not installed(connection):
        raise AggregateError(f"there is no {TABLE}: 'autopack usage-aggregate create' makes it")
    with sums_that_fit(), one_transaction(connection):
        return refill(connection)


def drop(connection: Connection) -> bool:
    """Drop the aggregate and its triggers; whether there was one."""
    was = installed(connection)
    if dialect_name(connection) == "mysql":  # each DDL statement commits at once (and no LOCK TABLES around it)
        for statement in drop_ddl(connection.dialect.name):
            connection.exec_driver_sql(statement)
        return was
    with one_transaction(connection):
        for statement in drop_ddl(connection.dialect.name):
            connection.exec_driver_sql(statement)
    return was


def bucket_sums(connection: Connection, select: str) -> dict[tuple, tuple]:
    found: dict[tuple, tuple] = {}
    for row in connection.exec_driver_sql(select):
        key, sums = tuple(row[: len(KEYS)]), tuple(int(v) for v in row[len(KEYS) :])
        if any(sums):
            found[key] = sums
    return found


def differences(connection: Connection) -> list[tuple]:
    """The buckets whose sums differ between the aggregate (hourly buckets and pending rows) and the events, and
    the days whose daily bucket differs from its hourly ones (empty: it is exact)."""
    keys, columns = ", ".join(KEYS), ", ".join([*KEYS, *HELD])
    both = f"SELECT {columns} FROM {TABLE} UNION ALL SELECT {columns} FROM {PENDING}"
    summed = ", ".join(f"SUM({n})" for n in HELD)
    held = bucket_sums(connection, f"SELECT {keys}, {summed} FROM ({both}) AS held GROUP BY {keys}")
    insert = fill_sql(connection)
    counted = bucket_sums(connection, insert[insert.index(") SELECT") + 2 :])
    wrong = [key for key in held.keys() | counted.keys() if held.get(key) != counted.get(key)]
    daily_keys = ", ".join(DAILY_KEYS)
    days = bucket_sums(connection, f"SELECT {daily_keys}, {summed} FROM {DAILY} GROUP BY {daily_keys}")
    insert = daily_fill_sql(dialect_name(connection))
    rolled = bucket_sums(connection, insert[insert.index(") SELECT") + 2 :])
    wrong += [("day", *key) for key in days.keys() | rolled.keys() if days.get(key) != rolled.get(key)]
    return sorted(wrong, key=str)


def unreadable(connection: Connection) -> str:
    """Why this connection cannot read the aggregate (empty: it can)."""
    dialect = dialect_name(connection)
    if dialect == "postgresql":
        readable, secured = connection.exec_driver_sql(
            f"SELECT COALESCE(has_table_privilege(to_regclass('{TABLE}'), 'SELECT') AND "
            f"has_table_privilege(to_regclass('{PENDING}'), 'SELECT') AND "
            f"has_table_privilege(to_regclass('{DAILY}'), 'SELECT'), false), "
            f"COALESCE((SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass('{EVENTS}')), false)"
        ).one()
        if secured:
            return f"{EVENTS} has row-level security (each role sees its own rows): 'autopack usage-aggregate drop'"
        if not readable:
            return f"this role may not read it: GRANT SELECT ON {', '.join(TABLES)} TO it"
        return ""
    if dialect == "mysql":
        try:
            connection.exec_driver_sql(f"SELECT 1 FROM {', '.join(TABLES)} LIMIT 0").all()
        except sa.exc.DBAPIError as error:
            said = str(error.orig).splitlines()[0]
            return f"this user may not read it ({said}): GRANT SELECT ON {', '.join(TABLES)}"
    return ""


def pending_rows(connection: Connection) -> int:
    return connection.exec_driver_sql(f"SELECT COUNT(*) FROM {PENDING}").scalar_one()


def compact(connection: Connection, batch: int = COMPACT_BATCH, once: bool = False) -> int:
    """Fold pending rows into the buckets, ``batch`` rows per transaction (one transaction with ``once``); the
    rows folded. Exactly the rows read are folded and deleted (by id), so a writer's row that commits meanwhile
    waits for the next fold. Another compaction running: this one folds nothing."""
    dialect = dialect_name(connection)
    if connection.in_transaction():  # an engine that begins as it connects (the application's): its own first
        connection.commit()
    if dialect == "mysql":  # no gap locks: a writer appending a pending row never waits for the fold
        connection = connection.execution_options(isolation_level="READ COMMITTED")
    folded = 0
    columns = ", ".join([*KEYS, *HELD])
    while True:
        with connection.begin():
            if not took_the_compaction_lock(connection, dialect):
                return folded
            try:
                lock = "" if dialect == "sqlite" else " FOR UPDATE"
                rows = connection.exec_driver_sql(
                    f"SELECT id, {columns} FROM {PENDING} ORDER BY id LIMIT {batch}{lock}"
                ).all()
                hourly = summed_by_key(rows, lambda key: key)
                daily = summed_by_key(rows, lambda key: (key[0] // 24, *key[1:]) if key[0] != UNDATED else None)
                for table, keys, sums in ((TABLE, KEYS, hourly), (DAILY, DAILY_KEYS, daily)):
                    if sums:
                        values = [dict(zip([*keys, *HELD], [*key, *added], strict=True)) for key, added in sums.items()]
                        connection.execute(sa.text(upsert_statement(dialect, table, keys)), values)
                ids = [row[0] for row in rows]
                for first in range(0, len(ids), 1000):
                    chunk = ", ".join(str(i) for i in ids[first : first + 1000])
                    connection.exec_driver_sql(f"DELETE FROM {PENDING} WHERE id IN ({chunk})")
            finally:
                if dialect == "mysql":
                    connection.exec_driver_sql(f"DO RELEASE_LOCK('{TABLE}_compact')")
        folded += len(rows)
        if once or len(rows) < batch:
            return folded


def summed_by_key(rows, bucket_of) -> dict[tuple, list[int]]:
    """Pending rows (id, keys, sums) added up per ``bucket_of(keys)`` (``None``: in no bucket of this level)."""
    sums: dict[tuple, list[int]] = {}
    for row in rows:
        key = bucket_of(tuple(row[1 : 1 + len(KEYS)]))
        if key is not None:
            bucket = sums.setdefault(key, [0] * len(HELD))
            for i, value in enumerate(row[1 + len(KEYS) :]):
                bucket[i] += int(value)
    return sums


def took_the_compaction_lock(connection: Connection, dialect: str) -> bool:
    """One compaction at a time (SQLite: its write lock is the lock); never waits for another."""
    if dialect == "postgresql":
        return connection.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock(hashtext('{TABLE}_compact'))").scalar()
    if dialect == "mysql":
        return connection.exec_driver_sql(f"SELECT GET_LOCK('{TABLE}_compact', 0)").scalar() == 1
    return True


def missing_triggers(connection: Connection) -> list[str]:
    """The aggregate's triggers that are not there (or, on PostgreSQL, disabled)."""
    dialect = dialect_name(connection)
    if dialect == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
    elif dialect == "postgresql":
        query = f"SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass('{EVENTS}') AND tgenabled <> 'D'"
    else:
        query = "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"
    there = set(connection.exec_driver_sql(query).scalars())
    return [name for name in triggers(dialect) if name not in there]


def triggers(dialect: str) -> list[str]:
    """The aggregate's triggers on this engine (a TRUNCATE trigger only where one exists: PostgreSQL)."""
    return [name for op, name in TRIGGERS.items() if op != "TRUNCATE" or dialect == "postgresql"]


def check(connection: Connection) -> str:
    """Empty when the aggregate is exact and kept; else one sentence saying what is wrong and the fix."""
    missing = missing_triggers(connection)
    try:
        with sums_that_fit():
            wrong = differences(connection)
    except AggregateError as error:
        return str(error)
    if not missing and not wrong:
        return ""
    said = []
    if missing:
        said.append(f"trigger {', '.join(missing)} missing or disabled")
    hours = [key for key in wrong if key[0] != "day"]
    days = [key for key in wrong if key[0] == "day"]
    if hours:
        hour = hours[0][0]
        first = "undated rows" if hour == UNDATED else f"hour {hour} (since 1970, UTC)"
        said.append(f"{len(hours)} buckets differ from the events, the first at {first}")
    if days:
        said.append(f"{len(days)} daily buckets differ from their hours, the first on day {days[0][1]} (since 1970)")
    fix = "'autopack usage-aggregate drop', then 'create'" if missing else "'autopack usage-aggregate rebuild'"
    return f"{'; '.join(said)}: run {fix}"
