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
from sqlalchemy import exc
from sqlalchemy.engine import URL

WAIT_HINT = "-x busy_timeout=SECONDS to wait longer"
LOCK_HOLDERS = (
    "stop the API server (uvicorn autopack.main:app), any autonomous executor and any database viewer "
    "(DB Browser, sqlite3 CLI), then re-run"
)

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
) -> str | None:
    """One sentence for a failure an operator can act on, or None for a bug (which keeps its traceback).
    ``wait_hint``: how this command waits longer for a lock, or None when it takes no such option."""
    orig = getattr(error, "orig", error)
    text = first_line(error)
    where = shown(url)
    if isinstance(orig, sqlite3.OperationalError) and "locked" in text:
        return (
            f"The database {where} is locked by another process (waited {waited_s or busy_timeout_s:.1f}s"
            f"{', ' + wait_hint if wait_hint else ''}): {LOCK_HOLDERS}; nothing was changed."
        )
    if isinstance(orig, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "corrupt" in text
    ):
        return f"{where} is not a SQLite database or is corrupt ({text}); nothing was changed."
    if isinstance(orig, sqlite3.OperationalError) and "disk is full" in text:
        return (
            f"The disk holding {where} is full: the rebuild needs free space about the size of llm_usage_events; "
            "free some and re-run; nothing was changed."
        )
    if isinstance(orig, sqlite3.OperationalError) and "readonly" in text:
        return (
            f"{where} cannot be written ({text}): the file, its directory (SQLite writes a journal beside it) or "
            "the mount is read-only for this user; run as the user that owns it; nothing was changed."
        )
    if getattr(orig, "sqlstate", None) == "25006" or "--read-only" in text:
        return (
            f"{where} accepts no writes ({text}): it is a hot standby or the connection is read-only "
            "(default_transaction_read_only); run the migration against the primary; nothing was changed."
        )
    if getattr(orig, "sqlstate", None) == "42501" and "row-level security" in text:
        return (
            f"llm_usage_events on {where} has row-level security that would hide rows from this role ({text}): "
            "every row must be seen, so run as a role with BYPASSRLS (ALTER ROLE … BYPASSRLS) or a superuser; "
            "nothing was changed."
        )
    if getattr(orig, "sqlstate", None) == "42501" or (orig.args[:1] and orig.args[0] in (1142, 1143, 1227)):
        return (
            f"The role connected to {where} lacks a privilege the migration needs ({text}): connect as the owner "
            "of llm_usage_events (ALTER, CREATE, UPDATE); nothing was changed."
        )
    if isinstance(orig, sqlite3.OperationalError) and "unable to open" in text:
        return (
            f"Cannot open {where} ({text}): check DATABASE_URL and the permissions of the file and of its directory "
            "(SQLite writes a journal beside the file); nothing was changed."
        )
    if orig.args[:1] in ((1845,), (1846,)):  # MariaDB: ALGORITHM= / LOCK= not supported for this ALTER
        return (
            f"{where} cannot change llm_usage_events with ALGORITHM=INPLACE, LOCK=NONE ({text}): run without "
            "-x online=true, in a maintenance window; nothing was changed."
        )
    if orig.args[:1] == (1205,):  # MariaDB/MySQL lock_wait_timeout
        return (
            f"Could not lock llm_usage_events on {where} within lock_timeout={lock_timeout}: another session "
            "holds it (SHOW PROCESSLIST); retry when it ends, or pass -x lock_timeout=30s; nothing was changed."
        )
    if getattr(orig, "sqlstate", None) == "57014":  # midway, report.failed_midway says it with what is left
        more = "-x statement_timeout=2h, or raise" if wait_hint else "raise"  # verify and finish-online take no -x
        return (
            f"A statement_timeout cancelled the command on {where} ({text}): give it more time with {more} the "
            "role's or the database's setting; nothing was changed."
        )
    if getattr(orig, "sqlstate", None) == "55P03":
        return (
            f"Could not lock llm_usage_events on {where} within lock_timeout={lock_timeout}: another "
            "session holds it (see pg_stat_activity); retry when it ends, or pass -x lock_timeout=30s; "
            "nothing was changed."
        )
    if (
        isinstance(error, exc.OperationalError)
        and getattr(orig, "sqlstate", None) is None
        and (url.get_backend_name() != "sqlite")
    ):
        return f"Cannot connect to {where}: {text}."
    return None


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
    return explain(error, URL.create("sqlite"), busy_timeout_s=0, lock_timeout="0") is not None


@contextmanager
def one_sentence_errors(
    url: URL, *, busy_timeout_s: float, lock_timeout: str, writes: bool = True, wait_hint: str | None = WAIT_HINT
) -> Iterator[None]:
    """Turn a failure an operator can act on into a CommandError of one sentence; bugs keep their traceback.
    ``writes=False`` for read-only commands, which have nothing to leave unchanged; ``wait_hint=None`` for
    commands that take no ``-x busy_timeout``."""
    started = time.monotonic()
    try:
        yield
    except CommandError:
        raise
    except Exception as error:
        message = explain(
            error,
            url,
            busy_timeout_s=busy_timeout_s,
            lock_timeout=lock_timeout,
            wait_hint=wait_hint,
            waited_s=time.monotonic() - started,
        )
        if message is None:
            raise
        if not writes:
            message = message.replace("; nothing was changed.", ".")
        elif url.get_backend_name() in ("mysql", "mariadb"):  # DDL already run has committed itself
            message = message.replace(
                "; nothing was changed.",
                "; a schema change already made stays (MariaDB commits DDL at once) and re-running finishes the job.",
            )
        raise CommandError(message) from None
