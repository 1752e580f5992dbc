"""What a BUILD-144 run tells the operator: the report read from the table as it now is, and a failure midway.

The report counts, in the migration's own transaction after the change, what the table holds (never what a
statement meant to do): rows, exact splits, total-only rows, the sum of total_tokens, and the rows whose usage
was lost before this migration; and, when the operator's triggers ran on the backfill's UPDATEs, how often. In the
default mode the same scan is the proof that no row still needs its total.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic.util import CommandError

from autopack.migrations.build144 import engines
from autopack.migrations.build144.backfill_rule import kept_survey, lost_usage_warning, survey, undated_warning
from autopack.migrations.build144.batched_backfill import prove_backfilled
from autopack.migrations.build144.messages import MARIADB_RUNS_ON, sentence
from autopack.migrations.build144.plan import Plan
from autopack.migrations.build144.usage_table import TABLE
from autopack.migrations.runtime.errors import explained_by_the_environment, first_line
from autopack.migrations.runtime.interrupts import Interrupted, signal_name

log = logging.getLogger("alembic.build144")


def report(bind: sa.Connection, filled: int, hooks: list[tuple[str, bool]], proving: str | None = None) -> None:
    """The report's one scan; ``proving`` (what a failure leaves), the same scan proves no row still needs its total
    (``prove_backfilled``), refusing before the report is said and the revision stamped."""
    kept = kept_survey(bind) if proving is not None else None  # made after the last change to the rows
    stats = kept or bind.execute(survey(dialect=bind.dialect.name, proving=proving is not None)).one()
    if proving is not None:
        prove_backfilled(bind, after=proving, counted=stats.left)
    log.info(
        "[3/3] Verification: total rows %d, exact splits %d, total-only (NULL splits) %d, sum of total_tokens %d",
        stats.rows,
        stats.exact,
        stats.total_only,
        stats.token_sum,
    )
    row_hooks = [name for name, per_row in hooks if per_row]
    if row_hooks and filled:
        log.info(
            "      the backfill's UPDATEs fired %s %d times each (%d firings): what they write (audit rows, say) "
            "was written that often",
            ", ".join(row_hooks),
            filled,
            filled * len(row_hooks),
        )
    if stats.lost:
        log.warning(lost_usage_warning(stats.lost))
    if stats.undated:
        log.warning(undated_warning(stats.undated))


def failed_midway(error: sa.exc.DBAPIError, hooks: list[tuple[str, bool]], plan: Plan, step: str) -> str:
    """One sentence for a database error after the change started, naming what on the table likely caused it,
    and what the failure left: nothing (one transaction), the schema change (MariaDB), or a resumable run."""
    said = {"step": step, "table": TABLE, "error": first_line(error), "after": what_a_failure_leaves(plan, step)}
    if getattr(error.orig, "sqlstate", None) == "57014":
        return sentence("failed_midway_statement_timeout", **said)
    if hooks:
        return sentence("failed_midway_in_hooks", hooks=", ".join(name for name, _ in hooks), **said)
    return sentence("failed_midway", **said)


def what_a_failure_leaves(plan: Plan, step: str) -> str:
    """Nothing (one transaction), the schema change (MariaDB), or a resumable run (online): the engine's words."""
    return engines.named(plan.dialect).failure_leaves(plan, step)


@contextmanager
def failures_in_one_sentence(plan: Plan, hooks: list[tuple[str, bool]], step: str) -> Iterator[None]:
    """A database error once the change started: one sentence (``failed_midway``); a lock, a read-only file or a
    privilege is left to env.py, which says it best. Ctrl-C or SIGTERM: what the stop leaves, in the same words
    (``interrupts`` turns it into Alembic's one line)."""
    try:
        yield
    except sa.exc.DBAPIError as error:
        if explained_by_the_environment(error):
            raise
        raise CommandError(failed_midway(error, hooks, plan, step)) from None
    except KeyboardInterrupt as interrupt:
        running = f" ({MARIADB_RUNS_ON})" if not engines.named(plan.dialect).TRANSACTIONAL_DDL else ""
        after = what_a_failure_leaves(plan, step)
        said = sentence(
            "stopped_while_changing", signal=signal_name(interrupt), table=TABLE, running=running, after=after
        )
        raise Interrupted(said) from None
