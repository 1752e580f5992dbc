"""Revision 0003: the is_doctor_call index upstream Autopack's model declares, on every engine and mode.

Built (concurrently on PostgreSQL online), adopted when there, rebuilt when an interrupted concurrent build left
it INVALID, refused when the name is taken by an index on other columns; the downgrade drops it, rows untouched.
(The legacy-state tests adopt it from a later Autopack's create_all(); pytest-alembic walks 0003 both ways.)
"""

import fcntl
import time

import pytest
from sqlalchemy import create_engine, inspect

from support import (
    BACKENDS,
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    alembic,
    apply_script,
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


def indexes(url) -> dict[str, list[str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {i["name"]: i["column_names"] for i in inspect(connection).get_indexes("llm_usage_events")}
    finally:
        engine.dispose()


def pg_valid(url) -> bool | None:
    return scalar(url, f"SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('{INDEX}')")


# SQLite has no online mode (refused in one sentence: test_operator_errors)
@pytest.mark.parametrize(
    ("backend", "mode"), [(b, m) for b in BACKENDS for m in MODES if not (b == "sqlite" and m == "online")]
)
def test_the_index_is_built_dropped_and_built_again_with_every_row_kept(db_url, backend, mode):
    seed_large(db_url, rows=ROWS)
    before = token_rows(db_url)
    up = alembic(db_url, *MODES[mode], "upgrade", "head")
    how = {"online": " concurrently" if backend.startswith("postgresql") else " in place, writers going on"}
    assert f"Index: built {INDEX} on llm_usage_events (is_doctor_call){how.get(mode, '')}" in up.stderr
    assert indexes(db_url)[INDEX] == ["is_doctor_call"] and current(db_url) == "0003 (head)"
    if backend.startswith("postgresql"):
        assert pg_valid(db_url) is True
    at_head = token_rows(db_url)
    assert all(at_head[i] == (p, c, p + c) for i, (p, c) in before.items())
    assert "No new upgrade operations detected." in alembic(db_url, "check").stdout

    down = alembic(db_url, "downgrade", "-1")  # -1 at head: only the index
    assert f"Index: dropped {INDEX}" in down.stderr
    assert INDEX not in indexes(db_url) and current(db_url) == "0002"
    assert token_rows(db_url) == at_head
    alembic(db_url, *MODES[mode], "upgrade", "head")
    assert indexes(db_url)[INDEX] == ["is_doctor_call"] and token_rows(db_url) == at_head


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_an_invalid_index_an_interrupted_concurrent_build_left_is_built_again(db_url):
    seed_large(db_url, rows=ROWS)
    alembic(db_url, "upgrade", "0002")
    # a concurrent build that fails leaves its index INVALID under the name: a UNIQUE one over duplicates does
    assert "lock timeout" in interrupted_concurrent_build(db_url)
    assert pg_valid(db_url) is False
    up = alembic(db_url, "-x", "online=true", "upgrade", "head")
    assert f"dropping the INVALID {INDEX} an interrupted concurrent build left" in up.stderr
    assert pg_valid(db_url) is True and current(db_url) == "0003 (head)"


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_the_default_mode_rebuilds_an_invalid_index_in_its_transaction(db_url):
    seed_large(db_url, rows=100)
    alembic(db_url, "upgrade", "0002")
    interrupted_concurrent_build(db_url)
    assert pg_valid(db_url) is False
    alembic(db_url, "upgrade", "head")
    assert pg_valid(db_url) is True


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_index_of_that_name_on_other_columns_is_refused_and_nothing_changes(db_url):
    seed_large(db_url, rows=100)
    alembic(db_url, "upgrade", "0002")
    execute(db_url, f"CREATE INDEX {INDEX} ON llm_usage_events (provider)")
    before = token_rows(db_url)
    message = fails(db_url, "upgrade", "head")
    assert message.startswith(f"An index named like {INDEX} already exists (")
    assert message.endswith(
        "which is not the plain index on llm_usage_events (is_doctor_call) that revision 0003 adopts: rename or "
        "drop it, then re-run the same command; nothing was changed."
    )
    assert "(provider)" in message
    assert indexes(db_url)[INDEX] == ["provider"] and current(db_url) == "0002" and token_rows(db_url) == before


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


NOT_OURS = "which is not the plain index on llm_usage_events (is_doctor_call) that revision 0003 adopts"
OTHER_TABLE = ["CREATE TABLE other (is_doctor_call BOOLEAN)", f"CREATE INDEX {INDEX} ON other (is_doctor_call)"]
# what may carry the name without being the index 0003 makes, per engine: never adopted
IMPOSTORS = [
    ("sqlite", OTHER_TABLE),
    ("sqlite", [f"CREATE INDEX {INDEX} ON llm_usage_events (is_doctor_call) WHERE is_doctor_call"]),
    ("sqlite", [f"CREATE INDEX {INDEX.upper()} ON llm_usage_events (is_doctor_call)"]),
    *((pg, OTHER_TABLE) for pg in POSTGRES_BACKENDS),
    *(
        (pg, [f"CREATE INDEX {INDEX} ON llm_usage_events (is_doctor_call) WHERE is_doctor_call"])
        for pg in POSTGRES_BACKENDS
    ),
    *((pg, [f"CREATE INDEX {INDEX} ON llm_usage_events USING hash (is_doctor_call)"]) for pg in POSTGRES_BACKENDS),
    *((m, [f"CREATE UNIQUE INDEX {INDEX} ON llm_usage_events (is_doctor_call, id)"]) for m in MYSQL_BACKENDS),
    *((m, [f"CREATE INDEX {INDEX.upper()} ON llm_usage_events (is_doctor_call)"]) for m in MYSQL_BACKENDS),
]


@pytest.mark.parametrize(("backend", "impostor"), IMPOSTORS)
def test_an_index_under_the_name_that_is_not_the_plain_one_is_refused_by_the_command_and_the_script(
    db_url, backend, impostor
):
    """Adopting it would stamp 0003 over another table's, a partial or a UNIQUE index; so would IF NOT EXISTS."""
    alembic(db_url, "upgrade", "0002")
    execute(db_url, *impostor)
    before = indexes(db_url)
    message = fails(db_url, "upgrade", "head")
    assert NOT_OURS in message and message.endswith("nothing was changed."), message
    with pytest.raises(Exception):  # noqa: B017 (each engine's client raises its own error)
        apply_script(db_url, alembic(db_url, "upgrade", "0002:0003", "--sql").stdout)
    assert current(db_url) == "0002" and indexes(db_url) == before


@pytest.mark.parametrize("backend", ["sqlite", *POSTGRES_BACKENDS])  # MariaDB's DROP INDEX … ON names the table
def test_the_downgrade_script_never_drops_another_tables_index_of_that_name(db_url):
    alembic(db_url, "upgrade", "head")
    alembic(db_url, "downgrade", "-1")
    execute(db_url, *OTHER_TABLE)
    alembic(db_url, "stamp", "0003")
    with pytest.raises(Exception):  # noqa: B017
        apply_script(db_url, alembic(db_url, "downgrade", "0003:0002", "--sql").stdout)
    assert current(db_url) == "0003 (head)"
    engine = create_engine(db_url)
    with engine.connect() as connection:
        assert [i["name"] for i in inspect(connection).get_indexes("other")] == [INDEX]
    engine.dispose()


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
    assert pg_valid(db_url) is True and current(db_url) == "0003 (head)"
    attached = scalar(
        db_url,
        "SELECT count(DISTINCT x.indrelid) FROM pg_inherits h JOIN pg_index x ON x.indexrelid = h.inhrelid "
        f"WHERE h.inhparent = to_regclass('{INDEX}')",
    )
    assert attached == 2
    assert token_rows(db_url) == {1: (3, 4, 7), 2: (5, 6, 11)}


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_mariadb_online_index_waits_for_a_held_table_no_longer_than_online_lock_timeout(db_url):
    seed_large(db_url, rows=100)
    alembic(db_url, "upgrade", "0002")
    engine = create_engine(db_url)
    with engine.connect() as holder:
        holder.exec_driver_sql("SELECT count(*) FROM llm_usage_events").scalar()  # an open transaction: its MDL
        started = time.monotonic()
        message = fails(
            db_url, "-x", "online=true", "-x", "online_lock_timeout=1s", "-x", "online_retries=2", "upgrade", "head"
        )
        waited = time.monotonic() - started
        holder.rollback()
    engine.dispose()
    assert message.startswith("Could not lock llm_usage_events within online_lock_timeout=1s in 2 attempts"), message
    assert waited < 9, f"waited {waited:.1f}s: the session's 10 s lock_wait_timeout, not online_lock_timeout"
    assert current(db_url) == "0002"


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_verify_warns_of_an_invalid_index_at_head(db_url):
    seed_large(db_url, rows=100)
    alembic(db_url, "upgrade", "head")
    execute(db_url, f"DROP INDEX {INDEX}")
    interrupted_concurrent_build(db_url)
    assert pg_valid(db_url) is False
    checked = verify(db_url)
    assert f"warning: {INDEX} is INVALID (an online build or drop of it was interrupted)" in checked.stdout


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
