"""`autopack plan` says what the upgrade (or the downgrade) would do to this database, from the table as it is, and
changes nothing: the state, the engine's way, each preflight check's verdict, the rows to fill or set aside; exit 0
when the run would proceed, 1 when it would be refused (in the sentence the run itself would fail with); and
`verify --json` / `plan --json` give stable keys."""

import fcntl
import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from support import (
    ROOT,
    alembic,
    columns_of,
    current,
    event_row,
    execute,
    fails,
    insert_events,
)

WAYS = {"sqlite": "edited in place", "postgresql": "one table rewrite", "mysql": "computes every total as it copies"}
PLAN_KEYS = {
    "version",
    "direction",
    "database",
    "engine",
    "mode",
    "transactional_ddl",
    "revision",
    "state",
    "schema_change",
    "path",
    "rows",
    "rows_to_change",
    "set_aside_to_restore",
    "estimate_s",
    "checks",
    "proceeds",
}
VERIFY_KEYS = [
    "total_tokens_exists_and_is_not_null",
    "prompt_tokens_completion_tokens_nullable",
    "id_generated_by_the_database",
    "revision_is_0002_or_later",
    "total_tokens_populated",
    "total_only_rows_well_formed",
    "totals_match_their_splits",
]


def autopack(url: URL | str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url if isinstance(url, str) else url.render_as_string(hide_password=False)}
    command = [sys.executable, "-m", "autopack", *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def seeded_at_0001(db_url: URL, rows: list[dict]) -> None:
    alembic(db_url, "upgrade", "0001")
    engine = create_engine(db_url)
    with engine.begin() as connection:
        insert_events(connection, rows)
    engine.dispose()


def test_plan_of_an_upgrade_counts_what_it_would_do_and_changes_nothing(db_url: URL):
    rows = [event_row(i, prompt_tokens=i, completion_tokens=2 * i) for i in range(1, 8)]
    rows += [event_row(8, prompt_tokens=0, completion_tokens=0)]  # a split set, sum 0: nothing to fill
    seeded_at_0001(db_url, rows)
    result = autopack(db_url, "plan", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    plan = json.loads(result.stdout)
    assert set(plan) == PLAN_KEYS and plan["version"] == 1 and plan["proceeds"] is True
    assert (plan["direction"], plan["revision"], plan["rows"], plan["rows_to_change"]) == ("upgrade", ["0001"], 8, 7)
    assert plan["state"] == "pre-BUILD-144 (splits NOT NULL, no total_tokens)"
    assert WAYS[db_url.get_backend_name()] in plan["path"], plan["path"]
    assert plan["checks"] and all(check["ok"] and not check["refusal"] for check in plan["checks"])
    assert current(db_url) == "0001" and "total_tokens" not in columns_of(db_url)  # the plan changed nothing
    text_plan = autopack(db_url, "plan")
    assert text_plan.returncode == 0 and text_plan.stdout.rstrip().endswith("The run would proceed.")
    downgrade = autopack(db_url, "plan", "--downgrade", "--json")  # at 0001: not BUILD-144's downgrade
    refused = json.loads(downgrade.stdout)
    assert downgrade.returncode == 1 and refused["rows"] == 8 and refused["path"].startswith("refused: ")


def test_plan_refuses_in_the_sentence_the_upgrade_would_fail_with(db_url: URL):
    seeded_at_0001(db_url, [event_row(1, prompt_tokens=3, completion_tokens=4)])
    execute(
        db_url,
        "DROP INDEX ix_llm_usage_events_is_doctor_call"
        + (" ON llm_usage_events" if "mysql" in db_url.get_backend_name() else ""),
    )
    execute(db_url, "CREATE UNIQUE INDEX ix_llm_usage_events_is_doctor_call ON llm_usage_events (id)")
    result = autopack(db_url, "plan", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    plan = json.loads(result.stdout)
    refused = [check for check in plan["checks"] if not check["ok"]]
    assert plan["proceeds"] is False and len(refused) == 1
    assert refused[0]["refusal"] == fails(db_url, "upgrade", "head")  # the run's own FAILED sentence, word for word
    assert autopack(db_url, "plan").stdout.rstrip().endswith(refused[0]["refusal"])


def test_plan_of_a_downgrade_counts_the_rows_it_would_set_aside(db_url: URL):
    alembic(db_url, "upgrade", "head")
    engine = create_engine(db_url)
    with engine.begin() as connection:
        insert_events(
            connection, [event_row(i, prompt_tokens=i, completion_tokens=i, total_tokens=2 * i) for i in range(1, 4)]
        )
        insert_events(connection, [event_row(i, total_tokens=100 + i) for i in range(4, 6)])  # total-only
        connection.execute(text("UPDATE llm_usage_events SET total_tokens = 999 WHERE prompt_tokens = 1"))  # not a sum
    engine.dispose()
    result = autopack(db_url, "plan", "--downgrade", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    plan = json.loads(result.stdout)
    assert (plan["direction"], plan["rows"], plan["rows_to_change"], plan["proceeds"]) == ("downgrade", 5, 3, True)
    assert current(db_url) == "0002 (head)" and "total_tokens" in columns_of(db_url)


def test_plan_takes_no_migration_lock(tmp_path):
    url = URL.create("sqlite", database=str(tmp_path / "app.db"))
    seeded_at_0001(url, [event_row(1, prompt_tokens=1, completion_tokens=1)])
    with open(tmp_path / "app.db.migration-lock", "a") as held:  # a migration running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = autopack(url, "plan", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["rows_to_change"] == 1, result.stderr


def test_verify_json_has_stable_keys_and_the_failing_check(db_url: URL):
    alembic(db_url, "upgrade", "head")
    engine = create_engine(db_url)
    with engine.begin() as connection:
        insert_events(connection, [event_row(1, prompt_tokens=2, completion_tokens=3, total_tokens=9)])  # stale
    engine.dispose()
    result = autopack(db_url, "verify", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    found = json.loads(result.stdout)
    assert set(found) == {"version", "database", "ok", "checks", "warnings"} and found["ok"] is False
    assert [check["key"] for check in found["checks"]] == VERIFY_KEYS
    failing = [check["key"] for check in found["checks"] if not check["ok"]]
    assert failing == ["totals_match_their_splits"]
    assert "1 rows whose total_tokens is not prompt + completion" in found["checks"][-1]["detail"]


def test_verify_json_reports_a_database_it_cannot_check(tmp_path):
    result = autopack(URL.create("sqlite", database=str(tmp_path / "missing.db")), "verify", "--json")
    assert result.returncode == 3 and result.stderr.startswith("error: No SQLite database at ")
    assert json.loads(result.stdout) == {
        "version": 1,
        "ok": False,
        "error": result.stderr.removeprefix("error: ").strip(),
    }


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stdout.strip().splitlines()[-1]


def test_plan_refuses_another_trees_revision_as_the_upgrade_does_and_verify_fails_it(db_url: URL):
    seeded_at_0001(db_url, [event_row(1, prompt_tokens=2, completion_tokens=3)])
    execute(db_url, "UPDATE alembic_version SET version_num = '001_initial_schema'")  # upstream's own tree
    planned = autopack(db_url, "plan")
    assert planned.returncode == 1, planned.stdout + planned.stderr
    refused = fails(db_url, "upgrade", "head")
    assert last_line(planned) == f"The run would be refused: {refused}", planned.stdout
    assert "which this migrations tree does not know" in refused
    assert autopack(db_url, "plan", "--downgrade").returncode == 1
    alembic(db_url, "upgrade", "head", AUTOPACK_VERSION_TABLE="build144_alembic_version")  # its own table now
    checked = autopack(db_url, "verify")  # without the variable: alembic_version holds the other tree's revision
    assert checked.returncode == 1, checked.stdout
    line = next(x for x in checked.stdout.splitlines() if "revision is 0002 or later" in x)
    assert line.lstrip().startswith("FAIL") and "a revision of another Alembic tree" in line, line


# a session or file the migration cannot write to, as an operator's URL can make it on each engine
READ_ONLY = {
    "sqlite": lambda url: f"sqlite:///file:{url.database}?mode=ro&uri=true",
    "postgresql": lambda url: url.update_query_dict({"options": "-c default_transaction_read_only=on"}),
    "mysql": lambda url: url.update_query_dict({"init_command": "SET SESSION TRANSACTION READ ONLY"}),
}


def test_plan_and_the_upgrade_refuse_a_read_only_session_alike_before_any_change(db_url: URL):
    seeded_at_0001(db_url, [event_row(1, prompt_tokens=2, completion_tokens=3)])
    read_only = READ_ONLY[db_url.get_backend_name()](db_url)
    planned = autopack(read_only, "plan")
    assert planned.returncode == 1, planned.stdout + planned.stderr
    refused = fails(read_only, "upgrade", "head")
    assert last_line(planned) == f"The run would be refused: {refused}", (planned.stdout, refused)
    assert refused.endswith("nothing was changed."), refused
    assert "total_tokens" not in columns_of(db_url) and current(db_url).startswith("0001")


def test_plan_refuses_a_sqlite_path_whose_folder_is_missing_as_the_upgrade_does(tmp_path):
    url = URL.create("sqlite", database=str(tmp_path / "no" / "such" / "autopack.db"))
    planned = autopack(url, "plan")
    assert planned.returncode == 1, planned.stdout + planned.stderr
    assert last_line(planned) == f"The run would be refused: {fails(url, 'upgrade', 'head')}", planned.stdout


@pytest.mark.parametrize("backend", ["sqlite"])
def test_plan_on_a_path_with_no_database_yet_says_the_upgrade_creates_it(db_url: URL):
    planned = autopack(db_url, "plan", "--json")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    found = json.loads(planned.stdout)
    assert found["proceeds"] is True and found["mode"] == "default" and "the upgrade creates it" in found["state"]
    assert autopack(db_url, "plan", "--downgrade").returncode == 1
    assert not os.path.exists(db_url.database)  # nothing made on the way


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_sqlite_uri_without_file_is_refused_by_every_command_before_any_file_is_made(db_url: URL):
    alembic(db_url, "upgrade", "0001")
    uri = f"sqlite:///{db_url.database}?mode=ro&uri=true"  # the file: prefix forgotten
    refused = fails(uri, "upgrade", "head")
    assert refused.startswith("DATABASE_URL asks SQLite for a URI (uri=true) but its path does not start with file:")
    env = {**os.environ, "DATABASE_URL": uri}
    for command in (["plan"], ["verify"]):
        ran = subprocess.run(
            [sys.executable, "-m", "autopack", *command], env=env, cwd=ROOT, capture_output=True, text=True
        )
        assert ran.returncode == 3 and "does not start with file:" in ran.stderr, ran.stderr
    assert not [name for name in os.listdir(os.path.dirname(db_url.database)) if "?" in name]  # no x.db?mode=ro
    assert current(db_url).startswith("0001")
