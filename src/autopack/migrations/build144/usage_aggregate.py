"""BUILD-144's downgrade drops the dashboard's hourly aggregate first (``autopack.usage_hourly``): its triggers read
``total_tokens``, which the downgrade drops, so pre-BUILD-144 writers would fail on them. After a later
``upgrade head``, ``autopack usage-aggregate create`` makes it again; until then the dashboard reads the events."""

import logging
import re

import sqlalchemy as sa
from alembic import op

from autopack import usage_hourly

log = logging.getLogger("alembic.build144")
TRIGGERS = re.compile(rf"\b({'|'.join(usage_hourly.TRIGGERS.values())})\b")  # its triggers, in a description


def drop_usage_aggregate(bind: sa.Connection) -> None:
    if not usage_hourly.installed(bind):
        return
    for statement in usage_hourly.drop_ddl(bind.dialect.name):
        bind.exec_driver_sql(statement)
    log.info(
        f"Dropped the dashboard's {usage_hourly.TABLE} and its triggers (they read total_tokens); after 'upgrade "
        "head', 'autopack usage-aggregate create' makes it again"
    )


def drop_usage_aggregate_in_script(dialect: str) -> None:
    """The same in an offline script: every statement is IF EXISTS, so it runs whether or not there is one."""
    for statement in usage_hourly.drop_ddl(dialect):
        # derived data the downgrade must not leave behind (its triggers read total_tokens): squawk's warning
        # about clients of a dropped table or function does not apply
        rule = "ban-drop-table" if statement.startswith("DROP TABLE") else "ban-drop-function"
        op.execute(f"-- squawk-ignore {rule}\n{statement}" if "TRIGGER" not in statement else statement)
