"""The API: ``uvicorn autopack.main:app``; ``GET /dashboard/usage?period=day|week|month``.

When ``AUTOPACK_API_KEY`` is set, dashboard routes require it in the ``X-API-Key`` header; without it
they are open, so bind the server to localhost (``--host 127.0.0.1``, uvicorn's default).
"""

import os
import secrets
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from autopack.dashboard import PERIOD_DAYS, usage_by_model, usage_by_provider
from autopack.database import get_db

__all__ = ["app", "get_db"]

app = FastAPI(title="Autopack usage dashboard")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(given: Annotated[str | None, Security(api_key_header)]) -> None:
    expected = os.environ.get("AUTOPACK_API_KEY")
    if expected and not (given and secrets.compare_digest(given.encode(), expected.encode())):
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key")


@app.get("/dashboard/usage", dependencies=[Depends(require_api_key)])
def dashboard_usage(
    db: Annotated[Session, Depends(get_db)],
    period: Annotated[str, Query(description="day, week or month")] = "week",
) -> dict:
    if period not in PERIOD_DAYS:
        raise HTTPException(status_code=400, detail=f"unknown period {period!r}: use one of {', '.join(PERIOD_DAYS)}")
    return {"providers": usage_by_provider(db, period), "models": usage_by_model(db, period)}
