"""What a BUILD-144 run tells the operator: the report read from the table as it now is, and a failure midway.

The report counts, in the migration's own transaction after the change, what the table holds (never what a
statement meant to do): rows, exact splits, total-only rows, the sum of total_tokens, and the rows whose usage
was lost before this migration; and, when the operator's triggers ran on the backfill's UPDATEs, how often.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic.util import CommandError

from autopack.migrations.backfill_rule import lost_usage_warning, survey, undated_warning
from autopack.migrations.errors import explained_by_the_environment, first_line
from autopack.migrations.interrupts import MARIADB_RUNS_ON, Interrupted, signal_name
from autopack.migrations.plan import Plan
from autopack.migrations.usage_table import TABLE

log = logging.getLogger("alembic.build144")


def report(bind: sa.Connection, filled: int, hooks: list[tuple[str, bool]]) -> None:
    stats = bind.execute(survey(dialect=bind.dialect.name)).one()
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
    if getattr(error.orig, "sqlstate", None) == "57014":
        cause = (
            "a statement_timeout (the database's, the role's or -x statement_timeout) cancelled the backfill: give "
            "the migration more time with -x statement_timeout=2h (the default mode rewrites the table in one "
            "statement), or pass a smaller -x batch_rows where it runs batches"
        )
    elif hooks:
        names = ", ".join(name for name, _ in hooks)
        cause = f"{names} on {TABLE} run on each UPDATE and likely caused it: fix or disable them for the migration"
    else:
        cause = "fix the cause the database names"
    after = what_a_failure_leaves(plan, step)
    return f"The BUILD-144 {step} failed while changing {TABLE} ({first_line(error)}): {cause}, then re-run; {after}."


def what_a_failure_leaves(plan: Plan, step: str) -> str:
    """Nothing (one transaction), the schema change (MariaDB), or a resumable run (online)."""
    if plan.online and step == "upgrade":
        return (
            "the revision stays 0001 and re-running the same command resumes (once the schema change committed, "
            "the fill trigger stays meanwhile, so rows old code writes get their totals)"
        )
    if plan.online:
        return "the revision stays 0002, rows set aside so far stay set aside, and re-running the same command finishes"
    if plan.dialect in ("mysql", "mariadb"):
        return "the schema change stays (MariaDB commits DDL at once) and re-running the same command finishes"
    return "nothing was changed"


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
        running = f" ({MARIADB_RUNS_ON})" if plan.dialect in ("mysql", "mariadb") else ""
        after = what_a_failure_leaves(plan, step)
        raise Interrupted(f"Stopped on {signal_name(interrupt)} while changing {TABLE}{running}: {after}.") from None
