"""PostgreSQL ``--sql`` scripts a DBA can sign off: each opens with lock_timeout and statement_timeout (from -x),
is clean under squawk with the repository's ``.squawk.toml``, applies with ``psql -v ON_ERROR_STOP=1 -f`` to give
the rows the live commands give, backfills by the same rewrite (or UPDATE) choice, and a timeout rolls it back."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from support import (
    POSTGRES_BACKENDS,
    ROOT,
    alembic,
    audit_trigger,
    columns_of,
    event_row,
    execute,
    insert_events,
    scalar,
    seed_large,
    token_rows,
)

SCRIPTS = {
    "upgrade head": ("upgrade", "head"),
    "upgrade": ("upgrade", "0001:0002"),
    "downgrade": ("downgrade", "0002:0001"),
}
SQUAWK = Path(sys.executable).with_name("squawk")
TIMEOUT_RULES = ("require-lock-timeout", "require-statement-timeout")
SEED = [(12_500, 3_200), (0, 0), (7, 0), (1_000_000_000, 999_999_999), (0, 450)]
LATER = [(None, None, 18_500), (40, None, 40), (10, 5, 100), (None, None, 0)]  # written once at 0002


def script(*args: str) -> str:
    return alembic("postgresql://postgres@127.0.0.1/unused", *args, "--sql").stdout  # offline: no server read


def squawk(sql: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "script.sql"
    path.write_text(sql)
    config = ["-c", str(ROOT / ".squawk.toml")]
    return subprocess.run([str(SQUAWK), *config, str(path)], capture_output=True, text=True, cwd=tmp_path)


def psql() -> str:
    found = shutil.which("psql")
    if found:
        return found
    import pgserver  # its wheel ships psql beside the server

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql")


def apply_with_psql(url, sql: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "apply.sql"
    path.write_text(sql)
    target = url.set(drivername="postgresql").render_as_string(False)
    return subprocess.run(
        [psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(path), target], capture_output=True, text=True
    )


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_opens_with_both_timeouts_and_is_clean_under_squawk(name, tmp_path):
    sql = script(*SCRIPTS[name])
    head = sql.split("-- Running upgrade")[0] if name != "downgrade" else sql.split("-- Running downgrade")[0]
    assert "SET LOCAL lock_timeout = '10s';" in head and "SET LOCAL statement_timeout = '1h';" in head, head
    result = squawk(sql, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    stripped = "\n".join(line for line in sql.splitlines() if not line.startswith("SET LOCAL lock_timeout"))
    stripped = "\n".join(line for line in stripped.splitlines() if not line.startswith("SET LOCAL statement_timeout"))
    unsafe = squawk(stripped, tmp_path)  # the lint can fail: without the timeouts it does
    assert unsafe.returncode != 0 and all(rule in unsafe.stdout for rule in TIMEOUT_RULES), unsafe.stdout


def test_the_squawk_config_never_ignores_the_timeout_rules_and_says_why_for_each_rule_it_does():
    config = (ROOT / ".squawk.toml").read_text()
    excluded = tomllib.loads(config)["excluded_rules"]
    assert not set(TIMEOUT_RULES) & set(excluded)
    for rule in excluded:
        line = next(line for line in config.splitlines() if f'"{rule}"' in line)
        assert "#" in line and len(line.split("#", 1)[1].strip()) > 20, line


def test_the_timeouts_come_from_x():
    sql = script("-x", "lock_timeout=3s", "-x", "statement_timeout=20 min", "upgrade", "0001:0002")
    assert "SET LOCAL lock_timeout = '3s';" in sql and "SET LOCAL statement_timeout = '20min';" in sql
    assert "SET LOCAL statement_timeout = '0';" in script("-x", "statement_timeout=0", "upgrade", "0001:0002")


def test_the_online_mode_has_no_script_and_says_so():
    result = alembic(
        "postgresql://postgres@127.0.0.1/unused", "-x", "online=true", "upgrade", "0001:0002", "--sql", check=False
    )
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED: ")]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert failed == [
        "FAILED: -x online=true has no --sql script: the online mode commits as it goes and checks the table "
        "between steps, which a script cannot; apply the one-transaction script (without -x online=true), or run "
        "the online command against the database; no script was written."
    ]
    assert "ALTER TABLE" not in result.stdout


def seeded(url) -> None:
    alembic(url, "upgrade", "0001")
    engine = create_engine(url)
    with engine.begin() as connection:
        rows = [event_row(i, prompt_tokens=p, completion_tokens=c) for i, (p, c) in enumerate(SEED)]
        insert_events(connection, rows)
    engine.dispose()


def add_later_rows(url) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        rows = enumerate(LATER)
        insert_events(
            connection,
            [event_row(10 + i, prompt_tokens=p, completion_tokens=c, total_tokens=t) for i, (p, c, t) in rows],
        )
    engine.dispose()


def everything(url) -> list[dict]:
    engine = create_engine(url)
    with engine.connect() as connection:
        found = [dict(r._mapping) for r in connection.execute(text("SELECT * FROM llm_usage_events ORDER BY id"))]
    engine.dispose()
    return found


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_scripts_applied_with_psql_give_the_online_rows_both_ways(new_database, tmp_path):
    online, offline = new_database(), new_database()
    for url in (online, offline):
        seeded(url)
    alembic(online, "-x", "online=true", "upgrade", "head")
    applied = apply_with_psql(offline, script("upgrade", "0001:0002"), tmp_path)
    assert applied.returncode == 0 and "WARNING" not in applied.stderr, applied.stderr
    assert everything(offline) == everything(online)
    assert [r["total_tokens"] for r in everything(offline)] == [p + c for p, c in SEED]
    assert alembic(offline, "current").stdout.strip() == "0002 (head)"

    for url in (online, offline):
        add_later_rows(url)
    upgraded = everything(online)
    alembic(online, "downgrade", "0001")
    assert apply_with_psql(offline, script("downgrade", "0002:0001"), tmp_path).returncode == 0
    assert everything(offline) == everything(online)
    assert alembic(offline, "current").stdout.strip() == "0001"

    alembic(online, "-x", "online=true", "upgrade", "head")
    assert apply_with_psql(offline, script("upgrade", "0001:0002"), tmp_path).returncode == 0
    assert everything(offline) == everything(online) == upgraded  # set-aside rows back exactly


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_the_script_rewrites_the_table_and_keeps_its_size(db_url, tmp_path):
    seed_large(db_url, 20_000)
    splits = token_rows(db_url, ("prompt_tokens", "completion_tokens"))
    size = "SELECT pg_total_relation_size('llm_usage_events')"
    before = scalar(db_url, size)
    # BUILD-144's rewrite
    assert apply_with_psql(db_url, script("upgrade", "0001:0002"), tmp_path).returncode == 0
    after = scalar(db_url, size)
    assert after <= 1.10 * before, (before, after)  # an UPDATE of every row would leave about twice the size
    assert {i: t for i, (t,) in token_rows(db_url, ("total_tokens",)).items()} == {
        i: p + c for i, (p, c) in splits.items()
    }


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_the_script_updates_where_an_update_trigger_must_see_each_row(db_url, tmp_path):
    seeded(db_url)
    execute(
        db_url,
        *audit_trigger("t_audit"),
    )
    assert apply_with_psql(db_url, script("upgrade", "0001:0002"), tmp_path).returncode == 0
    audited = scalar(db_url, "SELECT COUNT(*) FROM audit")
    assert audited == sum(1 for p, c in SEED if p + c)  # fired once per row the backfill filled
    assert [r["total_tokens"] for r in everything(db_url)] == [p + c for p, c in SEED]


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_statement_timeout_mid_rewrite_rolls_the_script_back(db_url, tmp_path):
    seed_large(db_url, 300_000)
    before = token_rows(db_url, ("prompt_tokens", "completion_tokens"))
    sql = script("-x", "statement_timeout=20ms", "upgrade", "0001:0002")
    applied = apply_with_psql(db_url, sql, tmp_path)
    assert applied.returncode != 0 and "statement timeout" in applied.stderr, applied.stderr
    assert token_rows(db_url) == before  # no total_tokens column, splits as they were
    assert alembic(db_url, "current").stdout.strip() == "0001"


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_statement_timeout_mid_rewrite_is_one_sentence_and_nothing_changes(db_url):
    seed_large(db_url, 300_000)
    before = token_rows(db_url)
    result = alembic(db_url, "-x", "statement_timeout=20ms", "upgrade", "head", check=False)
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED: ")]
    assert result.returncode != 0 and "Traceback" not in result.stderr and len(failed) == 1, result.stderr
    assert "-x statement_timeout" in failed[0] and failed[0].endswith("nothing was changed."), failed[0]
    assert token_rows(db_url) == before
    assert alembic(db_url, "current").stdout.strip() == "0001"


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_the_upgrade_head_script_applied_with_psql_builds_what_the_online_command_builds(new_database, tmp_path):
    online, offline = new_database(), new_database()
    alembic(online, "-x", "online=true", "upgrade", "head")
    applied = apply_with_psql(offline, script("upgrade", "head"), tmp_path)
    assert applied.returncode == 0 and "WARNING" not in applied.stderr, applied.stderr
    assert alembic(offline, "current").stdout.strip() == "0002 (head)"

    def shape(url) -> dict:
        return {name: (str(c["type"]), c["nullable"], c["default"]) for name, c in columns_of(url).items()}

    assert shape(offline) == shape(online) and shape(online)["total_tokens"] == ("INTEGER", False, "0")
    assert "No new upgrade operations detected." in alembic(offline, "check").stdout
