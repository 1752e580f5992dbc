"""PostgreSQL's default upgrade backfills by one table rewrite: the table keeps its size, non-zero totals stay,
statistics are fresh; where something on the table needs the UPDATEs, the batched UPDATE runs and the log says
why (each cause the tree detects, on tables built as operators built theirs)."""

import pytest

from legacy import ROWS, build, expected_total
from support import POSTGRES_BACKENDS, alembic, audit_trigger, execute, fails, scalar, seed_large, token_rows

pytestmark = pytest.mark.parametrize("backend", POSTGRES_BACKENDS)

REWRITE = "in one table rewrite, then ANALYZE"
FALLBACK = "backfill by batched UPDATE instead of one table rewrite"


def expected(state: str, rows=None) -> list[int]:
    return [expected_total(p, c, t) for p, c, t in (rows or ROWS[state])]


def totals(url) -> list[int]:
    return [row[0] for row in token_rows(url, ("total_tokens",)).values()]


def test_the_backfill_is_one_rewrite_that_keeps_the_tables_size_and_its_statistics(db_url):
    seed_large(db_url, 20_000)
    before = scalar(db_url, "SELECT pg_total_relation_size('llm_usage_events')")
    splits = token_rows(db_url, ("prompt_tokens", "completion_tokens"))
    log = alembic(db_url, "upgrade", "0002").stderr
    assert f"Backfilled {sum(1 for p, c in splits.values() if p + c)} rows {REWRITE}" in log, log
    after = scalar(db_url, "SELECT pg_total_relation_size('llm_usage_events')")
    assert after <= 1.10 * before, (before, after)  # an UPDATE of every row leaves about twice the size
    assert {i: t for i, (t,) in token_rows(db_url, ("total_tokens",)).items()} == {
        i: p + c for i, (p, c) in splits.items()
    }
    analyzed = "SELECT count(*) FROM pg_stats WHERE tablename = 'llm_usage_events' AND attname = 'total_tokens'"
    assert scalar(db_url, analyzed) == 1


def test_a_total_already_there_is_never_changed_by_the_rewrite(db_url):
    build(db_url, "old_script")  # totals 150, 0 (to fill), 0 (splits 0), 500 (not the sum: kept), 3
    log = alembic(db_url, "upgrade", "head").stderr
    assert REWRITE in log and FALLBACK not in log, log
    assert totals(db_url) == expected("old_script")


CAUSES = {
    "view": ["CREATE VIEW v_totals AS SELECT id, total_tokens FROM llm_usage_events"],
    "materialized view": [
        "CREATE MATERIALIZED VIEW mv_totals AS SELECT provider, SUM(total_tokens) AS s FROM llm_usage_events "
        "GROUP BY provider"
    ],
    "rule": [
        "CREATE TABLE big_events (id INTEGER)",
        "CREATE RULE r_big AS ON INSERT TO llm_usage_events WHERE NEW.total_tokens > 1000 "
        "DO ALSO INSERT INTO big_events VALUES (NEW.id)",
    ],
    "BEGIN ATOMIC function": [
        "CREATE FUNCTION f_all_tokens() RETURNS bigint LANGUAGE sql BEGIN ATOMIC "
        "SELECT SUM(total_tokens) FROM llm_usage_events; END"
    ],
    "RLS policy": ["CREATE POLICY p_small ON llm_usage_events USING (total_tokens < 1000000000)"],
    "CHECK constraint": [
        "ALTER TABLE llm_usage_events ADD CONSTRAINT c_not_negative CHECK (total_tokens >= 0)",
    ],
}
NAMES = {
    "view": "view v_totals",
    "materialized view": "materialized view mv_totals",
    "rule": "rule r_big",
    "BEGIN ATOMIC function": "function f_all_tokens()",
    "RLS policy": "policy p_small",
    "CHECK constraint": "constraint c_not_negative",
}


@pytest.mark.parametrize("cause", CAUSES)
def test_an_object_depending_on_total_tokens_makes_it_the_batched_update_and_the_log_says_so(db_url, cause):
    build(db_url, "create_all_build144")  # total_tokens already there, so something can depend on it
    execute(db_url, *CAUSES[cause])
    log = alembic(db_url, "upgrade", "head").stderr
    fallback = [line for line in log.splitlines() if FALLBACK in line]
    assert fallback and NAMES[cause] in fallback[0] and "depend" in fallback[0], log
    assert REWRITE not in log
    assert totals(db_url) == expected("create_all_build144")


@pytest.mark.parametrize(
    "statements, named",
    [
        (
            audit_trigger("t_audit"),
            "trigger t_audit must run on each UPDATE",
        ),
        (["CREATE PUBLICATION pub_usage FOR TABLE llm_usage_events"], "publication pub_usage replicates UPDATEs"),
    ],
    ids=["update trigger", "publication"],
)
def test_what_needs_each_update_makes_it_the_batched_update(db_url, statements, named):
    build(db_url, "pre_build144")
    execute(db_url, *statements)
    log = alembic(db_url, "upgrade", "head").stderr
    assert FALLBACK in log and named in log, log
    assert totals(db_url) == expected("pre_build144")


def test_a_table_whose_row_type_another_table_uses_is_one_sentence_on_either_path(db_url):
    build(db_url, "pre_build144")
    execute(db_url, "CREATE TABLE snapshots (event llm_usage_events)")  # PostgreSQL refuses even the ADD COLUMN
    before = token_rows(db_url)
    message = fails(db_url, "upgrade", "head")
    assert "snapshots.event" in message and message.endswith("nothing was changed."), message
    assert token_rows(db_url) == before


def test_a_check_the_new_totals_violate_is_one_sentence_and_nothing_changes(db_url):
    rows = [(100, 50, 0), (1, 2, 3), (None, None, 40)]
    build(db_url, "create_all_build144", rows)
    execute(db_url, "ALTER TABLE llm_usage_events ADD CONSTRAINT c_below_100 CHECK (total_tokens < 100)")
    before = token_rows(db_url)
    message = fails(db_url, "upgrade", "head")
    assert "c_below_100" in message and message.endswith("nothing was changed."), message
    assert token_rows(db_url) == before


PARTITIONED = [
    "CREATE TABLE llm_usage_events (id INTEGER NOT NULL, provider VARCHAR NOT NULL, model VARCHAR NOT NULL, "
    "run_id VARCHAR, phase_id VARCHAR, role VARCHAR NOT NULL, prompt_tokens INTEGER NOT NULL, "
    "completion_tokens INTEGER NOT NULL, created_at TIMESTAMP NOT NULL, is_doctor_call BOOLEAN NOT NULL, "
    "doctor_model VARCHAR, doctor_action VARCHAR, PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at)",
    "CREATE TABLE llm_usage_events_p202511 PARTITION OF llm_usage_events "
    "FOR VALUES FROM ('2025-11-01') TO ('2025-12-01')",
    "CREATE TABLE llm_usage_events_default PARTITION OF llm_usage_events DEFAULT",
    "INSERT INTO llm_usage_events SELECT i, 'p', 'm', NULL, NULL, 'builder', i, 2 * i, "
    "TIMESTAMP '2025-11-20' + i * INTERVAL '1 day', false, NULL, NULL FROM generate_series(1, 40) AS i",
]
INHERITED = [
    "CREATE TABLE llm_usage_events_archive () INHERITS (llm_usage_events)",
    "INSERT INTO llm_usage_events_archive (id, provider, model, role, prompt_tokens, completion_tokens, created_at, "
    "is_doctor_call) SELECT 1000 + i, 'p', 'm', 'r', i, 1, now(), false FROM generate_series(1, 30) AS i",
    *audit_trigger("t_archive_audit", "llm_usage_events_archive"),
]


def test_a_publication_of_a_partitioned_tables_leaves_makes_it_the_batched_update(db_url):
    execute(db_url, *PARTITIONED, "CREATE PUBLICATION pub_leaves FOR TABLE llm_usage_events")  # lists the leaves
    log = alembic(db_url, "upgrade", "head").stderr
    assert FALLBACK in log and "publication pub_leaves" in log, log
    assert {i: t for i, (t,) in token_rows(db_url, ("total_tokens",)).items()} == {i: 3 * i for i in range(1, 41)}


def test_an_update_trigger_on_an_inheriting_child_makes_it_the_batched_update_and_it_fires(db_url):
    build(db_url, "pre_build144")
    execute(db_url, *INHERITED)
    log = alembic(db_url, "upgrade", "head").stderr
    assert FALLBACK in log and "trigger t_archive_audit" in log, log
    assert scalar(db_url, "SELECT COUNT(*) FROM audit") == 30  # each child row the backfill filled
    assert scalar(db_url, "SELECT SUM(total_tokens) FROM ONLY llm_usage_events_archive") == sum(range(1, 31)) + 30


def test_a_disabled_trigger_does_not_stop_the_rewrite(db_url):
    build(db_url, "pre_build144")
    execute(db_url, *audit_trigger("t_audit"), "ALTER TABLE llm_usage_events DISABLE TRIGGER t_audit")
    log = alembic(db_url, "upgrade", "head").stderr
    assert REWRITE in log and FALLBACK not in log, log
    assert scalar(db_url, "SELECT COUNT(*) FROM audit") == 0
    assert totals(db_url) == expected("pre_build144")


def test_nothing_to_fill_rewrites_nothing(db_url):
    build(db_url, "old_script", [(100, 50, 150), (0, 0, 0)])  # every total already there
    relfilenode = "SELECT relfilenode FROM pg_class WHERE relname = 'llm_usage_events'"
    before = scalar(db_url, relfilenode)
    log = alembic(db_url, "upgrade", "head").stderr
    assert "Backfilled 0 rows: no row needs a total, the table was not rewritten" in log, log
    assert scalar(db_url, relfilenode) == before and totals(db_url) == [150, 0]


def test_a_trigger_on_a_partitioned_parent_is_named_and_counted_once(db_url):
    execute(
        db_url,
        *PARTITIONED,
        *audit_trigger("t_audit"),
    )  # PostgreSQL clones it onto each partition
    log = alembic(db_url, "upgrade", "head").stderr
    assert "trigger t_audit must run on each UPDATE" in log, log
    assert "fired trigger t_audit 40 times each (40 firings)" in log, log
    assert scalar(db_url, "SELECT COUNT(*) FROM audit") == 40
