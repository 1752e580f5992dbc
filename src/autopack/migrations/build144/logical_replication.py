"""Logical replication around ``llm_usage_events`` (PostgreSQL): which publications send it, which subscriptions
receive it, and the order in which publisher and subscribers must be migrated.

Why the order matters (measured on a publisher and a subscriber cluster, ``tests/test_logical_replication.py``).
A subscriber's table must have every column its publisher sends: an apply worker that meets a change carrying a
column its table lacks stops the whole subscription ("logical replication target relation … is missing
replicated column: total_tokens") and retries for ever; a table with a column the publisher does not send is
fine (the column takes its default). So BUILD-144 goes on subscribers first (they get ``total_tokens`` before the
publisher sends it) and comes off the publisher first (it stops sending ``total_tokens`` before subscribers drop
it). ``FOR ALL TABLES`` (and ``FOR TABLES IN SCHEMA``) publications also send tables created later, so the rows a
downgrade sets aside reach subscribers, which stop on a table they lack ("… does not exist"); and a published
table without a replica identity refuses DELETE. Apply workers run with ``session_replication_role = replica``,
where ordinary triggers do not fire: the online fill trigger is ``ENABLE ALWAYS`` (``fill_trigger``) so that it
fills the rows an old publisher sends a subscriber too.

Everything here reads catalogs only; what cannot be read (a role without the rights) counts as nothing found.
"""

import logging

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from autopack.migrations.build144 import engines
from autopack.migrations.build144.engines.postgresql import FAMILY as PG_FAMILY
from autopack.migrations.build144.holdover import HOLDOVER
from autopack.migrations.build144.plan import Plan
from autopack.migrations.build144.usage_table import FILL_TRIGGER, TABLE

log = logging.getLogger("alembic.build144")

# publications that send any change of the table, a partition or a child (pg_publication_tables expands FOR ALL
# TABLES and FOR TABLES IN SCHEMA)
PG_PUBLICATIONS = f"""{PG_FAMILY}
SELECT DISTINCT pt.pubname FROM pg_publication_tables pt
JOIN family f ON f.relid = CAST(CAST(format('%I.%I', pt.schemaname, pt.tablename) AS regclass) AS oid)
ORDER BY 1
"""
# publications that would send the set-aside table's rows: every table, the schema it is created in, or the table
# itself if it is there already
PG_PUBLISHING_NEW_TABLES = """
SELECT p.pubname FROM pg_publication p WHERE p.puballtables AND (p.pubinsert OR p.pubdelete)
UNION
SELECT pt.pubname FROM pg_publication_tables pt WHERE pt.tablename = :holdover AND pt.schemaname = current_schema()
"""
PG_SCHEMA_PUBLICATIONS = """
SELECT p.pubname FROM pg_publication p JOIN pg_publication_namespace pn ON pn.pnpubid = p.oid
WHERE pn.pnnspid = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) AND (p.pubinsert OR p.pubdelete)
"""
# where subscribers read this database from: logical slots of the plugin subscriptions use (a disabled subscription
# keeps its slot); a publication no slot reads has no subscriber that could stop
PG_SLOTS = """
SELECT slot_name FROM pg_replication_slots
WHERE slot_type = 'logical' AND plugin = 'pgoutput' AND database = current_database()
ORDER BY 1
"""
# subscriptions of this database that apply changes to the table (or a partition or child of it)
PG_SUBSCRIPTIONS = f"""{PG_FAMILY}
SELECT DISTINCT s.subname FROM pg_subscription s JOIN pg_subscription_rel sr ON sr.srsubid = s.oid
JOIN family f ON f.relid = sr.srrelid
WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY 1
"""


def _names(bind: sa.Connection, sql: str, **parameters: str) -> list[str]:
    """The names a catalog query returns; none when this role may not read the catalog."""
    if not engines.of(bind).LOGICAL_REPLICATION:
        return []
    try:
        with bind.begin_nested():
            return list(bind.execute(sa.text(sql), {"table": TABLE, **parameters}).scalars().all())
    except DBAPIError:
        return []


def publications(bind: sa.Connection) -> list[str]:
    """The publications that send changes of the table to their subscribers."""
    return _names(bind, PG_PUBLICATIONS)


def publications_of_new_tables(bind: sa.Connection) -> list[str]:
    """The publications that would send the set-aside table's rows (FOR ALL TABLES, TABLES IN SCHEMA)."""
    found = set(_names(bind, PG_PUBLISHING_NEW_TABLES, holdover=HOLDOVER))
    if engines.of(bind).LOGICAL_REPLICATION and bind.dialect.server_version_info >= (15,):  # TABLES IN SCHEMA
        found.update(_names(bind, PG_SCHEMA_PUBLICATIONS))
    return sorted(found)


def read_by_subscribers(bind: sa.Connection, publications: list[str]) -> str | None:
    """The publications, with the replication slots subscribers read this database through, or None when no
    subscriber reads it (no publication, or no slot)."""
    slots = _names(bind, PG_SLOTS) if publications else []
    if not slots:
        return None
    return f"{', '.join(publications)} (logical replication slot{'s' if len(slots) > 1 else ''} {', '.join(slots)})"


def subscriptions(bind: sa.Connection) -> list[str]:
    """The subscriptions of this database that apply changes to the table."""
    return _names(bind, PG_SUBSCRIPTIONS)


def say_the_order(bind: sa.Connection, plan: Plan, direction: str) -> None:
    """Log, once the checks before any change have passed, which side of logical replication this database is and
    the order that keeps replication applying."""
    published, subscribed = publications(bind), subscriptions(bind)
    if published:
        step = (
            "upgraded after its subscribers (confirmed by -x subscribers_upgraded=true): they hold total_tokens "
            "already, so the changes this upgrade sends carry a column they have"
            if direction == "upgrade" and plan.add_total and plan.options.subscribers_upgraded
            else "read by no replication slot now, so no subscriber stops; a subscriber added later must have "
            "total_tokens in its table before it subscribes"
            if direction == "upgrade" and plan.add_total
            else "sending total_tokens already: every subscriber must have it"
            if direction == "upgrade"
            else "downgraded before its subscribers: they keep total_tokens (its default fills the rows this "
            "publisher now sends without it); downgrade each subscriber after this"
        )
        log.info(
            "      logical replication: %s is published by %s; this publisher is %s", TABLE, ", ".join(published), step
        )
    if subscribed:
        step = (
            "upgraded before its publisher: the publisher may send total_tokens once every subscriber is upgraded"
            if direction == "upgrade"
            else "downgraded after its publisher (confirmed by -x publisher_downgraded=true)"
        )
        log.info(
            "      logical replication: %s receives subscription %s; this subscriber is %s",
            TABLE,
            ", ".join(subscribed),
            step,
        )
        if direction == "upgrade":
            log.info("      %s", what_fills_replicated_rows(plan.online))


def what_fills_replicated_rows(online: bool) -> str:
    """On a subscriber upgraded before its publisher: what gives the rows the old publisher sends their total."""
    if online:
        return (
            f"the fill trigger {FILL_TRIGGER} is ENABLE ALWAYS, so it fires for the rows the subscription applies "
            "(apply workers run with session_replication_role = replica) and fills the totals the pre-BUILD-144 "
            "publisher does not send; run 'python -m autopack finish-online' here only after the publisher is upgraded"
        )
    return (
        "rows the pre-BUILD-144 publisher sends arrive with total_tokens 0 (no fill trigger in the default mode) "
        "until the publisher's own upgrade, whose backfill UPDATEs send their totals; or upgrade this subscriber "
        "with -x online=true, whose fill trigger fills them as they arrive"
    )


def verify_warnings(connection: sa.Connection) -> list[str]:
    """``verify``'s warnings about logical replication; reads catalogs only, never fails for want of rights."""
    warnings = []
    published = publications(connection)
    if published:
        warnings.append(
            f"{TABLE} is published ({', '.join(published)}): every subscriber's {TABLE} must have total_tokens "
            "(upgrade subscribers before the publisher; downgrade the publisher before its subscribers), or the "
            "subscription stops applying"
        )
    if subscriptions(connection) and _names(connection, PG_FILL_TRIGGER_NOT_ALWAYS):
        warnings.append(
            f"the fill trigger {FILL_TRIGGER} on this subscriber does not fire for replicated rows (it is not ENABLE "
            f"ALWAYS): run 'ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {FILL_TRIGGER}', or 'python -m autopack "
            "finish-online' once the publisher is upgraded"
        )
    return warnings


PG_FILL_TRIGGER_NOT_ALWAYS = f"""
SELECT tgname FROM pg_trigger
WHERE tgrelid = CAST(:table AS regclass) AND tgname = '{FILL_TRIGGER}' AND tgenabled <> 'A'
"""
