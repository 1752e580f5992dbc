"""The online modes' fill trigger: the backfill rule applied to each row that code not knowing ``total_tokens``
writes, from the online schema change until ``python -m autopack finish-online``.

Why it outlives the upgrade (expand/contract, like pgroll's ``start`` … ``complete``). An online upgrade runs
while the application does, and application instances still running pre-BUILD-144 code keep inserting rows
with total 0 (the column's DEFAULT) and updating splits without their total, after the revision is stamped as
well as before. The trigger gives each such row its total as it is written. It is harmless to BUILD-144 code: a
total-only row has no split (the rule leaves it alone) and an exact-split row already carries its sum. When no
old instance is left, ``finish-online`` drops it and fills any total still missing; a downgrade drops it first
(its column goes). PostgreSQL: one PL/pgSQL function and one BEFORE INSERT OR UPDATE trigger; MariaDB (no
``INSERT OR UPDATE`` trigger): two BEFORE triggers, one statement each.

On PostgreSQL it is ``ENABLE ALWAYS``: a logical-replication apply worker runs with ``session_replication_role =
replica``, where an ordinary trigger does not fire, so on a subscriber upgraded before its publisher the rows the
pre-BUILD-144 publisher sends would keep total 0 (``logical_replication``). An ALWAYS trigger fires there too, and in
any session a loading tool sets to ``replica``; the rule it applies is the same.
"""

import sqlalchemy as sa

from autopack.migrations.build144 import engines
from autopack.migrations.build144.usage_table import EARLIER_FILL_TRIGGER, FILL_TRIGGER, TABLE

MARIADB_TRIGGERS = (f"{FILL_TRIGGER}_on_insert", f"{FILL_TRIGGER}_on_update")
# every name the trigger has had, per engine: each is recognised as ours, dropped, and never an operator's object
PG_NAMES = (FILL_TRIGGER, EARLIER_FILL_TRIGGER)
EARLIER_MARIADB_TRIGGERS = (f"{EARLIER_FILL_TRIGGER}_on_insert", f"{EARLIER_FILL_TRIGGER}_on_update")
MARIADB_NAMES = (*MARIADB_TRIGGERS, *EARLIER_MARIADB_TRIGGERS)
PG_DROP_TRIGGERS = [f"DROP TRIGGER IF EXISTS {name} ON {TABLE}" for name in PG_NAMES]

# the backfill rule (backfill_rule.new_total) for one row: a split is set and the writer left the total as it was
PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {FILL_TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- writes by code that does not know total_tokens (it stays 0, or unchanged on UPDATE) get the sum
    IF (NEW.prompt_tokens IS NOT NULL OR NEW.completion_tokens IS NOT NULL)
       AND ((TG_OP = 'INSERT' AND NEW.total_tokens = 0)
            OR (TG_OP = 'UPDATE' AND NEW.total_tokens = OLD.total_tokens
                AND (NEW.prompt_tokens IS DISTINCT FROM OLD.prompt_tokens
                     OR NEW.completion_tokens IS DISTINCT FROM OLD.completion_tokens))) THEN
        NEW.total_tokens := COALESCE(NEW.prompt_tokens, 0) + COALESCE(NEW.completion_tokens, 0);
    END IF;
    RETURN NEW;
END $$
"""
MARIADB_SUM = "COALESCE(NEW.prompt_tokens, 0) + COALESCE(NEW.completion_tokens, 0)"
MARIADB_SPLIT_SET = "(NEW.prompt_tokens IS NOT NULL OR NEW.completion_tokens IS NOT NULL)"
MARIADB_SPLITS_CHANGED = (
    "NOT (NEW.prompt_tokens <=> OLD.prompt_tokens AND NEW.completion_tokens <=> OLD.completion_tokens)"
)
MARIADB_CONDITIONS = {
    "INSERT": f"NEW.total_tokens = 0 AND {MARIADB_SPLIT_SET}",
    "UPDATE": f"NEW.total_tokens = OLD.total_tokens AND {MARIADB_SPLITS_CHANGED} AND {MARIADB_SPLIT_SET}",
}


def drop(bind: sa.Connection) -> None:
    """Drop it (if there) in the caller's transaction: a downgrade, or a default-mode run after an online one."""
    for statement in engines.of(bind).fill_trigger_drop_statements():
        bind.exec_driver_sql(statement)


def installed(bind: sa.Connection) -> bool:
    """Whether an online upgrade's fill trigger is on the table (``finish-online`` not run yet)."""
    return engines.of(bind).fill_trigger_installed(bind)
