"""The recorder refuses, the same on every engine, a string any engine would refuse or change; MariaDB sessions of
the application are strict, so a narrower column made by other code refuses instead of cutting."""

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from autopack.database import make_engine
from autopack.usage_recorder import LlmUsageEvent, record_total_only_usage
from support import MYSQL_BACKENDS, alembic


def record(engine, **strings):
    with Session(engine) as db:
        fields = {"provider": "openai", "model": "gpt-4o", "role": "builder", **strings}
        return record_total_only_usage(db, total_tokens=10, **fields).id


def test_255_characters_are_stored_whole_and_256_refused_on_every_engine(db_url):
    alembic(db_url, "upgrade", "head")
    engine = make_engine(db_url)
    fine_tune = "ft:gpt-4o-2024-08-06:acme:" + "x" * 229  # 255 characters
    stored = record(engine, model=fine_tune, run_id="é" * 255)
    with Session(engine) as db:
        row = db.execute(select(LlmUsageEvent.model, LlmUsageEvent.run_id).where(LlmUsageEvent.id == stored)).one()
    assert (row.model, row.run_id) == (fine_tune, "é" * 255)
    for field in ("provider", "model", "role", "run_id", "phase_id", "doctor_model", "doctor_action"):
        with pytest.raises(ValueError, match=rf"^{field} is 256 characters, more than the 255 its column holds"):
            record(engine, **{field: fine_tune + "y"})
    with pytest.raises(ValueError, match=r"^model contains a NUL character"):
        record(engine, model="gpt-4o\x00")
    with pytest.raises(ValueError, match=r"^phase_id contains '\\ud800' at position 2, a lone surrogate"):
        record(engine, phase_id="ab\ud800")
    with Session(engine) as db:
        assert db.scalar(select(LlmUsageEvent.id).where(LlmUsageEvent.id > stored)) is None  # nothing else written
    engine.dispose()


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_the_application_runs_mariadb_strict_even_where_the_server_is_not(db_url):
    """A server whose sql_mode is not strict (simulated per connection, as the server's default would give) and a
    model column other code made narrower: the value is refused, never silently cut."""
    alembic(db_url, "upgrade", "head")
    loose = db_url.update_query_dict({"init_command": "SET SESSION sql_mode = ''"})
    engine = make_engine(loose)
    with engine.begin() as connection:
        assert "STRICT_ALL_TABLES" in connection.scalar(text("SELECT @@SESSION.sql_mode"))
        assert connection.scalar(text("SELECT @@SESSION.time_zone")) == "+00:00"
        connection.exec_driver_sql("ALTER TABLE llm_usage_events MODIFY model VARCHAR(20) NOT NULL")
    with pytest.raises(ValueError, match=r"^this table cannot hold a value .*Data too long for column 'model'"):
        record(engine, model="ft:gpt-4o:acme:" + "z" * 20)
    with engine.begin() as connection:  # a table other code made in MariaDB's 3-byte utf8: no emoji
        connection.exec_driver_sql("ALTER TABLE llm_usage_events CONVERT TO CHARACTER SET utf8mb3")
    with pytest.raises(ValueError, match=r"^this table cannot hold .*Incorrect string value.*utf8mb4\)"):
        record(engine, model="gpt-\N{ROCKET}")
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT COUNT(*) FROM llm_usage_events")) == 0
    engine.dispose()
