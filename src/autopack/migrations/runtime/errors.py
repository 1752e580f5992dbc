"""What an operator reads when something goes wrong: one sentence, never a password.

``explain`` turns a failure an operator can act on (a lock held, a read-only file or server, a missing
privilege, a full disk, a server that does not answer) into one sentence saying what happened and what to
do; anything else is a bug and keeps its traceback. ``shown`` is the only way a URL is printed.
"""

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from alembic.util import CommandError
from pymysql.constants import ER
from sqlalchemy import exc
from sqlalchemy.engine import URL

from autopack.migrations.runtime.engine_traits import traits_of
from autopack.migrations.runtime.messages import MARIADB_DDL_STAYS, NOTHING_CHANGED, sentence

WAIT_HINT = "-x busy_timeout=SECONDS to wait longer"

# query parameters that carry a secret, in libpq, psycopg and PyMySQL spelling
SECRET_PARAMETERS = {"password", "passwd", "sslpassword", "ssl_password", "sslkey_password", "passfile"}


def shown(url: URL) -> str:
    """The URL as it may be printed: never with its password, in the userinfo or in a query parameter."""
    secrets = {key: "HIDDEN" for key in url.query if key.lower() in SECRET_PARAMETERS}
    rendered = (url.update_query_dict(secrets) if secrets else url).render_as_string(hide_password=True)
    return rendered.replace("=HIDDEN", "=***")


def explain(
    error: Exception,
    url: URL,
    *,
    busy_timeout_s: float,
    lock_timeout: str,
    wait_hint: str | None = WAIT_HINT,
    waited_s: float | None = None,
    leaves: str | None = NOTHING_CHANGED,
    table: str,
) -> str | None:
    """One sentence for a failure an operator can act on, or None for a bug (which keeps its traceback).
    ``wait_hint``: how this command waits longer for a lock, or None when it takes no such option; ``leaves``:
    what the failure leaves (``messages.Message.template``); ``table``: the table the command works on."""
    orig = getattr(error, "orig", error)
    text = first_line(error)
    said = {"where": shown(url), "text": text, "leaves": leaves, "table": table}
    sqlite = sqlite_error(orig)
    if sqlite in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        waited = f"{waited_s or busy_timeout_s:.1f}"
        return sentence("sqlite_locked", waited=waited, wait_hint=", " + wait_hint if wait_hint else "", **said)
    if sqlite in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return sentence("sqlite_not_a_database", **said)
    if sqlite == "SQLITE_FULL":
        return sentence("disk_full", **said)
    if sqlite == "SQLITE_READONLY":
        return sentence("sqlite_read_only", **said)
    if getattr(orig, "sqlstate", None) == "25006" or mysql_error(orig) == ER_OPTION_PREVENTS_STATEMENT:
        return sentence("server_read_only", **said)
    # PostgreSQL gives row-level security the same SQLSTATE as a missing privilege: only its message tells them apart
    if getattr(orig, "sqlstate", None) == "42501" and "row-level security" in text:
        return sentence("row_level_security", **said)
    if getattr(orig, "sqlstate", None) == "42501" or mysql_error(orig) in NO_PRIVILEGE:
        return sentence("privilege_missing", **said)
    if sqlite == "SQLITE_CANTOPEN":
        return sentence("sqlite_cannot_open", **said)
    if mysql_error(orig) in ONLINE_ALTER_REFUSED:  # MariaDB: ALGORITHM= / LOCK= not supported for this ALTER
        return sentence("mariadb_online_alter_refused", **said)
    if mysql_error(orig) == ER.LOCK_WAIT_TIMEOUT:  # MariaDB/MySQL lock_wait_timeout
        return sentence("mariadb_lock_wait", lock_timeout=lock_timeout, **said)
    if getattr(orig, "sqlstate", None) == "57014":  # midway, report.failed_midway says it with what is left
        # verify and finish-online take no -x
        more = "give it more time with -x statement_timeout=2h, or raise" if wait_hint else "raise"
        return sentence("statement_timeout", more=more, **said)
    if getattr(orig, "sqlstate", None) == "55P03":
        return sentence("postgres_lock_timeout", lock_timeout=lock_timeout, **said)
    if (
        isinstance(error, exc.OperationalError)
        and getattr(orig, "sqlstate", None) is None
        and traits_of(url.get_dialect().name).is_a_server
    ):
        return sentence("server_unreachable", **said)
    return None


# SQLite's primary result codes (https://www.sqlite.org/rescode.html) by name; an extended code's low byte is its
# primary one (SQLITE_READONLY_DBMOVED is SQLITE_READONLY)
SQLITE_PRIMARY = {
    5: "SQLITE_BUSY",
    6: "SQLITE_LOCKED",
    8: "SQLITE_READONLY",
    11: "SQLITE_CORRUPT",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    26: "SQLITE_NOTADB",
}
# MariaDB/MySQL error numbers (PyMySQL's constants.ER): --read-only; a table, column or global privilege missing
ER_OPTION_PREVENTS_STATEMENT = ER.OPTION_PREVENTS_STATEMENT
NO_PRIVILEGE = (ER.TABLEACCESS_DENIED_ERROR, ER.COLUMNACCESS_DENIED_ERROR, ER.SPECIFIC_ACCESS_DENIED_ERROR)
ONLINE_ALTER_REFUSED = (1845, 1846)  # ER_ALTER_OPERATION_NOT_SUPPORTED(_REASON): newer than PyMySQL's ER


def sqlite_error(orig: BaseException) -> str | None:
    """The primary SQLite result code of a ``sqlite3.Error`` by name (``SQLITE_BUSY``), from the code the driver
    carries (``sqlite_errorcode``), never from its message; None for anything else."""
    code = getattr(orig, "sqlite_errorcode", None) if isinstance(orig, sqlite3.Error) else None
    return SQLITE_PRIMARY.get(code & 0xFF) if isinstance(code, int) else None


def mysql_error(orig: BaseException) -> int | None:
    """A MariaDB/MySQL error's number, as PyMySQL carries it (the first argument), or None."""
    args = getattr(orig, "args", ())
    return args[0] if type(orig).__module__.startswith("pymysql") and args and isinstance(args[0], int) else None


def first_line(error: Exception) -> str:
    """The first line of the driver's own message (SQLAlchemy's wrapper adds the statement and a link)."""
    orig = getattr(error, "orig", error)
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def explained_by_the_environment(error: Exception) -> bool:
    """True when ``explain`` has a sentence for ``error`` that does not depend on what the migration was doing
    (a lock, a read-only file or server, a missing privilege, a full disk): callers let it reach ``explain``."""
    if getattr(getattr(error, "orig", None), "sqlstate", None) == "57014":
        return False  # a statement_timeout midway: what it left depends on the mode (report.failed_midway)
    return explain(error, URL.create("sqlite"), busy_timeout_s=0, lock_timeout="0", table="") is not None


@contextmanager
def one_sentence_errors(
    url: URL,
    *,
    busy_timeout_s: float,
    lock_timeout: str,
    table: str,
    writes: bool = True,
    wait_hint: str | None = WAIT_HINT,
) -> Iterator[None]:
    """Turn a failure an operator can act on into a CommandError of one sentence naming ``table``; bugs keep their
    traceback. ``writes=False`` for read-only commands, which have nothing to leave unchanged; ``wait_hint=None``
    for commands that take no ``-x busy_timeout``."""
    started = time.monotonic()
    try:
        yield
    except CommandError:
        raise
    except Exception as error:
        if not writes:
            leaves = None
        elif not traits_of(url.get_dialect().name).ddl_rolls_back:  # DDL already run has committed itself
            leaves = MARIADB_DDL_STAYS
        else:
            leaves = NOTHING_CHANGED
        message = explain(
            error,
            url,
            busy_timeout_s=busy_timeout_s,
            lock_timeout=lock_timeout,
            wait_hint=wait_hint,
            waited_s=time.monotonic() - started,
            leaves=leaves,
            table=table,
        )
        if message is None:
            raise
        raise CommandError(message) from None
