"""The API's OpenAPI description says what the dashboard routes take and answer: ``period`` as the enum of the
windows it accepts, and the 400 / 401 / 500 answers with their one-sentence ``detail``."""

import pytest
from fastapi.testclient import TestClient

from autopack.dashboard import PERIOD_DAYS
from autopack.main import app


@pytest.mark.parametrize("path", ["/dashboard/usage", "/dashboard/usage/breakdown"])
def test_openapi_lists_the_periods_and_the_error_answers(path: str):
    operation = TestClient(app).get("/openapi.json").json()["paths"][path]["get"]
    (period,) = [p for p in operation["parameters"] if p["name"] == "period"]
    assert period["schema"]["enum"] == list(PERIOD_DAYS) == ["day", "week", "month"]
    assert period["schema"]["default"] == "week"
    for status in ("400", "401", "500"):
        answer = operation["responses"][status]
        schema = answer["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorDetail"}, status
        assert answer["description"]
