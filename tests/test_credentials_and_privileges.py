"""No password is ever printed, and a role or server that cannot make the change ends in one sentence with the
database unchanged."""

import subprocess
import sys
import uuid

import pytest
from sqlalchemy import create_engine, text

from support import (
    MYSQL_BACKENDS,
    POSTGRES_BACKENDS,
    ROOT,
    alembic,
    columns_of,
    event_row,
    execute,
    fails,
    forced_row_security,
    insert_events,
    token_rows,
)

SECRET = "S3cret-Tok3n-xyz"


def everything_printed(url: str, *args: str) -> tuple[int, str]:
    result = alembic(url, *args, check=False)
    return result.returncode, result.stdout + result.stderr


def autopack(url: str, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "autopack", *args],
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": url, "PYTHONPATH": str(ROOT / "src")},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app@127.0.0.1:1/autopack?password={SECRET}",  # libpq and psycopg accept it
        f"postgresql://app@127.0.0.1:1/autopack?sslpassword={SECRET}",
        f"postgresql://app:{SECRET}@127.0.0.1:1/autopack",
        f"postgresql://app:p@ss-{SECRET}@127.0.0.1:1/autopack",  # an unescaped @ in the password
        f"mysql://app:{SECRET}@127.0.0.1:1/autopack",
        f"mysql://app@127.0.0.1:1/autopack?password={SECRET}",
    ],
)
@pytest.mark.parametrize(
    "command", [("upgrade", "head"), ("downgrade", "0001"), ("current",), ("upgrade", "head", "--sql")]
)
def test_no_command_prints_a_password_wherever_the_url_carries_it(url, command):
    status, printed = everything_printed(url, *command)
    assert SECRET not in printed and "ss-" not in printed.replace("ss-word", ""), printed
    if command[-1] != "--sql":
        assert status != 0 and "Traceback" not in printed, printed
    if "p@ss" in url and command[-1] != "--sql":
        assert "must be percent-encoded" in printed


def test_verify_never_prints_a_password():
    for url in (f"postgresql://app@127.0.0.1:1/autopack?password={SECRET}", f"postgresql://app:{SECRET}@127.0.0.1:1/x"):
        status, printed = autopack(url, "verify")
        assert status == 3 and SECRET not in printed and "Traceback" not in printed, printed


def seeded(url):
    alembic(url, "upgrade", "0001")
    engine = create_engine(url)
    with engine.begin() as connection:
        insert_events(connection, [event_row(i, prompt_tokens=10 * i, completion_tokens=i) for i in range(3)])
    engine.dispose()


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
@pytest.mark.parametrize("online", [False, True])
def test_the_application_role_gets_one_sentence_and_no_change_on_postgresql(db_url, online):
    seeded(db_url)
    _application_role_fails(db_url, ["-x", "online=true"] if online else [], "upgrade", "head")


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_the_application_role_gets_one_sentence_on_a_postgresql_downgrade(db_url):
    seeded(db_url)
    alembic(db_url, "upgrade", "head")
    before = token_rows(db_url)
    _application_role_fails(db_url, [], "downgrade", "0001")
    assert token_rows(db_url) == before


def _application_role_fails(db_url, options, *command):
    at = alembic(db_url, "current").stdout.strip()
    columns = set(columns_of(db_url))
    role = f"app_{uuid.uuid4().hex[:8]}"
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN"))
        connection.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"))
    try:
        message = fails(db_url.set(username=role), *options, *command)
        assert message.startswith("The role connected to") and "lacks a privilege" in message, message
        assert "connect as the owner of llm_usage_events" in message and message.endswith("nothing was changed.")
        assert set(columns_of(db_url)) == columns
        assert alembic(db_url, "current").stdout.strip() == at
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP OWNED BY {role}"))
            connection.execute(text(f"DROP ROLE {role}"))
        engine.dispose()


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_a_read_only_connection_gets_one_sentence_on_postgresql(db_url):
    seeded(db_url)
    read_only = db_url.update_query_dict({"options": "-c default_transaction_read_only=on"})
    for args in (("upgrade", "head"), ("-x", "online=true", "upgrade", "head")):
        message = fails(read_only, *args)
        assert "accepts no writes" in message and "run the migration against the primary" in message, message
    assert "total_tokens" not in columns_of(db_url)


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_a_mariadb_user_without_alter_gets_one_sentence(db_url):
    seeded(db_url)
    user = f"app_{uuid.uuid4().hex[:8]}"
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"))
        connection.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {db_url.database}.* TO '{user}'@'%'"))
    try:
        message = fails(db_url.set(username=user, password="pw"), "upgrade", "head")
        assert message.startswith("The role connected to") and "lacks a privilege" in message, message
        assert "total_tokens" not in columns_of(db_url)
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP USER '{user}'@'%'"))
        engine.dispose()


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS)
def test_row_level_security_never_hides_rows_from_the_migration(db_url):
    seeded(db_url)  # three rows: providers anthropic, openai, google
    owner = f"owner_{uuid.uuid4().hex[:8]}"
    execute(db_url, *forced_row_security(owner, "provider = 'anthropic'"))
    engine = create_engine(db_url)
    try:
        as_owner = db_url.set(username=owner)
        message = fails(as_owner, "upgrade", "head")
        assert message.startswith("llm_usage_events on") and "has row-level security that would hide rows" in message
        assert "BYPASSRLS" in message and message.endswith("nothing was changed.")
        assert "total_tokens" not in columns_of(db_url)

        with engine.begin() as connection:
            connection.execute(text(f"ALTER ROLE {owner} BYPASSRLS"))
        alembic(as_owner, "upgrade", "head")
        with engine.connect() as connection:  # as the superuser: every row, hidden ones included, has its total
            totals = connection.execute(
                text(
                    "SELECT provider, total_tokens, prompt_tokens + completion_tokens FROM llm_usage_events ORDER BY id"
                )
            ).all()
        assert len(totals) == 3 and all(t == s for _, t, s in totals)
        with engine.begin() as connection:
            connection.execute(text(f"ALTER ROLE {owner} NOBYPASSRLS"))
        status, printed = autopack(as_owner.render_as_string(False), "verify")  # never a filtered "all passed"
        assert status == 3 and "row-level security" in printed and "Traceback" not in printed, printed
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP POLICY IF EXISTS tenant ON llm_usage_events"))
            connection.execute(text("ALTER TABLE llm_usage_events OWNER TO CURRENT_USER"))
            connection.execute(text("ALTER TABLE alembic_version OWNER TO CURRENT_USER"))
            connection.execute(text(f"DROP OWNED BY {owner}"))
            connection.execute(text(f"DROP ROLE {owner}"))
        engine.dispose()


@pytest.mark.parametrize("backend", MYSQL_BACKENDS)
def test_verify_on_mariadb_with_a_wrong_password_or_database_is_one_sentence(db_url):
    for url in (db_url.set(password=SECRET), db_url.set(database="no_such_db_here")):
        status, printed = autopack(url.render_as_string(False), "verify")
        assert status == 3 and "Traceback" not in printed and SECRET not in printed, printed
        assert printed.startswith("error: Cannot connect to") and len(printed.strip().splitlines()) == 1
