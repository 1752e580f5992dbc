"""Databases the way operators made theirs: ``create_all()`` at an old model, and Autopack's old script.

None of these has an ``alembic_version`` table. Each also carries what an operator's database holds
besides: an extra index on ``llm_usage_events``, a view over it, an unrelated table, and a child table
whose rows point at usage events with ``ON DELETE CASCADE``.
"""

from datetime import datetime

from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Integer, MetaData, String, Table, create_engine, text
from sqlalchemy.engine import URL

from support import event_row, insert_events

STATES = ("pre_build144", "splits_nullable", "old_script", "create_all_build144")
# Autopack declared VARCHAR without a length; on MySQL/MariaDB a length is required.
Varchar = String().with_variant(String(255), "mysql", "mariadb")


def old_model(*, splits_nullable: bool, total_tokens: bool, doctor_index: bool = False) -> MetaData:
    """``llm_usage_events`` as an old Autopack model declared it (default naming, no server defaults); a later
    model also indexes ``is_doctor_call`` (``ix_llm_usage_events_is_doctor_call``)."""
    metadata = MetaData()
    columns = [
        Column("id", Integer, primary_key=True, index=True),
        Column("provider", Varchar, nullable=False, index=True),
        Column("model", Varchar, nullable=False, index=True),
        Column("run_id", Varchar, nullable=True, index=True),
        Column("phase_id", Varchar, nullable=True),
        Column("role", Varchar, nullable=False),
        Column("prompt_tokens", Integer, nullable=splits_nullable),
        Column("completion_tokens", Integer, nullable=splits_nullable),
        Column("created_at", DateTime, nullable=False, default=datetime.utcnow, index=True),
        Column("is_doctor_call", Boolean, nullable=False, default=False, index=doctor_index),
        Column("doctor_model", Varchar, nullable=True),
        Column("doctor_action", Varchar, nullable=True),
    ]
    if total_tokens:
        columns.insert(8, Column("total_tokens", Integer, nullable=False, default=0))
    Table("llm_usage_events", metadata, *columns)
    return metadata


def old_script_upgrade(connection) -> None:
    """What Autopack's standalone add_total_tokens_build144.py did: add the column, backfill, nothing else."""
    connection.execute(text("ALTER TABLE llm_usage_events ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0"))
    connection.execute(
        text("UPDATE llm_usage_events SET total_tokens = COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)")
    )


# (prompt, completion, total) rows per state; total None where the state has no total_tokens column.
ROWS = {
    "pre_build144": [(12_500, 3_200, None), (0, 0, None), (0, 700, None), (1_000_000_000, 999_999_999, None)],
    "splits_nullable": [(8_400, 2_100, None), (None, None, None), (None, 300, None), (55, None, None), (0, 0, None)],
    "old_script": [(100, 50, 150), (7, 3, 0), (0, 0, 0), (40, 60, 500), (1, 2, 3)],
    "create_all_build144": [
        (12_500, 3_200, 15_700),
        (None, None, 18_500),
        (None, None, 2_400),
        (None, None, 0),
        (300, None, 300),
        (20, 30, 0),
        (5, 5, 999),
    ],
}


def build(url: URL, state: str, rows: list[tuple] | None = None) -> None:
    """Make an unversioned database in ``state`` with ``rows`` (default ROWS[state]) and the operator's extras."""
    rows = ROWS[state] if rows is None else rows
    metadata = {
        "pre_build144": old_model(splits_nullable=False, total_tokens=False),
        "splits_nullable": old_model(splits_nullable=True, total_tokens=False),
        "old_script": old_model(splits_nullable=False, total_tokens=False),
        "create_all_build144": old_model(splits_nullable=True, total_tokens=True, doctor_index=True),
    }[state]
    Table("projects", metadata, Column("id", Integer, primary_key=True), Column("name", Varchar, nullable=False))
    Table(
        "usage_annotations",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("event_id", Integer, ForeignKey("llm_usage_events.id", ondelete="CASCADE"), nullable=False),
        Column("note", Varchar),
    )
    engine = create_engine(url)
    try:
        metadata.create_all(engine)
        with engine.begin() as connection:
            insert_events(
                connection, [_row(i, p, c, None if state == "old_script" else t) for i, (p, c, t) in enumerate(rows)]
            )
            if state == "old_script":
                # the script backfilled the rows it found; later writes by old code left 0, or a provider's own total
                old_script_upgrade(connection)
                ids = [r[0] for r in connection.execute(text("SELECT id FROM llm_usage_events ORDER BY id"))]
                connection.execute(
                    text("UPDATE llm_usage_events SET total_tokens = :t WHERE id = :id"),
                    [{"id": i, "t": t} for i, (_, _, t) in zip(ids, rows, strict=True)],
                )
            connection.execute(text("CREATE INDEX ix_ops_provider_created ON llm_usage_events (provider, created_at)"))
            connection.execute(
                text(
                    "CREATE VIEW v_usage_by_provider AS SELECT provider, SUM(prompt_tokens) AS prompt_sum "
                    "FROM llm_usage_events GROUP BY provider"
                )
            )
            connection.execute(text("INSERT INTO projects (id, name) VALUES (1, 'autopack'), (2, 'other')"))
            ids = [r[0] for r in connection.execute(text("SELECT id FROM llm_usage_events ORDER BY id"))]
            connection.execute(
                text("INSERT INTO usage_annotations (event_id, note) VALUES (:e, :n)"),
                [{"e": i, "n": f"note {i}"} for i in ids],
            )
    finally:
        engine.dispose()


def _row(i: int, prompt, completion, total) -> dict:
    values = {"prompt_tokens": prompt, "completion_tokens": completion}
    if total is not None:
        values["total_tokens"] = total
    return event_row(i, **values)


def expected_total(prompt, completion, total) -> int:
    """A total already there is kept; a missing or zero one becomes the sum of the splits (NULL as 0)."""
    if total:
        return total
    return (prompt or 0) + (completion or 0)
