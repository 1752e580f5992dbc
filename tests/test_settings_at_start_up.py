"""Settings are read and checked once, as `uvicorn autopack.main:app` starts: a value the application cannot run with
stops the server in one sentence naming the variable, before it serves a request (the values accepted are those the
dashboard and the key check accept); and a database that is not at head is one warning line, the server serving
with an `X-Autopack-Schema: behind (at …)` header on every response."""

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from support import ROOT, alembic, event_row, insert_events

UNSET = ("AUTOPACK_API_KEY", "AUTOPACK_RUN_TOKEN_CAP", "RUN_TOKEN_CAP", "DATABASE_URL")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def uvicorn(database: Path, port: int, **settings: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env["DATABASE_URL"] = f"sqlite:///{database}"
    env.update(settings)
    command = [sys.executable, "-m", "uvicorn", "autopack.main:app", "--port", str(port)]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(
    ("settings", "sentence"),
    [
        ({"AUTOPACK_RUN_TOKEN_CAP": "5M"}, "AUTOPACK_RUN_TOKEN_CAP must be a whole number of tokens"),
        ({"AUTOPACK_RUN_TOKEN_CAP": ""}, "AUTOPACK_RUN_TOKEN_CAP must be a whole number of tokens"),
        ({"RUN_TOKEN_CAP": "-1"}, "RUN_TOKEN_CAP must be a whole number of tokens"),
        ({"AUTOPACK_API_KEY": " "}, "AUTOPACK_API_KEY is set but empty"),
        ({"DATABASE_URL": "nonsense"}, "DATABASE_URL is not a database URL SQLAlchemy can read"),
        ({"DATABASE_URL": ""}, "DATABASE_URL is set but empty: set it to the database's URL, or unset it"),
        (  # a URL SQLAlchemy reads, naming a driver this package does not install
            {"DATABASE_URL": "postgresql+psycopg2://app@127.0.0.1/autopack"},
            "The server cannot start: No module named 'psycopg2' (ModuleNotFoundError); check DATABASE_URL",
        ),
    ],
    ids=["cap-unit", "cap-empty", "upstream-cap-negative", "key-empty", "url", "url-empty", "driver-not-installed"],
)
def test_a_setting_the_application_cannot_run_with_stops_the_server_in_one_sentence(
    tmp_path: Path, settings: dict, sentence: str
):
    server = uvicorn(tmp_path / "app.db", free_port(), **settings)
    _, stderr = server.communicate(timeout=60)
    assert server.returncode != 0, stderr
    errors = [line.removeprefix("ERROR:").strip() for line in stderr.splitlines() if line.startswith("ERROR:")]
    assert errors[0].startswith(sentence) and errors[1:] == ["Application startup failed. Exiting."], stderr
    assert "Traceback" not in stderr


def serving(database: Path, **settings: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    server = uvicorn(database, port, **settings)
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/dashboard", timeout=1)
            return server, port
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise AssertionError(server.communicate()[1])


def stop(server: subprocess.Popen) -> str:
    server.terminate()
    return server.communicate(timeout=30)[1]


def test_accepted_settings_start_and_a_database_at_head_serves_without_the_header(tmp_path: Path):
    database = tmp_path / "app.db"
    alembic(f"sqlite:///{database}", "upgrade", "head")
    server, port = serving(database, AUTOPACK_RUN_TOKEN_CAP=" 100000\n")  # a secrets file's newline is accepted
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/dashboard/usage?period=day", timeout=10)
    finally:
        log = stop(server)
    assert response.status_code == 200 and "x-autopack-schema" not in response.headers
    assert response.json()["providers"] == [] and "WARNING" not in log


def test_a_database_behind_head_is_one_warning_line_and_a_header_on_every_response(tmp_path: Path):
    database = tmp_path / "app.db"
    alembic(f"sqlite:///{database}", "upgrade", "0001")
    server, port = serving(database)
    try:
        page = httpx.get(f"http://127.0.0.1:{port}/dashboard", timeout=10)
        docs = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=10)
        usage = httpx.get(f"http://127.0.0.1:{port}/dashboard/usage?period=day", timeout=10)
    finally:
        log = stop(server)
    assert page.headers["x-autopack-schema"] == docs.headers["x-autopack-schema"] == "behind (at 0001)"
    warnings = [line for line in log.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1 and "is at 0001, not this release's head" in warnings[0], log
    assert "autopack upgrade head" in warnings[0]
    # the data routes meet the missing column: one sentence, the header, no traceback
    assert usage.status_code == 500 and usage.headers["x-autopack-schema"] == "behind (at 0001)", usage.text
    detail = usage.json()["detail"]
    assert detail.startswith("The database could not answer: ") and "total_tokens" in detail, detail
    assert detail.endswith("it is not at this release's head (at 0001): run 'autopack upgrade head'"), detail
    assert "Traceback" not in log and detail in log


def test_a_database_that_cannot_be_read_at_start_up_is_said_as_such(tmp_path: Path):
    server, port = serving(tmp_path / "unused.db", DATABASE_URL="postgresql://app@127.0.0.1:1/autopack")
    try:
        usage = httpx.get(f"http://127.0.0.1:{port}/dashboard/usage?period=day", timeout=30)
    finally:
        log = stop(server)
    warnings = [line for line in log.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1 and "The database could not be read as the server started (" in warnings[0], log
    assert "upgrade head" not in warnings[0]  # not a schema to migrate: a server to reach
    assert usage.status_code == 500 and usage.headers["x-autopack-schema"] == "unknown (unreadable at start-up)"
    assert usage.json()["detail"].startswith("The database could not answer: ") and "Traceback" not in log


def test_settings_are_read_by_their_exact_names(monkeypatch):
    from autopack.settings import load_settings

    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("database_url", "sqlite:////elsewhere.db")  # not DATABASE_URL, which the migrations read
    monkeypatch.setenv("autopack_run_token_cap", "5M")
    settings = load_settings()
    assert (settings.database_url, settings.run_token_cap) == ("sqlite:///autopack.db", 5_000_000)


def test_requests_use_the_values_start_up_checked_not_the_environment_of_the_moment(tmp_path: Path, monkeypatch):
    from app_client import app_client
    from sqlalchemy import create_engine

    database = tmp_path / "app.db"
    alembic(f"sqlite:///{database}", "upgrade", "head")
    engine = create_engine(f"sqlite:///{database}")
    with engine.begin() as connection:
        now = datetime.now(UTC).replace(tzinfo=None)
        row = event_row(1, provider="openai", prompt_tokens=30, completion_tokens=20, total_tokens=50, created_at=now)
        insert_events(connection, [row])
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("AUTOPACK_RUN_TOKEN_CAP", "200")
    monkeypatch.setenv("AUTOPACK_API_KEY", "the-key-at-start-up")
    with app_client(engine) as client, client:  # `with client`: the lifespan runs, as under uvicorn
        monkeypatch.setenv("AUTOPACK_RUN_TOKEN_CAP", "5M")  # changed while the server runs: not read again
        monkeypatch.setenv("AUTOPACK_API_KEY", "a-key-set-later")
        assert client.get("/dashboard/usage", headers={"X-API-Key": "a-key-set-later"}).status_code == 401
        served = client.get("/dashboard/usage?period=day", headers={"X-API-Key": "the-key-at-start-up"})
        assert served.status_code == 200, served.text
        (provider,) = served.json()["providers"]
        assert (provider["total_tokens"], provider["cap_tokens"], provider["percent_of_cap"]) == (50, 200, 25.0)
    engine.dispose()
    without_start_up = {"X-API-Key": "a-key-set-later"}  # no lifespan: each request reads the environment
    with app_client(create_engine(f"sqlite:///{database}")) as client:
        assert client.get("/dashboard/usage", headers=without_start_up).status_code == 500  # the 5M cap


def test_an_empty_database_url_is_one_sentence_where_start_up_did_not_run(monkeypatch):
    from fastapi.testclient import TestClient

    from autopack import database
    from autopack.main import app

    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", "")
    database._engine.cache_clear(), database._session_factory.cache_clear()
    try:
        response = TestClient(app).get("/dashboard/usage?period=day")  # no `with`: no start-up, as --lifespan off
    finally:
        database._engine.cache_clear(), database._session_factory.cache_clear()
    assert response.status_code == 500
    assert response.json()["detail"] == (
        "The database could not answer: DATABASE_URL is set but empty: set it to the database's URL, or unset it to "
        "use the embedded default sqlite:///autopack.db."
    )
