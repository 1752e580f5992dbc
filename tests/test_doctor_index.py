"""The is_doctor_call index: part of the pre-BUILD-144 schema (0001), made sure of by BUILD-144's upgrade (0002).

Upstream's model declared it with the column, four weeks before BUILD-144; upstream's own script that added the
doctor columns to older databases did not build it. So a table that lacks it gets it during ``upgrade head``
(concurrently on PostgreSQL online, in place on MariaDB online), one that has it keeps it, an INVALID one an
interrupted concurrent build left is built again, and an index of the name that is not the plain one is refused
before any change. ``downgrade -1`` keeps it: the schema it restores is the pre-BUILD-144 model's, index included.
A database an earlier build of this tree stamped ``0003`` (which only built this index) is restamped 0002.
"""

import fcntl
import os
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from legacy import build, old_model
from support import (
    BACKENDS,
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    ROOT,
    alembic,
    apply_script,
    columns_of,
    current,
    execute,
    fails,
    scalar,
    seed_large,
    token_rows,
    verify,
)

INDEX = "ix_llm_usage_events_is_doctor_call"
ROWS = 3_000
MODES = {"default": [], "online": ["-x", "online=true"]}
RESTAMPED = "The database was stamped 0003 by an earlier build of this tree: restamped 0002"


def indexes(url) -> dict[str, list[str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {i["name"]: i["column_names"] for i in inspect(connection).get_indexes("llm_usage_events")}
    finally:
        engine.dispose()


def pg_valid(url) -> bool | None:
    return scalar(url, f"SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('{INDEX}')")


def seed_without_the_index(url, rows: int = ROWS) -> None:
    """A table at 0001 as upstream's doctor-columns script left it: every baseline index but is_doctor_call's."""
    seed_large(url, rows=rows)
    execute(url, f"DROP INDEX {INDEX} ON llm_usage_events" if "mysql" in str(url) else f"DROP INDEX {INDEX}")


def drift_from_the_pre_build144_model(url) -> list:
    """What Alembic's autogenerate finds between the table and the pre-BUILD-144 model (splits NOT NULL, no
    total_tokens, is_doctor_call indexed): nothing, at 0001 and after ``downgrade -1``."""
    engine = create_engine(url)
    model = old_model(splits_nullable=False, total_tokens=False, doctor_index=True)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "include_object": lambda obj, name, type_, reflected, compare_to: (
                        not (reflected and compare_to is None and type_ in ("table", "index", "unique_constraint"))
                    ),
                },
            )
            return compare_metadata(context, model)
    finally:
        engine.dispose()


# SQLite has no online mode (refused in one sentence: test_operator_errors)
@pytest.mark.parametrize(
    ("backend", "mode"), [(b, m) for b in BACKENDS for m in MODES if not (b == "sqlite" and m == "online")]
)
def test_upgrade_head_builds_the_index_a_table_lacks_and_downgrade_keeps_it(db_url, backend, mode):
    seed_without_the_index(db_url)
    before = token_rows(db_url)
    up = alembic(db_url, *MODES[mode], "upgrade", "head")
    how = {"online": " concurrently" if backend.startswith("postgresql") else " in place, writers going on"}
    assert f"Index: built {INDEX} on llm_usage_events (is_doctor_call){how.get(mode, '')}" in up.stderr
    assert indexes(db_url)[INDEX] == ["is_doctor_call"] and current(db_url) == "0002 (head)"
    if backend.startswith("postgresql"):
        assert pg_valid(db_url) is True
    at_head = token_rows(db_url)
    assert all(at_head[i] == (p, c, p + c) for i, (p, c) in before.items())
    assert "No new upgrade operations detected." in alembic(db_url, "check").stdout

    alembic(db_url, *([] if backend.startswith("mariadb") else MODES[mode]), "downgrade", "-1")  # BUILD-144 undone
    assert current(db_url) == "0001" and indexes(db_url)[INDEX] == ["is_doctor_call"]
    assert "total_tokens" not in columns_of(db_url) and drift_from_the_pre_build144_model(db_url) == []
    assert token_rows(db_url, ("prompt_tokens", "completion_tokens")) == before
    again = alembic(db_url, *MODES[mode], "upgrade", "head")
    assert f"Index: {INDEX} already there (adopted)" in again.stderr
    assert token_rows(db_url) == at_head


@pytest.mark.parametrize("backend", BACKENDS)
def test_0001_makes_the_index_on_an_empty_database_and_matches_the_pre_build144_model(db_url):
    alembic(db_url, "upgrade", "0001")
    assert indexes(db_url)[INDEX] == ["is_doctor_call"]
    assert drift_from_the_pre_build144_model(db_url) == []
    up = alembic(db_url, "upgrade", "head")
    assert f"Index: {INDEX} already there (adopted)" in up.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_table_stamped_0001_by_hand_without_the_index_gets_it(db_url):
    build(db_url, "pre_build144")  # create_all() at a model that did not index is_doctor_call
    alembic(db_url, "stamp", "0001")  # by hand, as an operator adopting the tree might
    assert INDEX not in indexes(db_url)
    up = alembic(db_url, "upgrade", "head")
    assert f"Index: built {INDEX}" in up.stderr and indexes(db_url)[INDEX] == ["is_doctor_call"]
    assert "No new upgrade operations detected." in alembic(db_url, "check").stdout


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_an_invalid_index_an_interrupted_concurrent_build_left_is_built_again(db_url):
    seed_without_the_index(db_url)
    # a concurrent build that fails leaves its index INVALID under the name: one waiting past lock_timeout does
    assert "lock timeout" in interrupted_concurrent_build(db_url)
    assert pg_valid(db_url) is False
    up = alembic(db_url, "-x", "online=true", "upgrade", "head")
    assert f"dropping the INVALID {INDEX} an interrupted concurrent build left" in up.stderr
    assert pg_valid(db_url) is True and current(db_url) == "0002 (head)"


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_the_default_mode_rebuilds_an_invalid_index_in_its_transaction(db_url):
    seed_without_the_index(db_url, rows=100)
    interrupted_concurrent_build(db_url)
    assert pg_valid(db_url) is False
    alembic(db_url, "upgrade", "head")
    assert pg_valid(db_url) is True


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_concurrent_build_that_fails_stays_at_0001_and_a_rerun_finishes(db_url):
    """The backfill is committed by then: the sentence says so, and the re-run builds the index."""
    seed_without_the_index(db_url, rows=100)
    before = token_rows(db_url)
    execute(
        db_url,
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, "
        "created_at, is_doctor_call) VALUES ('p', 'm', 'r', 1, 2, now(), true)",
    )
    engine = create_engine(db_url, isolation_level="REPEATABLE READ")
    with engine.connect() as holder:  # a snapshot older than the build (a pg_dump's), on another table: only
        holder.exec_driver_sql("SELECT count(*) FROM pg_class").scalar()  # CREATE INDEX CONCURRENTLY waits for it
        message = fails(db_url, "-x", "online=true", "-x", "lock_timeout=1s", "upgrade", "head")
        holder.rollback()
    engine.dispose()
    assert message.startswith(f"Building {INDEX} concurrently failed ("), message
    assert "the revision stays 0001" in message and "re-running the same command finishes" in message
    assert current(db_url) == "0001"
    alembic(db_url, "-x", "online=true", "upgrade", "head")
    assert pg_valid(db_url) is True and current(db_url) == "0002 (head)"
    after = token_rows(db_url)
    assert all(after[i] == (p, c, p + c) for i, (p, c) in before.items())


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_index_of_that_name_on_other_columns_is_refused_before_any_change(db_url):
    seed_without_the_index(db_url, rows=100)
    execute(db_url, f"CREATE INDEX {INDEX} ON llm_usage_events (provider)")
    before = token_rows(db_url)
    message = fails(db_url, "upgrade", "head")
    assert message.startswith(f"An index named like {INDEX} already exists (")
    assert message.endswith(
        "which is not the plain index on llm_usage_events (is_doctor_call) that the pre-BUILD-144 schema declares "
        "and BUILD-144's upgrade adopts: rename or drop it, then re-run the same command; nothing was changed."
    )
    assert "(provider)" in message
    assert indexes(db_url)[INDEX] == ["provider"] and current(db_url) == "0001" and token_rows(db_url) == before
    assert "total_tokens" not in columns_of(db_url)


def interrupted_concurrent_build(url) -> str:
    """What an interrupted online build leaves: CREATE INDEX CONCURRENTLY commits the index's catalog entry, then
    waits for the table's writers; one holds its row past the build's lock_timeout, so the index stays INVALID."""
    writer_engine = create_engine(url)
    builder = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"options": "-c lock_timeout=300ms"})
    try:
        with writer_engine.connect() as writer, builder.connect() as connection:
            writer.exec_driver_sql(
                "UPDATE llm_usage_events SET role = role WHERE id = (SELECT min(id) FROM llm_usage_events)"
            )
            try:
                connection.exec_driver_sql(f"CREATE INDEX CONCURRENTLY {INDEX} ON llm_usage_events (is_doctor_call)")
            except Exception as error:  # the test reads the server's message
                return str(error)
            finally:
                writer.rollback()
        return ""
    finally:
        writer_engine.dispose()
        builder.dispose()


NOT_OURS = "which is not the plain index on llm_usage_events (is_doctor_call) that the pre-BUILD-144 schema declares"
OTHER_TABLE = ["CREATE TABLE other (is_doctor_call BOOLEAN)", f"CREATE INDEX {INDEX} ON other (is_doctor_call)"]
# what may carry the name without being the baseline's index, per engine: never adopted
IMPOSTORS = [
    ("sqlite", OTHER_TABLE),
    ("sqlite", [f"CREATE INDEX {INDEX} ON llm_usage_events (is_doctor_call) WHERE is_doctor_call"]),
    ("sqlite", [f"CREATE INDEX {INDEX.upper()} ON llm_usage_events (is_doctor_call)"]),
    ("sqlite", [f"CREATE INDEX {INDEX} ON llm_usage_events (is_doctor_call DESC)"]),
    ("sqlite", [f"CREATE INDEX {INDEX} ON llm_usage_events (is_doctor_call COLLATE NOCASE)"]),
    *((pg, OTHER_TABLE) for pg in POSTGRES_BACKENDS),
    *(
        (pg, [f"CREATE INDEX {INDEX} ON llm_usage_events (is_doctor_call) WHERE is_doctor_call"])
        for pg in POSTGRES_BACKENDS
    ),
    *((pg, [f"CREATE INDEX {INDEX} ON llm_usage_events USING hash (is_doctor_call)"]) for pg in POSTGRES_BACKENDS),
    *((m, [f"CREATE UNIQUE INDEX {INDEX} ON llm_usage_events (is_doctor_call, id)"]) for m in MYSQL_BACKENDS),
    *((m, [f"CREATE INDEX {INDEX.upper()} ON llm_usage_events (is_doctor_call)"]) for m in MYSQL_BACKENDS),
    *((m, [f"CREATE INDEX {INDEX} ON llm_usage_events (is_doctor_call DESC)"]) for m in MYSQL_BACKENDS),
]


@pytest.mark.parametrize(("backend", "impostor"), IMPOSTORS)
def test_an_index_under_the_name_that_is_not_the_plain_one_is_refused_by_the_command_and_the_script(
    db_url, backend, impostor
):
    """Adopting it would stamp 0002 over another table's, a partial or a UNIQUE index; so would IF NOT EXISTS."""
    seed_without_the_index(db_url, rows=10)
    execute(db_url, *impostor)
    before = indexes(db_url), token_rows(db_url)
    message = fails(db_url, "upgrade", "head")
    assert NOT_OURS in message and message.endswith("nothing was changed."), message
    with pytest.raises(Exception):  # noqa: B017 (each engine's client raises its own error)
        apply_script(db_url, alembic(db_url, "upgrade", "0001:0002", "--sql").stdout)
    assert current(db_url) == "0001" and (indexes(db_url), token_rows(db_url)) == before
    assert "total_tokens" not in columns_of(db_url)


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_partitions_whose_long_names_share_a_beginning_each_get_their_own_index(db_url):
    """Online: each partition's index is named from the whole partition name, and the parent is read back valid."""
    months = {"jan": ("2031-01-01", "2031-02-01"), "feb": ("2031-02-01", "2031-03-01")}
    execute(
        db_url,
        "CREATE TABLE llm_usage_events (id BIGSERIAL, provider VARCHAR NOT NULL, model VARCHAR NOT NULL, "
        "run_id VARCHAR, phase_id VARCHAR, role VARCHAR NOT NULL, prompt_tokens INTEGER NOT NULL, "
        "completion_tokens INTEGER NOT NULL, created_at TIMESTAMP NOT NULL, is_doctor_call BOOLEAN NOT NULL, "
        "doctor_model VARCHAR, doctor_action VARCHAR, PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at)",
        *(
            f"CREATE TABLE llm_usage_events_archive_of_year_2031_and_{m} PARTITION OF llm_usage_events "
            f"FOR VALUES FROM ('{low}') TO ('{high}')"
            for m, (low, high) in months.items()
        ),
        "INSERT INTO llm_usage_events (provider, model, role, prompt_tokens, completion_tokens, created_at, "
        "is_doctor_call) VALUES ('p', 'm', 'r', 3, 4, '2031-01-05', false), ('p', 'm', 'r', 5, 6, '2031-02-05', true)",
    )
    alembic(db_url, "-x", "online=true", "upgrade", "head")
    assert pg_valid(db_url) is True and current(db_url) == "0002 (head)"
    attached = scalar(
        db_url,
        "SELECT count(DISTINCT x.indrelid) FROM pg_inherits h JOIN pg_index x ON x.indexrelid = h.inhrelid "
        f"WHERE h.inhparent = to_regclass('{INDEX}')",
    )
    assert attached == 2
    assert token_rows(db_url) == {1: (3, 4, 7), 2: (5, 6, 11)}


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_verify_warns_of_an_invalid_index_at_head_and_upgrade_head_builds_it_again(db_url):
    seed_large(db_url, rows=100)
    alembic(db_url, "upgrade", "head")
    execute(db_url, f"DROP INDEX {INDEX}")
    interrupted_concurrent_build(db_url)
    assert pg_valid(db_url) is False
    checked = verify(db_url)
    assert f"warning: {INDEX} is INVALID (an online build of it was interrupted); the pre-BUILD" in checked.stdout
    up = alembic(db_url, "-x", "online=true", "upgrade", "head")  # the command it names
    assert f"dropping the INVALID {INDEX}" in up.stderr and "Running upgrade 0001 -> 0002" in up.stderr
    assert pg_valid(db_url) is True and current(db_url) == "0002 (head)"
    assert INDEX not in verify(db_url).stdout  # (the online run's fill trigger is warned of, as after any)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_an_earlier_build_left_at_0002_without_the_index_gets_it_from_upgrade_head(db_url):
    """That build's 0002 made no index and its 'downgrade -1' from 0003 dropped it: stamped head, index missing."""
    seed_large(db_url, rows=200)
    alembic(db_url, "upgrade", "head")
    at_head = token_rows(db_url)
    execute(db_url, f"DROP INDEX {INDEX} ON llm_usage_events" if "mysql" in str(db_url) else f"DROP INDEX {INDEX}")
    checked = verify(db_url)
    assert checked.returncode == 0 and f"warning: {INDEX} is missing" in checked.stdout, checked.stdout
    up = alembic(db_url, "upgrade", "head")  # the command verify names
    assert "The database is stamped 0002 but ix_llm_usage_events_is_doctor_call is missing or INVALID" in up.stderr
    assert f"Index: built {INDEX}" in up.stderr and "Nothing to do" not in up.stderr
    assert current(db_url) == "0002 (head)" and indexes(db_url)[INDEX] == ["is_doctor_call"]
    assert token_rows(db_url) == at_head and "warning" not in verify(db_url).stdout
    assert "No new upgrade operations detected." in alembic(db_url, "check").stdout
    again = alembic(db_url, "upgrade", "head")
    assert "Nothing to do: the database is already at 0002" in again.stderr


def stamped_0003(url) -> None:
    """A database as an earlier build of this tree left it at its head, 0003: BUILD-144's schema, the index, and
    0003 in alembic_version (that build's 0003 built the index and stamped; this tree's 0002 builds it)."""
    seed_large(url, rows=50)
    alembic(url, "upgrade", "head")
    execute(url, "UPDATE alembic_version SET version_num = '0003'")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_stamped_0003_by_an_earlier_build_keeps_working(db_url):
    stamped_0003(db_url)
    at_head = token_rows(db_url)
    checked = verify(db_url)  # reads only: names the stamp and what the next command makes of it
    assert checked.returncode == 0 and "0003 (an earlier build's name for 0002" in checked.stdout, checked.stdout
    shown = alembic(db_url, "current")
    assert shown.stdout.strip() == "0002 (head)" and RESTAMPED in shown.stderr

    execute(db_url, "UPDATE alembic_version SET version_num = '0003'")
    up = alembic(db_url, "upgrade", "head")
    assert RESTAMPED in up.stderr and "Nothing to do: the database is already at 0002" in up.stderr
    assert token_rows(db_url) == at_head

    execute(db_url, "UPDATE alembic_version SET version_num = '0003'")
    started = subprocess.run(
        [sys.executable, "-c", "from autopack.database import init_db; init_db()"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": db_url.render_as_string(False)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    assert current(db_url) == "0002 (head)"

    execute(db_url, "UPDATE alembic_version SET version_num = '0003'")
    down = alembic(db_url, "downgrade", "-1")  # BUILD-144 undone, as at any 0002
    assert RESTAMPED in down.stderr and "Running downgrade 0002 -> 0001" in down.stderr
    assert current(db_url) == "0001" and "total_tokens" not in columns_of(db_url)
    assert indexes(db_url)[INDEX] == ["is_doctor_call"]
    alembic(db_url, "upgrade", "head")
    assert token_rows(db_url) == at_head


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_migrator_through_a_symlink_waits_for_one_holding_the_real_files_lock(db_url, tmp_path):
    seed_large(db_url, rows=100)
    link = tmp_path / "link.db"
    link.symlink_to(db_url.database)
    with open(f"{db_url.database}.migration-lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = alembic(db_url.set(database=str(link)), "-x", "migration_lock_wait=2s", "upgrade", "head", check=False)
    assert result.returncode != 0 and "held the migration lock for 2s" in result.stdout, result.stdout
    assert current(db_url) == "0001"


# the plain index as operators type it: SQLite keeps their text, so what it is is read from SQLite, not the text
PLAIN_AS_TYPED = [
    f"create index {INDEX} on llm_usage_events(is_doctor_call)",
    f'CREATE INDEX "{INDEX}" ON "llm_usage_events" ( "is_doctor_call" ASC )',
    f"CREATE INDEX IF NOT EXISTS {INDEX}\n  ON llm_usage_events (is_doctor_call)",
]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("typed", PLAIN_AS_TYPED)
@pytest.mark.parametrize("how", ["command", "script"])
def test_sqlite_adopts_the_plain_index_however_it_was_typed(db_url, typed, how):
    seed_without_the_index(db_url, rows=10)
    execute(db_url, typed)
    if how == "command":
        assert f"Index: {INDEX} already there (adopted)" in alembic(db_url, "upgrade", "head").stderr
    else:
        apply_script(db_url, alembic(db_url, "upgrade", "0001:0002", "--sql").stdout)
    assert current(db_url) == "0002 (head)" and indexes(db_url) == {**indexes(db_url), INDEX: ["is_doctor_call"]}


@pytest.mark.parametrize("backend", ["sqlite", *POSTGRES_BACKENDS])
def test_0003_beside_0002_in_the_version_table_becomes_one_stamp(db_url):
    stamped_0003(db_url)
    execute(db_url, "INSERT INTO alembic_version (version_num) VALUES ('0002')")
    shown = alembic(db_url, "current")
    assert shown.stdout.strip() == "0002 (head)" and RESTAMPED in shown.stderr
    assert scalar(db_url, "SELECT count(*) FROM alembic_version") == 1


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "command",
    [("upgrade", "0001:0003", "--sql"), ("downgrade", "0003:0002", "--sql"), ("stamp", "0003"), ("upgrade", "0003")],
)
def test_a_command_naming_the_retired_revision_says_which_to_name(db_url, command):
    alembic(db_url, "upgrade", "head")
    result = alembic(db_url, *command, check=False)
    assert result.returncode != 0 and result.stdout.startswith("FAILED: Revision 0003 was retired"), result.stdout
    assert "name 0002 instead" in result.stdout and len(result.stdout.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and current(db_url) == "0002 (head)"


@pytest.mark.parametrize("backend", ["sqlite", *POSTGRES_BACKENDS])
def test_the_downgrade_script_applied_to_a_0003_database_stamps_0001(db_url):
    stamped_0003(db_url)
    at_head = token_rows(db_url)
    apply_script(db_url, alembic(db_url, "downgrade", "0002:0001", "--sql").stdout)
    assert scalar(db_url, "SELECT version_num FROM alembic_version") == "0001"
    assert "total_tokens" not in columns_of(db_url) and indexes(db_url)[INDEX] == ["is_doctor_call"]
    alembic(db_url, "upgrade", "head")
    assert token_rows(db_url) == at_head


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_current_on_a_0003_database_for_a_read_only_role_is_one_sentence(db_url):
    stamped_0003(db_url)
    role = f"ro_{db_url.database}"[:60]
    execute(
        db_url,
        f"DROP ROLE IF EXISTS {role}",
        f"CREATE ROLE {role} LOGIN",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
    )
    try:
        message = fails(db_url.set(username=role), "current")
        assert message.startswith("The database is stamped 0003, which this tree restamps before reading it"), message
        assert "run 'alembic upgrade head' once as the table's owner on the primary" in message
        assert scalar(db_url, "SELECT version_num FROM alembic_version") == "0003"
    finally:
        execute(db_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")
