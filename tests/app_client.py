"""The FastAPI app in-process, its ``get_db`` bound to a test's engine: what the dashboard tests call."""

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from autopack.main import app, get_db


@contextmanager
def app_client(engine: Engine) -> Iterator[TestClient]:
    """A TestClient whose requests read ``engine`` (the test sets or clears AUTOPACK_API_KEY itself)."""

    def session() -> Iterator[Session]:
        with Session(engine) as db:
            yield db

    app.dependency_overrides[get_db] = session
    try:
        yield TestClient(app, base_url="http://127.0.0.1")  # a local host name: served without a key
    finally:
        app.dependency_overrides.clear()
