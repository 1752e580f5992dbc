"""The dashboard's hourly aggregate stays exact for every writer, on every engine, and its commands do what they say.

Rows are seeded at 0001 by the old model, upgraded by the real CLI (the backfill runs), the aggregate is made by
``autopack usage-aggregate create``, and then every kind of writer changes the table: the recorder (exact and
total-only), old code inserting and updating rows directly, ``repair-totals``, rows moved between hours and
providers, deletes. After each, the aggregate equals the events bucket by bucket (``verify``), and every dashboard
answer read through it equals the same answer read from the events alone, for windows starting mid-hour and on
the hour, with the pending rows folded into the buckets part of the way. Writers that put several events in one
transaction, in any order, with a fold running alongside, never deadlock (the reason the triggers append rather
than update a shared bucket row). The property test's sibling: random writers, deletes and folds, then the same
two equalities.
"""

import json
import random
import threading
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from app_client import app_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from autopack import usage_hourly
from autopack.dashboard import (
    PERIOD_DAYS,
    undated_usage,
    usage_by_model,
    usage_by_provider,
    usage_by_provider_and_model,
)
from autopack.dashboard_page import usage_breakdown
from autopack.database import make_engine
from autopack.usage_recorder import UsageEventData, record_usage
from legacy import old_model
from support import (
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    alembic,
    autopack_command,
    columns_of,
    execute,
    table_names,
    verify,
)

NOW = datetime(2026, 12, 5, 10, 30, 15, 250000)  # mid-hour
ON_THE_HOUR = datetime(2026, 12, 5, 11, 0, 0)


def answers(engine, now: datetime, through_aggregate: bool) -> dict:
    """Every dashboard answer for every period at ``now``, read through the aggregate or from the events."""
    found = {}
    with Session(engine) as db:
        db.info["has_aggregate"] = through_aggregate and usage_hourly.installed(db.connection())
        db.info["collations"] = usage_hourly.name_collations(db.connection())
        for period in PERIOD_DAYS:
            found[period] = (
                usage_by_provider(db, period, now, cap_tokens=1000),
                usage_by_model(db, period, now),
                usage_breakdown(db, period, now).model_dump(),
            )
            # the route's one statement gives the same two lists
            assert usage_by_provider_and_model(db, period, now, cap_tokens=1000) == found[period][:2]
        found["undated"] = undated_usage(db)
    return found


def assert_exact(url, engine) -> None:
    """The aggregate equals the events (``verify``'s check passes) and the dashboard reads the same through it."""
    result = verify(url)
    assert "ok    hourly usage aggregate matches the events" in result.stdout, result.stdout + result.stderr
    for now in (NOW, ON_THE_HOUR):
        through = answers(engine, now, through_aggregate=True)
        assert through == answers(engine, now, through_aggregate=False)
    assert through["month"][0], "the month holds rows: an empty answer would prove nothing"


def seeded_at_0001(url) -> None:
    """The old model's table at 0001 with rows an old Autopack wrote (splits, no total), spread over 40 days."""
    old = old_model(splits_nullable=False, total_tokens=False)
    engine = sa.create_engine(url)
    old.create_all(engine)
    rows = [
        {
            "provider": ("openai", "anthropic", "google")[i % 3],
            "model": f"m{i % 4}",
            "role": "builder",
            "prompt_tokens": 100 + i,
            "completion_tokens": 7 * i,
            "created_at": NOW - timedelta(hours=7 * i, minutes=i),
            "is_doctor_call": False,
        }
        for i in range(140)
    ]
    with engine.begin() as connection:
        connection.execute(old.tables["llm_usage_events"].insert(), rows)
    engine.dispose()
    alembic(url, "stamp", "0001")


def test_every_writer_keeps_the_aggregate_exact(db_url):
    seeded_at_0001(db_url)
    alembic(db_url, "upgrade", "head")  # the backfill fills every total
    made = autopack_command(db_url, "usage-aggregate create")
    assert made.returncode == 0, made.stderr
    assert "hourly buckets" in made.stdout
    engine = make_engine(db_url)
    assert_exact(db_url, engine)

    with Session(engine) as db:  # the recorder: exact splits and total-only, at the window's edges and inside
        for i, at in enumerate([NOW - timedelta(days=1), NOW - timedelta(days=1, microseconds=-1), NOW, ON_THE_HOUR]):
            record_usage(
                db, UsageEventData("openai", "m1", role="r", prompt_tokens=i, completion_tokens=5, created_at=at)
            )
            record_usage(db, UsageEventData("mistral", "big", role="r", total_tokens=1000 + i, created_at=at))
    assert_exact(db_url, engine)

    old_code = [  # pre-BUILD-144 code writes rows directly: splits, no total; then changes splits (stale totals)
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at, "
        "is_doctor_call) VALUES ('openai', 'm0', 'r', 11, 22, '2026-12-04 23:59:59', false)",
        "UPDATE llm_usage_events SET prompt_tokens = prompt_tokens + 1000 WHERE provider = 'google'",
    ]
    execute(db_url, *old_code)
    assert_exact(db_url, engine)
    with engine.connect() as connection:  # part of the pending rows folded into the buckets, in small batches
        assert usage_hourly.compact(connection, batch=3, once=True) == 3
    assert_exact(db_url, engine)
    repaired = autopack_command(db_url, "repair-totals")  # updates every stale total, in batches
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert_exact(db_url, engine)

    moves = [  # rows moved to another hour, provider and model; splits set to NULL (total-only); deletes
        "UPDATE llm_usage_events SET created_at = '2026-11-20 05:00:00', provider = 'anthropic' WHERE id % 9 = 0",
        "UPDATE llm_usage_events SET model = 'renamed', prompt_tokens = NULL, completion_tokens = NULL "
        "WHERE id % 7 = 1",
        "DELETE FROM llm_usage_events WHERE id % 5 = 2",
    ]
    execute(db_url, *moves)
    assert_exact(db_url, engine)
    with engine.connect() as connection:
        assert usage_hourly.pending_rows(connection) > 0
        usage_hourly.compact(connection, batch=50)
        assert usage_hourly.pending_rows(connection) == 0
    assert_exact(db_url, engine)
    engine.dispose()


@pytest.mark.parametrize("backend", [*POSTGRES_BACKENDS, *MYSQL_BACKENDS])
def test_writers_of_several_events_per_transaction_never_deadlock(db_url):
    """Eight writers, each transaction three events of random providers and hours, and a fold running alongside:
    with triggers that upserted bucket rows, 302 of 2,400 such transactions deadlocked on MariaDB, 53 on
    PostgreSQL."""
    alembic(db_url, "upgrade", "head")
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    engine = sa.create_engine(db_url, pool_size=10)
    insert = sa.text(
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, total_tokens, "
        "created_at, is_doctor_call) VALUES (:p, 'm', 'r', 1, 2, 3, :at, false)"
    )
    errors: list[str] = []
    writing = True

    def writer(seed: int) -> None:
        chosen = random.Random(seed)
        for i in range(120):
            try:
                with engine.begin() as connection:
                    for _ in range(3):
                        at = NOW - timedelta(minutes=i * 7 + chosen.randint(0, 3))
                        connection.execute(insert, {"p": chosen.choice(["a", "b"]), "at": at})
            except sa.exc.DBAPIError as error:
                errors.append(str(error.orig))

    def folder() -> None:
        while writing:
            with engine.connect() as connection:
                usage_hourly.compact(connection, batch=100)

    writers = [threading.Thread(target=writer, args=(seed,)) for seed in range(8)]
    folding = threading.Thread(target=folder)
    folding.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    writing = False
    folding.join()
    assert errors == []
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT COUNT(*) FROM llm_usage_events").scalar() == 8 * 120 * 3
        assert usage_hourly.differences(connection) == []
    engine.dispose()


def test_verify_finds_a_stale_aggregate_and_rebuild_repairs_it(db_url):
    seeded_at_0001(db_url)
    alembic(db_url, "upgrade", "head")
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    execute(
        db_url,
        "DROP TRIGGER llm_usage_hourly_on_delete"
        + (" ON llm_usage_events" if db_url.get_backend_name() == "postgresql" else ""),
    )
    execute(db_url, "DELETE FROM llm_usage_events WHERE id < 10")  # not seen by the aggregate now
    result = verify(db_url)
    assert result.returncode == 1
    assert "FAIL  hourly usage aggregate matches the events" in result.stdout
    assert "trigger llm_usage_hourly_on_delete missing or disabled" in result.stdout
    assert "buckets differ from the events" in result.stdout
    assert "run 'autopack usage-aggregate drop', then 'create'" in result.stdout
    assert autopack_command(db_url, "usage-aggregate drop").returncode == 0
    assert not set(usage_hourly.TABLES) & table_names(db_url)
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    engine = make_engine(db_url)
    assert_exact(db_url, engine)
    execute(db_url, "UPDATE llm_usage_hourly SET total_tokens = total_tokens + 1")  # the aggregate itself edited
    assert "FAIL  hourly usage aggregate matches the events" in verify(db_url).stdout
    assert autopack_command(db_url, "usage-aggregate rebuild").returncode == 0
    execute(db_url, "UPDATE llm_usage_daily SET events = events + 1 WHERE whole_day % 2 = 0")
    stale_days = verify(db_url).stdout
    assert "daily buckets differ from their hours" in stale_days and "buckets differ from the events" not in stale_days
    rebuilt = autopack_command(db_url, "usage-aggregate rebuild")
    assert rebuilt.returncode == 0 and "Refilled" in rebuilt.stdout
    assert_exact(db_url, engine)
    engine.dispose()


def test_the_downgrade_drops_the_aggregate_and_old_code_writes_after_it(db_url):
    seeded_at_0001(db_url)
    alembic(db_url, "upgrade", "head")
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    down = alembic(db_url, "downgrade", "-1")
    assert "Dropped the dashboard's llm_usage_hourly and its triggers" in down.stderr
    assert not set(usage_hourly.TABLES) & table_names(db_url)
    assert "total_tokens" not in columns_of(db_url)
    execute(  # pre-BUILD-144 code writes again: no trigger of ours is left to fail on the missing total_tokens
        db_url,
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at, "
        "is_doctor_call) VALUES ('openai', 'm0', 'r', 1, 2, '2026-12-05 10:00:00', false)",
        "UPDATE llm_usage_events SET prompt_tokens = 3 WHERE prompt_tokens = 1",
        "DELETE FROM llm_usage_events WHERE prompt_tokens = 3",
    )
    alembic(db_url, "upgrade", "head")
    assert "hourly usage aggregate" not in verify(db_url).stdout  # the dashboard reads the events meanwhile
    refused = autopack_command(db_url, "usage-aggregate rebuild")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: there is no llm_usage_hourly: 'autopack usage-aggregate create' makes it"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_aggregate_is_refused_before_build144(db_url):
    seeded_at_0001(db_url)
    refused = autopack_command(db_url, "usage-aggregate create")
    assert refused.returncode == 1
    assert "has no total_tokens (before BUILD-144): run 'autopack upgrade head' first" in refused.stderr
    assert not set(usage_hourly.TABLES) & table_names(db_url)


HOURS = 24 * 32
instants = st.builds(
    lambda hour, second: NOW - timedelta(hours=hour) + timedelta(seconds=second),
    st.integers(min_value=-2, max_value=HOURS),
    st.sampled_from([0, 1, -1, 0.000001, 1800, 3599.999999]),  # on, just after and just before an hour
)
splits = st.none() | st.integers(min_value=0, max_value=10**6)
write = st.tuples(
    st.sampled_from(["insert", "insert", "update", "move", "delete", "fold"]),
    st.sampled_from(["openai", "anthropic", "google"]),
    instants,
    splits,
    splits,
    st.integers(min_value=0, max_value=10**6),
)


@pytest.mark.parametrize("backend", ["sqlite"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(write, min_size=1, max_size=40), now=instants)
def test_random_writers_and_deletes_leave_the_aggregate_equal_to_the_events(new_database, writes, now):
    url = new_database()
    alembic(url, "upgrade", "head")
    engine = make_engine(url)
    with engine.connect() as connection:
        usage_hourly.create(connection)
    events = sa.table(
        "llm_usage_events",
        *(sa.column(n) for n in ("id", "provider", "model", "role", "prompt_tokens", "completion_tokens")),
        sa.column("total_tokens"),
        sa.column("created_at"),
        sa.column("is_doctor_call"),
    )
    with engine.connect() as connection:
        for i, (kind, provider, at, prompt, completion, total) in enumerate(writes):
            row = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
            target = events.c.id == (i * 7) % (i + 1) + 1
            if kind == "insert":
                values = {"provider": provider, "model": "m", "role": "r", "is_doctor_call": False, **row}
                connection.execute(events.insert().values(created_at=at, **values))
            elif kind == "update":
                connection.execute(events.update().where(target).values(**row))
            elif kind == "move":
                connection.execute(events.update().where(target).values(created_at=at, provider=provider))
            elif kind == "delete":
                connection.execute(events.delete().where(target))
            else:  # the dashboard's fold of pending rows, between writes
                connection.commit()
                usage_hourly.compact(connection, batch=1 + total % 5, once=True)
        connection.commit()
        assert usage_hourly.differences(connection) == []
    assert answers(engine, now, through_aggregate=True) == answers(engine, now, through_aggregate=False)
    engine.dispose()


def many_old_code_rows(url, rows: int) -> None:
    values = ", ".join(
        f"('p{i % 3}', 'm', 'r', {i}, 1, {i + 1}, '2026-12-0{1 + i % 4} 0{i % 10}:00:00', false)" for i in range(rows)
    )
    execute(
        url,
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, total_tokens, "
        f"created_at, is_doctor_call) VALUES {values}",
    )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_dashboard_folds_pending_rows_as_it_reads(db_url):
    alembic(db_url, "upgrade", "head")
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    many_old_code_rows(db_url, usage_hourly.COMPACT_AT + 1)
    engine = make_engine(db_url)
    with engine.connect() as connection:
        assert usage_hourly.pending_rows(connection) == usage_hourly.COMPACT_AT + 1
    expected = answers(engine, NOW, through_aggregate=False)
    with app_client(engine) as client:
        assert client.get("/dashboard/usage?period=month").status_code == 200
    with engine.connect() as connection:
        assert usage_hourly.pending_rows(connection) == 0
    assert answers(engine, NOW, through_aggregate=True) == expected
    engine.dispose()


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_read_only_database_is_read_exactly_without_folding(db_url):
    """A dashboard on a read-only connection (a standby, a read-only role) cannot fold: it answers exactly."""
    alembic(db_url, "upgrade", "head")
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    many_old_code_rows(db_url, usage_hourly.COMPACT_AT + 1)
    engine = make_engine(db_url)
    expected = answers(engine, NOW, through_aggregate=False)
    execute(db_url, f"ALTER DATABASE {db_url.database} SET default_transaction_read_only = on")
    engine.dispose()
    engine = make_engine(db_url)
    with app_client(engine) as client:
        assert client.get("/dashboard/usage?period=month").status_code == 200
    with engine.connect() as connection:
        assert usage_hourly.pending_rows(connection) == usage_hourly.COMPACT_AT + 1
    assert answers(engine, NOW, through_aggregate=True) == expected
    engine.dispose()


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_truncate_empties_the_aggregate_on_postgres(db_url):
    seeded_at_0001(db_url)
    alembic(db_url, "upgrade", "head")
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    execute(db_url, "TRUNCATE llm_usage_events")
    many_old_code_rows(db_url, 5)
    result = verify(db_url)
    assert "ok    hourly usage aggregate matches the events" in result.stdout, result.stdout
    engine = make_engine(db_url)
    with engine.connect() as connection:
        held = connection.exec_driver_sql("SELECT COUNT(*) FROM llm_usage_hourly").scalar()
    assert held == 0  # the 140 seeded rows' buckets went with them
    engine.dispose()


def two_cases_of_one_name(url) -> None:
    execute(
        url,
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, total_tokens, "
        "created_at, is_doctor_call) VALUES ('OpenAI', 'GPT', 'r', 1, 1, 2, '2026-12-05 07:00:00', false), "
        "('openai', 'gpt', 'r', 2, 2, 4, '2026-12-05 08:00:00', false), "
        "('OPENAI', 'Gpt', 'r', 3, 3, 6, '2026-12-05 10:10:00', false)",  # in the window's first, partial hour
    )


CASE_INSENSITIVE = {
    "postgresql": [
        "CREATE COLLATION IF NOT EXISTS ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
        "ALTER TABLE llm_usage_events ALTER provider TYPE varchar COLLATE ci, ALTER model TYPE varchar COLLATE ci",
    ],
    # a PostgreSQL built without ICU (pgserver's) has no case-insensitive collation: an explicit "C" on both
    "postgresql-without-icu": [
        'ALTER TABLE llm_usage_events ALTER provider TYPE varchar COLLATE "C", ALTER model TYPE varchar COLLATE "C"'
    ],
    "mariadb": [
        "ALTER TABLE llm_usage_events MODIFY provider varchar(64) COLLATE utf8mb4_general_ci NOT NULL, "
        "MODIFY model varchar(255) COLLATE utf8mb4_bin NOT NULL"
    ],
}


def collation_kind(url) -> str:
    """Which case-insensitive collation the server can give the names."""
    if url.get_backend_name() != "postgresql":
        return "mariadb"
    try:  # the one way to know whether the build has ICU
        execute(url, CASE_INSENSITIVE["postgresql"][0])
    except sa.exc.NotSupportedError:
        return "postgresql-without-icu"
    return "postgresql"


def test_names_group_as_the_events_collation_groups_them(db_url):
    """'OpenAI' and 'openai' are one provider where the column's collation says so (SQLite NOCASE, a PostgreSQL
    non-deterministic collation, MariaDB general_ci), and the model stays case-sensitive where its column is."""
    engine_name = db_url.get_backend_name()
    if engine_name == "sqlite":
        old = old_model(splits_nullable=False, total_tokens=False)
        for name in ("provider", "model"):
            old.tables["llm_usage_events"].c[name].type = sa.String(collation="NOCASE")
        engine = sa.create_engine(db_url)
        old.create_all(engine)
        engine.dispose()
        alembic(db_url, "stamp", "0001")
        alembic(db_url, "upgrade", "head")
    else:
        alembic(db_url, "upgrade", "head")
        execute(db_url, *CASE_INSENSITIVE[collation_kind(db_url)])
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    two_cases_of_one_name(db_url)
    engine = make_engine(db_url)
    assert_exact(db_url, engine)
    providers = answers(engine, NOW, through_aggregate=True)["week"][0]
    if collation_kind(db_url) == "postgresql-without-icu":  # case-sensitive: three providers, as the events say
        assert sorted(p["total_tokens"] for p in providers) == [2, 4, 6]
    else:
        assert [(p["provider"].lower(), p["total_tokens"], p["events"]) for p in providers] == [("openai", 12, 3)]
    engine.dispose()


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_roles_granted_only_the_events_write_and_read_through_the_aggregate(db_url):
    """The trigger runs as the aggregate's owner in the table's schema: a writer needs no grant on it and its
    search_path does not matter; the events' grants are copied, so a dashboard role reads it."""
    seeded_at_0001(db_url)
    alembic(db_url, "upgrade", "head")
    suffix = db_url.database[-12:]
    writer, reader = f"w_{suffix}", f"r_{suffix}"
    execute(
        db_url,
        f"CREATE ROLE {writer} LOGIN",
        f"CREATE ROLE {reader} LOGIN",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON llm_usage_events TO {writer}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {writer}",
        f"GRANT SELECT ON llm_usage_events TO {reader}",
    )
    try:
        assert autopack_command(db_url, "usage-aggregate create").returncode == 0
        execute(
            db_url.set(username=writer),
            "SET search_path = pg_catalog",
            "INSERT INTO public.llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, "
            "total_tokens, created_at, is_doctor_call) VALUES ('openai', 'm1', 'r', 5, 6, 11, "
            "'2026-12-05 09:00:00', false)",
            "UPDATE public.llm_usage_events SET prompt_tokens = 50 WHERE prompt_tokens = 5",
            "DELETE FROM public.llm_usage_events WHERE id = 1",
        )
        execute(db_url, "ALTER TABLE llm_usage_events ALTER total_tokens TYPE bigint")  # still alterable
        engine = make_engine(db_url.set(username=reader))
        with Session(engine) as db:
            assert usage_hourly.unreadable(db.connection()) == ""
        assert_exact(db_url, engine)
        engine.dispose()
    finally:
        execute(db_url, f"DROP OWNED BY {writer}, {reader}", f"DROP ROLE {writer}", f"DROP ROLE {reader}")


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_row_level_security_keeps_the_dashboard_on_the_events(db_url):
    seeded_at_0001(db_url)
    alembic(db_url, "upgrade", "head")
    execute(db_url, "ALTER TABLE llm_usage_events ENABLE ROW LEVEL SECURITY")
    refused = autopack_command(db_url, "usage-aggregate create")
    assert refused.returncode == 1
    assert "has row-level security: one aggregate would show every role the usage its policies hide" in refused.stderr
    execute(db_url, "ALTER TABLE llm_usage_events DISABLE ROW LEVEL SECURITY")
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    execute(db_url, "ALTER TABLE llm_usage_events ENABLE ROW LEVEL SECURITY")  # enabled after it was made
    engine = make_engine(db_url)
    with Session(engine) as db:
        assert "row-level security" in usage_hourly.unreadable(db.connection())
        from autopack.dashboard_source import has_aggregate

        assert has_aggregate(db) is False
    engine.dispose()


HUGE = 2**62


@pytest.mark.parametrize("backend", [*POSTGRES_BACKENDS, *MYSQL_BACKENDS])
def test_bucket_sums_past_2_63_are_exact_on_the_servers(db_url):
    alembic(db_url, "upgrade", "head")
    execute(
        db_url,
        "ALTER TABLE llm_usage_events "
        + (
            "ALTER total_tokens TYPE bigint"
            if db_url.get_backend_name() == "postgresql"
            else "MODIFY total_tokens BIGINT NOT NULL DEFAULT 0"
        ),
    )
    insert = (
        "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at, is_doctor_call) "
        f"VALUES ('big', 'm', 'r', {HUGE}, '2026-12-05 05:00:00', false), ('big', 'm', 'r', {HUGE}, "
        "'2026-12-05 05:30:00', false)"
    )
    execute(db_url, insert)
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    execute(db_url, insert)  # through the triggers, then folded
    engine = make_engine(db_url)
    with engine.connect() as connection:
        usage_hourly.compact(connection)
    assert_exact(db_url, engine)
    assert answers(engine, NOW, through_aggregate=True)["day"][0][0]["total_tokens"] == 4 * HUGE
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_bucket_past_2_63_on_sqlite_is_one_sentence(db_url):
    alembic(db_url, "upgrade", "head")
    execute(
        db_url,
        "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at, is_doctor_call) "
        f"VALUES ('big', 'm', 'r', {HUGE}, '2026-12-05 05:00:00', 0), ('big', 'm', 'r', {HUGE}, "
        "'2026-12-05 05:30:00', 0)",
    )
    refused = autopack_command(db_url, "usage-aggregate create")
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"error: {usage_hourly.SQLITE_OVERFLOW}"
    assert not set(usage_hourly.TABLES) & table_names(db_url)  # one transaction: nothing made


def insert_at(url, provider: str, created_at: str, total: int, session: str = "") -> None:
    statements = [session] if session else []
    statements.append(
        "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at, is_doctor_call) "
        f"VALUES ('{provider}', 'm', 'r', {total}, '{created_at}', false)"
    )
    execute(url, *statements)


def same_answers(url, *nows: datetime) -> None:
    engine = make_engine(url)
    for now in nows:
        assert answers(engine, now, through_aggregate=True) == answers(engine, now, through_aggregate=False), now
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_text_sqlite_moves_to_another_day_is_read_where_it_lands(db_url):
    """'24:30:00' looks like Autopack's own form but is the next day's 00:30: not read by the narrow range."""
    alembic(db_url, "upgrade", "head")
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    insert_at(db_url, "hour-24", "2026-12-05 24:30:00", 3)
    insert_at(db_url, "plain", "2026-12-06 00:40:00", 5)
    same_answers(db_url, datetime(2026, 12, 7, 0, 25), datetime(2026, 12, 7, 0, 35), datetime(2026, 12, 7))
    engine = make_engine(db_url)
    day = answers(engine, datetime(2026, 12, 7, 0, 25), through_aggregate=True)["day"][0]
    assert {p["provider"]: p["total_tokens"] for p in day} == {"hour-24": 3, "plain": 5}
    engine.dispose()


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_mariadb_dates_no_calendar_has_sit_where_mariadb_orders_them(db_url):
    alembic(db_url, "upgrade", "head")
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    loose = "SET SESSION sql_mode = 'ALLOW_INVALID_DATES'"
    insert_at(db_url, "month-00", "2026-00-15 10:00:00", 3, session="SET SESSION sql_mode = ''")
    insert_at(db_url, "feb-31", "2026-02-31 10:00:00", 5, session=loose)
    insert_at(db_url, "day-00", "2026-04-00 10:00:00", 7, session="SET SESSION sql_mode = ''")
    nows = [datetime(2026, 1, 12), datetime(2026, 1, 1, 0, 30), datetime(2026, 3, 9), datetime(2026, 3, 7, 23, 30)]
    same_answers(db_url, *nows, datetime(2026, 4, 7, 23, 30), datetime(2026, 4, 8, 0, 30))
    assert "ok    hourly usage aggregate matches the events" in verify(db_url).stdout


@pytest.mark.parametrize("backend", [*POSTGRES_BACKENDS, *MYSQL_BACKENDS])
def test_a_rename_in_letter_case_only_moves_the_row(db_url):
    """Under a case-insensitive collation 'p' and 'P ' compare equal, but the dashboard shows the name written."""
    alembic(db_url, "upgrade", "head")
    if db_url.get_backend_name() == "postgresql":
        execute(db_url, *CASE_INSENSITIVE[collation_kind(db_url)])
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    insert_at(db_url, "openai", "2026-12-05 08:00:00", 3)
    execute(db_url, "UPDATE llm_usage_events SET provider = 'OpenAI' WHERE provider = 'openai'")
    assert "ok    hourly usage aggregate matches the events" in verify(db_url).stdout
    engine = make_engine(db_url)
    through, events = (answers(engine, NOW, through_aggregate=way) for way in (True, False))
    engine.dispose()
    # the same numbers; which spelling names a group of equal names is the database's choice (left as it is)
    assert json.dumps(through, default=str).lower() == json.dumps(events, default=str).lower()


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_a_mariadb_rebuild_never_deadlocks_writers_of_several_rows(db_url):
    alembic(db_url, "upgrade", "head")
    assert autopack_command(db_url, "usage-aggregate create").returncode == 0
    engine = sa.create_engine(db_url, pool_size=6)
    insert = sa.text(
        "INSERT INTO llm_usage_events (provider, model, role, total_tokens, created_at, is_doctor_call) "
        "VALUES (:p, 'm', 'r', 3, :at, false)"
    )
    errors: list[str] = []
    writing = True

    def writer(seed: int) -> None:
        chosen = random.Random(seed)
        while writing:
            try:
                with engine.begin() as connection:
                    for _ in range(3):
                        at = NOW - timedelta(minutes=chosen.randint(0, 5000))
                        connection.execute(insert, {"p": chosen.choice("ab"), "at": at})
            except sa.exc.DBAPIError as error:
                errors.append(str(error.orig))

    writers = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for thread in writers:
        thread.start()
    try:
        for _ in range(4):
            rebuilt = autopack_command(db_url, "usage-aggregate rebuild")
            assert rebuilt.returncode == 0, rebuilt.stderr
    finally:
        writing = False
        for thread in writers:
            thread.join()
    assert errors == []
    with engine.connect() as connection:
        assert usage_hourly.differences(connection) == []
    engine.dispose()
