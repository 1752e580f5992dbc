"""The ``-x key=value`` options of this migrations tree, parsed and checked once, before anything runs.

``env.py`` parses them (``parse_options``) and keeps the result in the Alembic config's ``attributes``; the
revisions read that same object (``options_of_this_run``), so no option is ever parsed twice.

An unknown key or a value outside its documented range is refused in one sentence that lists what is
accepted: a typo such as ``-x onlne=true`` must never quietly run the single-transaction mode the operator
asked to avoid, and ``-x batch_rows=0`` must never loop forever holding the write lock.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from alembic import context

from autopack.database import version_table as configured_version_table
from autopack.migrations.runtime.messages import refusal
from autopack.migrations.runtime.progress import PROGRESS_EVERY_S

SCRIPT_STATEMENT_TIMEOUT = "1h"  # what a --sql script sets when -x statement_timeout is not given
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
INTERVAL = re.compile(r"^\d+(\.\d+)?\s*(us|ms|s|min|h|d)?$")
MAX_INTERVAL_S = (2**31 - 1) / 1000  # PostgreSQL's limit for lock_timeout and statement_timeout (about 24.8 days)
INTERVAL_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Options:
    busy_timeout: float = 10.0  # SQLite: seconds to wait for another process's lock
    lock_timeout: str = "10s"  # PostgreSQL lock_timeout / MariaDB lock_wait_timeout of every statement
    statement_timeout: str | None = None  # PostgreSQL: each statement's limit (scripts: SCRIPT_STATEMENT_TIMEOUT)
    online: bool = False  # PostgreSQL and MariaDB: committed batches instead of one transaction
    batch_rows: int | None = None  # rows per backfill batch (default 100,000; online 20,000)
    online_lock_timeout: str = "500ms"
    online_retries: int = 20
    progress_every: float = PROGRESS_EVERY_S  # seconds between progress lines (0: every batch)
    # online backfill only (``throttle``): a pause between batches, a target batch duration, the replica-lag wait
    batch_pause: str | None = None
    batch_seconds: str | None = None
    max_replica_lag: str = "1.5s"  # "off": wait for no replica
    max_replica_lag_bytes: int = 64 * 2**20
    replica_wait_max: str = "10min"
    migration_lock_wait: str = "1h"  # PostgreSQL, MariaDB: how long to wait while another migration runs
    # logical replication (``logical_replication``): the operator confirms the order that keeps subscriptions applying
    subscribers_upgraded: bool = False  # upgrade of a publisher: every subscriber has total_tokens already
    publisher_downgraded: bool = False  # downgrade of a subscriber: its publisher no longer sends total_tokens
    holdover_on_subscribers: bool = False  # downgrade under FOR ALL TABLES: subscribers have the set-aside table

    @property
    def rows_per_batch(self) -> int:
        return self.batch_rows or (20_000 if self.online else 100_000)


def _positive_number(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError
    return number


def _non_negative_number(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 2**31 - 1:
        raise ValueError
    return number


def _interval(value: str) -> str:
    # PostgreSQL rounds a duration below 1ms to 0 (no limit at all) and takes at most 2^31-1 ms
    if not INTERVAL.match(value.strip()) or not 0.001 <= interval_seconds(value) <= MAX_INTERVAL_S:
        raise ValueError
    return re.sub(r"\s+", "", value)  # "30 min" -> "30min": it goes into a connection's "-c name=value" options


def _interval_or_off(value: str) -> str:
    return "0" if value.strip() == "0" else _interval(value)


def _lag(value: str) -> str:
    return "off" if value.strip().lower() in ("0", "off", "false", "no") else _interval(value)


BYTES = re.compile(r"^(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?$", re.IGNORECASE)
BYTE_UNITS = {"b": 1, "kb": 2**10, "kib": 2**10, "mb": 2**20, "mib": 2**20, "gb": 2**30, "gib": 2**30}


def _bytes(value: str) -> int:
    match = BYTES.match(value.strip())
    if not match:
        raise ValueError
    number = int(match.group(1)) * BYTE_UNITS[(match.group(2) or "b").lower()]
    if not 1 <= number <= 2**62:
        raise ValueError
    return number


def _boolean(value: str) -> bool:
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise ValueError


# key -> (parser, what a valid value looks like)
PARSERS: dict[str, tuple[Callable[[str], object], str]] = {
    "busy_timeout": (_positive_number, "seconds > 0, e.g. 30"),
    "lock_timeout": (_interval, "a duration from 1ms to 24d such as 500ms, 10s or 1min"),
    "online": (_boolean, "true or false"),
    "batch_rows": (_positive_int, "a whole number of rows from 1 to 2147483647"),
    "online_lock_timeout": (_interval, "a duration from 1ms to 24d such as 500ms or 2s"),
    "online_retries": (_positive_int, "a whole number from 1 to 2147483647"),
    "progress_every": (_non_negative_number, "seconds >= 0 (0: a line per batch)"),
    "migration_lock_wait": (_interval, "a duration from 1ms to 24d such as 30min or 2h"),
    "batch_pause": (_interval, "a duration from 1ms to 24d such as 50ms"),
    "batch_seconds": (_interval, "a duration from 1ms to 24d such as 0.5s (a target per batch)"),
    "max_replica_lag": (_lag, "a duration such as 1.5s, or off to wait for no replica"),
    "max_replica_lag_bytes": (_bytes, "a size such as 64MB or 1048576 (bytes)"),
    "replica_wait_max": (_interval, "a duration from 1ms to 24d such as 10min"),
    "statement_timeout": (_interval_or_off, "a duration from 1ms to 24d such as 30min or 2h, or 0 for none"),
    "subscribers_upgraded": (_boolean, "true or false"),
    "publisher_downgraded": (_boolean, "true or false"),
    "holdover_on_subscribers": (_boolean, "true or false"),
}


def interval_seconds(value: str) -> float:
    """``"500ms"`` -> 0.5; a bare number is milliseconds, as PostgreSQL reads it."""
    match = INTERVAL.match(value.strip())
    if not match:
        raise ValueError(value)
    number = float(value.strip()[: match.start(2)] if match.group(2) else value.strip())
    return number * INTERVAL_SECONDS[match.group(2)] if match.group(2) else number / 1000


def whole_seconds(value: str) -> int:
    """A duration as MariaDB's lock timeouts take it: whole seconds, at least 1 (rounded up)."""
    return max(1, math.ceil(interval_seconds(value)))


def parse_options(x_arguments: dict[str, str]) -> Options:
    """``-x`` arguments -> Options, or a CommandError of one sentence naming what is accepted."""
    values: dict[str, object] = {}
    for key, raw in x_arguments.items():
        if key not in PARSERS:
            raise refusal("unknown_option", key=key, accepted=", -x ".join(PARSERS))
        parser, expected = PARSERS[key]
        try:
            values[key] = parser(raw)
        except ValueError:
            raise refusal("option_not_valid", key=key, raw=raw, expected=expected) from None
    return Options(**values)  # type: ignore[arg-type]


OPTIONS_KEY = "autopack.options"
DEFAULTS = Options()
# the online backfill's pacing (``throttle``): refused without -x online=true rather than silently ignored
ONLINE_ONLY = ("batch_pause", "batch_seconds", "max_replica_lag", "max_replica_lag_bytes", "replica_wait_max")


def options_of_this_run() -> Options:
    """The options env.py parsed for this command (a revision run outside env.py gets the defaults' check)."""
    attributes = context.config.attributes
    if OPTIONS_KEY not in attributes:
        attributes[OPTIONS_KEY] = parse_options(context.get_x_argument(as_dictionary=True))
    return attributes[OPTIONS_KEY]


def require_mode_fits(
    options: Options,
    dialect: str,
    offline: bool = False,
    command: str | None = None,
    *,
    online_here: bool,
    online_downgrade_here: bool,
) -> None:
    """``-x online=true`` where the engine has an online mode (``online_here``; for a downgrade
    ``online_downgrade_here``): elsewhere, or for a ``--sql`` script (which cannot commit as it goes), it is refused
    before any revision runs, never ignored."""
    if options.online and offline:
        raise refusal("online_has_no_sql_script")
    throttling = [f"-x {name}" for name in ONLINE_ONLY if getattr(options, name) != getattr(DEFAULTS, name)]
    if throttling and not options.online and not offline:
        raise refusal("pacing_without_online", throttling=", ".join(throttling))
    if options.online and online_here and command == "downgrade" and not online_downgrade_here:
        raise refusal("online_downgrade_not_here", dialect=dialect)
    if options.online and not online_here:
        raise refusal("online_mode_not_here", dialect=dialect)


def version_table() -> str:
    """This tree's version table (``AUTOPACK_VERSION_TABLE``, default ``alembic_version``), or one sentence."""
    try:
        return configured_version_table()
    except ValueError as error:
        raise refusal("version_table_not_a_name", value_error=error) from None
