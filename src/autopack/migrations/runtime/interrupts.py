"""Ctrl-C (SIGINT) or SIGTERM anywhere in a run: one sentence saying what the run leaves, never a traceback.

The online backfill stops between batches by itself (``throttle``). Anywhere else a signal stops the run where it
is: the driver cancels the statement running (PostgreSQL) or drops the connection, the migration's open
transaction rolls back, and what was committed before stays (MariaDB's DDL, the online mode's committed steps).
SIGTERM, which would end the process silently, takes the same path as Ctrl-C. On MariaDB a statement the server
was running when the client went away runs on until it ends (``SHOW PROCESSLIST``): the sentence says so.
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from alembic.util import CommandError

from autopack.migrations.runtime.messages import sentence


class Interrupted(CommandError):
    """A stop whose sentence was written where the run knew what it leaves (``report.failures_in_one_sentence``)."""


def signal_name(interrupt: KeyboardInterrupt) -> str:
    """The signal behind a KeyboardInterrupt: SIGTERM and a second signal carry their name, Ctrl-C none."""
    return str(interrupt) if interrupt.args else "Ctrl-C (SIGINT)"


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception it was raised while handling (a rollback that failed after Ctrl-C, say)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


@contextmanager
def interrupts_in_one_sentence(leaves: str, owns_the_process: bool = True) -> Iterator[None]:
    """Around a whole run: SIGTERM raised as KeyboardInterrupt; a stop becomes ``CommandError`` (Alembic's one
    ``FAILED:`` line, a non-zero exit status), with the revision's own sentence when it wrote one, else ``leaves``.

    Inside an application (``init_db``, ``owns_the_process=False``) the application's signal handling is left
    alone and a stop stays a ``KeyboardInterrupt`` (with the same sentence), which start-up code catching
    ``Exception`` does not swallow; Python only lets the main thread set a signal handler anyway."""

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    handles_sigterm = owns_the_process and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if handles_sigterm else None
    stopped = CommandError if owns_the_process else KeyboardInterrupt
    try:
        yield
    except BaseException as error:
        chain = list(causes(error))
        written = next((e for e in chain if isinstance(e, Interrupted)), None)
        if written is not None:
            raise stopped(str(written)) from None
        interrupt = next((e for e in chain if isinstance(e, KeyboardInterrupt)), None)
        if interrupt is None:
            raise
        raise stopped(sentence("stopped", signal=signal_name(interrupt), what_is_left=leaves)) from None
    finally:
        if handles_sigterm:
            signal.signal(signal.SIGTERM, previous)
