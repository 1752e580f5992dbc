"""BUILD-144 under logical replication, on a publisher and a subscriber cluster this test starts itself (initdb as the
postgres OS user, ``wal_level = logical``): the publisher's upgrade waits for its subscribers, a subscriber's
downgrade for its publisher, a FOR ALL TABLES publisher sets rows aside without stopping its subscribers and takes
them back, and a subscriber's online fill trigger fills what an old publisher sends. Replication keeps applying
throughout: every row written on the publisher arrives on the subscriber with its total."""

import os
import re
from collections.abc import Iterator

import pytest
from logical_clusters import publisher_and_subscriber, subscribe, wait_until
from replica_cluster import unavailable
from sqlalchemy.engine import URL

from support import (
    POSTGRES_BACKENDS,
    alembic,
    columns_of,
    current,
    execute,
    fails,
    finish_online,
    scalar,
    token_rows,
    verify,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
OLD_WRITER = (  # pre-BUILD-144 code: splits only
    "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at, "
    "is_doctor_call) VALUES ('openai', 'gpt-4o', 'builder', {prompt}, {completion}, '2025-12-01 10:00', false)"
)
TOTAL_ONLY = (  # BUILD-144 code: a provider that reports only a total
    "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at, is_doctor_call) "
    "VALUES ('google', 'gemini-2.5-pro', 'builder', {total}, '2025-12-01 11:00', false)"
)
EXACT = (  # BUILD-144 code: an exact split and its total
    "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, total_tokens, created_at, "
    "is_doctor_call) VALUES ('anthropic', 'claude', 'builder', {prompt}, {completion}, {total}, '2025-12-01 12:00', "
    "false)"
)
APPLY_ERRORS = "SELECT COALESCE(SUM(apply_error_count), 0) FROM pg_stat_subscription_stats"


@pytest.fixture
def clusters() -> Iterator[tuple[URL, URL]]:
    reason = unavailable()
    if reason is not None:
        reason = reason.replace("a streaming replica", "a publisher and a subscriber cluster")
        if IN_CI:
            pytest.fail(f"required in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    with publisher_and_subscriber() as (publisher, subscriber, _logs):
        yield publisher, subscriber


def replicated(publisher: URL, subscriber: URL, publication: str = "FOR TABLE llm_usage_events") -> None:
    """Both at the pre-BUILD-144 baseline, two old rows on the publisher, a publication and a subscription copying
    them. A FOR ALL TABLES subscriber starts with an empty alembic_version, as a schema-only dump leaves it (the
    publication sends that table too)."""
    for url in (publisher, subscriber):
        alembic(url, "upgrade", "0001")
    if "ALL TABLES" in publication:
        execute(subscriber, "DELETE FROM alembic_version")
    execute(publisher, OLD_WRITER.format(prompt=100, completion=20), OLD_WRITER.format(prompt=7, completion=3))
    execute(publisher, f"CREATE PUBLICATION usage_pub {publication}")
    subscribe(publisher, subscriber)
    arrives(publisher, subscriber)


def arrives(publisher: URL, subscriber: URL) -> None:
    """The subscriber holds what the publisher holds (the token columns both have), with no apply error."""
    wait_until(lambda: same_rows(publisher, subscriber), 30)
    assert scalar(subscriber, APPLY_ERRORS) == 0


def same_rows(publisher: URL, subscriber: URL) -> bool:
    sent = token_rows(publisher)
    received = token_rows(subscriber)
    width = min(len(next(iter(sent.values()), ())), len(next(iter(received.values()), ())))
    return {i: row[:width] for i, row in sent.items()} == {i: row[:width] for i, row in received.items()}


def test_the_publisher_is_upgraded_after_its_subscribers_and_downgraded_before_them(clusters):
    publisher, subscriber = clusters
    replicated(publisher, subscriber)

    refused = fails(publisher, "upgrade", "head")
    assert refused.startswith(
        "llm_usage_events is published by usage_pub (logical replication slot usage_sub) and this upgrade adds "
        "total_tokens"
    ), refused
    assert "upgrade every subscriber's database first, then re-run here with -x subscribers_upgraded=true" in refused
    assert refused.endswith("nothing was changed.") and current(publisher) == "0001"
    assert "total_tokens" not in columns_of(publisher)

    up = alembic(subscriber, "upgrade", "head")  # 1. subscribers first
    assert "receives subscription usage_sub; this subscriber is upgraded before its publisher" in up.stderr, up.stderr
    execute(publisher, OLD_WRITER.format(prompt=40, completion=2))
    arrives(publisher, subscriber)  # the old publisher's rows apply: total_tokens takes its default

    up = alembic(publisher, "-x", "subscribers_upgraded=true", "upgrade", "head")  # 2. then the publisher
    assert "this publisher is upgraded after its subscribers" in up.stderr, up.stderr
    execute(publisher, EXACT.format(prompt=10, completion=20, total=30), TOTAL_ONLY.format(total=999))
    arrives(publisher, subscriber)
    assert (
        token_rows(subscriber)
        == token_rows(publisher)
        == {
            1: (100, 20, 120),
            2: (7, 3, 10),
            3: (40, 2, 42),  # written with total 0 before the publisher's upgrade; its backfill sent the total
            4: (10, 20, 30),
            5: (None, None, 999),
        }
    )
    checked = verify(publisher)
    assert checked.returncode == 0 and "llm_usage_events is published (usage_pub)" in checked.stdout, checked.stdout

    refused = fails(subscriber, "downgrade", "-1")  # on the way down the publisher goes first
    assert refused.startswith("llm_usage_events receives rows from subscription usage_sub"), refused
    assert "downgrade the publisher's database first, then re-run here with -x publisher_downgraded=true" in refused
    assert current(subscriber) == "0002 (head)"

    down = alembic(publisher, "downgrade", "-1")
    assert "this publisher is downgraded before its subscribers" in down.stderr, down.stderr
    execute(publisher, OLD_WRITER.format(prompt=5, completion=5))
    arrives(publisher, subscriber)  # the subscriber's total_tokens takes its default; nothing stops
    alembic(subscriber, "-x", "publisher_downgraded=true", "downgrade", "-1")
    execute(publisher, OLD_WRITER.format(prompt=6, completion=6))
    arrives(publisher, subscriber)
    assert token_rows(subscriber) == token_rows(publisher)


def test_a_for_all_tables_publisher_sets_rows_aside_and_takes_them_back_while_replication_applies(clusters):
    publisher, subscriber = clusters
    replicated(publisher, subscriber, "FOR ALL TABLES")
    alembic(subscriber, "upgrade", "head")
    alembic(publisher, "-x", "subscribers_upgraded=true", "upgrade", "head")
    execute(publisher, TOTAL_ONLY.format(total=999), EXACT.format(prompt=10, completion=20, total=35))
    arrives(publisher, subscriber)
    before = token_rows(publisher)

    refused = fails(publisher, "downgrade", "-1")
    assert refused.startswith("Publication usage_pub (logical replication slot usage_sub) sends every new table"), (
        refused
    )
    assert "-x holdover_on_subscribers=true" in refused and current(publisher) == "0002 (head)"
    create = re.search(r"first run (CREATE TABLE .*? WITH NO DATA), then", refused).group(1)
    execute(subscriber, create)  # as the sentence says, on each subscriber

    down = alembic(publisher, "-x", "holdover_on_subscribers=true", "downgrade", "-1")
    assert "Set aside 2 rows" in down.stderr, down.stderr
    identity = "SELECT relreplident FROM pg_class WHERE oid = 'llm_usage_events_build144_holdover'::regclass"
    assert scalar(publisher, identity) == "f"
    execute(publisher, OLD_WRITER.format(prompt=1, completion=2))
    arrives(publisher, subscriber)  # the set-aside rows did not stop the subscription
    assert current(subscriber) == "0001"  # FOR ALL TABLES sends alembic_version too: the stamp follows the publisher

    alembic(subscriber, "upgrade", "head")  # subscribers first again
    up = alembic(publisher, "-x", "subscribers_upgraded=true", "upgrade", "head")
    assert "Restored 2 of 2 rows set aside" in up.stderr, up.stderr
    execute(publisher, EXACT.format(prompt=3, completion=4, total=7))
    arrives(publisher, subscriber)
    after = token_rows(publisher)
    assert {i: after[i] for i in before} == before  # the round trip gave every row back
    assert token_rows(subscriber) == after
    assert current(subscriber) == "0002 (head)"  # the publisher's 0001 -> 0002 found no 0001 row there


def test_a_subscriber_upgraded_online_fills_the_totals_an_old_publisher_does_not_send(clusters):
    publisher, subscriber = clusters
    replicated(publisher, subscriber)

    up = alembic(subscriber, "-x", "online=true", "upgrade", "head")
    execute(
        publisher,
        OLD_WRITER.format(prompt=50, completion=5),
        "UPDATE llm_usage_events SET prompt_tokens = 200 WHERE id = 1",  # an old writer changes a split
    )
    arrives(publisher, subscriber)
    assert token_rows(subscriber) == {1: (200, 20, 220), 2: (7, 3, 10), 3: (50, 5, 55)}
    assert "is ENABLE ALWAYS, so it fires for the rows the subscription applies" in up.stderr, up.stderr

    alembic(publisher, "-x", "subscribers_upgraded=true", "upgrade", "head")
    arrives(publisher, subscriber)
    finish_online(subscriber)  # once the publisher sends totals itself
    execute(publisher, TOTAL_ONLY.format(total=77))
    arrives(publisher, subscriber)
    assert token_rows(subscriber) == token_rows(publisher)
    assert verify(subscriber).returncode == 0


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_publication_no_subscriber_reads_does_not_stop_the_upgrade(db_url):
    alembic(db_url, "upgrade", "0001")
    execute(db_url, OLD_WRITER.format(prompt=4, completion=5), "CREATE PUBLICATION idle_pub FOR ALL TABLES")
    up = alembic(db_url, "upgrade", "head")  # no replication slot: no subscriber could stop
    assert "llm_usage_events is published by idle_pub" in up.stderr, up.stderr
    assert token_rows(db_url) == {1: (4, 5, 9)}
    execute(db_url, TOTAL_ONLY.format(total=50))
    alembic(db_url, "downgrade", "-1")  # sets a row aside under FOR ALL TABLES, with no subscriber to stop
    assert token_rows(db_url) == {1: (4, 5), 2: (0, 0)}
