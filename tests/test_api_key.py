"""``AUTOPACK_API_KEY`` on the real app under uvicorn: a key that cannot work stops the server, never opens it."""

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from uvicorn_app import serving, start

from autopack.usage_recorder import record_total_only_usage
from support import alembic

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

EMPTY = (
    "AUTOPACK_API_KEY is set but empty: set it to the key clients send in X-API-Key, or unset it to serve the "
    "dashboard without a key on 127.0.0.1 only."
)
UNCARRIABLE = (
    "AUTOPACK_API_KEY contains a character an HTTP header cannot carry (only visible ASCII, no spaces, is "
    "accepted): choose a key of letters, digits and punctuation, e.g. the output of "
    "python -c 'import secrets; print(secrets.token_urlsafe(32))'."
)


@pytest.fixture
def database(db_url):
    """A migrated database holding one event, so that any answer that leaks data would show it."""
    alembic(db_url, "upgrade", "head")
    engine = create_engine(db_url)
    with Session(engine) as db:
        record_total_only_usage(db, provider="google", model="gemini-2.5-pro", role="builder", total_tokens=18_500)
    engine.dispose()
    return db_url.render_as_string(hide_password=False)


def startup_failure(database: str, api_key: str) -> tuple[int, str]:
    server, _ = start(database, api_key)
    try:
        _, stderr = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return server.returncode, stderr


@pytest.mark.parametrize(
    ("api_key", "message"),
    [
        ("", EMPTY),  # a secret that resolved to nothing
        ("   ", EMPTY),
        ("\n", EMPTY),
        ("clé-secrète", UNCARRIABLE),  # headers are latin-1: a UTF-8 key never matches
        ("two words", UNCARRIABLE),
        ("tab\tinside", UNCARRIABLE),
        ("bell\x07", UNCARRIABLE),
    ],
    ids=["empty", "blank", "newline", "non-ascii", "space", "tab", "control"],
)
def test_an_unusable_key_stops_the_server_with_one_sentence(database, api_key, message):
    status, stderr = startup_failure(database, api_key)
    assert status == 3  # uvicorn's "startup failed"
    assert f"ERROR:    {message}\n" in stderr
    assert "Application startup failed. Exiting." in stderr
    assert "Traceback" not in stderr


def test_whitespace_around_the_key_is_ignored(database):
    with serving(database, " s3cret-key\n") as client:  # as a secrets file or `KEY=... ` line leaves it
        assert client.get("/dashboard/usage").status_code == 401
        assert client.get("/dashboard/usage", headers={"X-API-Key": "wrong"}).json() == {
            "detail": "missing or wrong X-API-Key"
        }
        response = client.get("/dashboard/usage?period=month", headers={"X-API-Key": "s3cret-key"})
        assert response.status_code == 200
        assert [(p["provider"], p["total_tokens"]) for p in response.json()["providers"]] == [("google", 18_500)]


def test_docs_and_the_openapi_schema_need_no_key(database):
    with serving(database, "s3cret-key") as client:
        schema = client.get("/openapi.json")
        assert schema.status_code == 200
        assert "/dashboard/usage" in schema.json()["paths"]
        assert client.get("/docs").status_code == 200
        assert client.get("/dashboard/usage").status_code == 401


def test_without_a_key_the_dashboard_is_open(database):
    with serving(database, None) as client:
        response = client.get("/dashboard/usage?period=month")
        assert response.status_code == 200
        assert response.json()["providers"][0]["total_tokens"] == 18_500


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"])
def test_without_a_key_a_local_host_name_is_served(database, host):
    with serving(database, None) as client:
        response = client.get("/dashboard/usage?period=month", headers={"Host": host})
        assert response.status_code == 200 and response.json()["providers"][0]["total_tokens"] == 18_500


@pytest.mark.parametrize("host", ["rebind.attacker.example", "rebind.attacker.example:8000", "127.0.0.1.nip.io"])
def test_without_a_key_a_foreign_host_name_gets_no_data_dns_rebinding(database, host):
    """A page elsewhere that rebinds its own name to 127.0.0.1 still sends that name in Host; posing as the
    in-process test client through X-Forwarded-For (which uvicorn trusts from 127.0.0.1) changes nothing."""
    posing = {"X-Forwarded-For": "testclient:50000"}
    with serving(database, None) as client:
        for path in ("/dashboard/usage?period=month", "/dashboard/usage/breakdown?period=month", "/dashboard"):
            response = client.get(path, headers={"Host": host, **posing})
            assert response.status_code == 400 and "18500" not in response.text, (path, response.text)


def test_with_a_key_a_foreign_host_name_is_served_with_the_key(database):
    with serving(database, "s3cret-key") as client:
        host = {"Host": "usage.internal.example"}
        assert client.get("/dashboard/usage?period=month", headers=host).status_code == 401
        keyed = client.get("/dashboard/usage?period=month", headers={**host, "X-API-Key": "s3cret-key"})
        assert keyed.status_code == 200 and keyed.json()["providers"][0]["total_tokens"] == 18_500


def test_an_empty_key_answers_errors_not_data_even_without_the_startup_check(database):
    with serving(database, "", "--lifespan", "off") as client:
        for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "anything"}):
            response = client.get("/dashboard/usage?period=month", headers=headers)
            assert response.status_code == 500
            assert response.json() == {"detail": "the server's AUTOPACK_API_KEY is unusable: see the server log"}


def test_in_process_test_clients_are_served_without_a_key_as_upstreams_tests_expect(engine, monkeypatch):
    """Upstream Autopack's own dashboard tests call the app through Starlette's TestClient at its default
    ``http://testserver``: no browser or network is involved, so the local-host rule does not apply to them."""
    from fastapi.testclient import TestClient

    from autopack.main import app, get_db

    monkeypatch.delenv("AUTOPACK_API_KEY", raising=False)

    def session():
        with Session(engine) as db:
            yield db

    app.dependency_overrides[get_db] = session
    try:
        response = TestClient(app).get("/dashboard/usage?period=week")
    finally:
        app.dependency_overrides.clear()
    assert response.status_code == 200, response.text
    assert response.json()["providers"] == []
