"""The API: ``uvicorn autopack.main:app``; ``GET /dashboard/usage?period=day|week|month``.

When ``AUTOPACK_API_KEY`` is set, every ``/dashboard`` route requires it in the ``X-API-Key`` header; a key
that is set but empty, or holds characters a header cannot carry, stops the server at start-up (see
``autopack.api_key``). Without it the dashboard is open, so bind the server to localhost
(``--host 127.0.0.1``, uvicorn's default). ``/docs`` and ``/openapi.json`` describe the API and hold no
data: they need no key.
"""

import logging
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from autopack.api_key import ApiKeyError, RefuseUnusableApiKey, configured_api_key
from autopack.config import RunTokenCapError, run_token_cap
from autopack.dashboard import PERIOD_DAYS, usage_by_model, usage_by_provider
from autopack.dashboard_page import router as dashboard_page
from autopack.dashboard_schemas import UsageResponse
from autopack.database import get_db

__all__ = ["app", "get_db"]

log = logging.getLogger("uvicorn.error")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(given: Annotated[str | None, Security(api_key_header)]) -> None:
    try:
        expected = configured_api_key()
    except ApiKeyError as error:  # only reachable when start-up was skipped (--lifespan off): never serve data
        log.error("%s", error)
        raise HTTPException(
            status_code=500, detail="the server's AUTOPACK_API_KEY is unusable: see the server log"
        ) from None
    if expected is not None and not (given and secrets.compare_digest(given.encode(), expected.encode())):
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key")


dashboard = APIRouter(prefix="/dashboard", dependencies=[Depends(require_api_key)])


@dashboard.get("/usage", response_model=UsageResponse)
def dashboard_usage(
    db: Annotated[Session, Depends(get_db)],
    period: Annotated[str, Query(description="day, week or month")] = "week",
) -> UsageResponse:
    """Token sums per provider (each against the run token cap) and per model over the last day, week or month."""
    if period not in PERIOD_DAYS:
        raise HTTPException(status_code=400, detail=f"unknown period {period!r}: use one of {', '.join(PERIOD_DAYS)}")
    try:
        cap = run_token_cap()
    except RunTokenCapError as error:  # the operator's setting is wrong: say which, never a made-up cap
        log.error("%s", error)
        raise HTTPException(status_code=500, detail=str(error)) from None
    return UsageResponse(providers=usage_by_provider(db, period, cap_tokens=cap), models=usage_by_model(db, period))


app = FastAPI(title="Autopack usage dashboard")
app.include_router(dashboard)
app.include_router(dashboard_page)  # GET /dashboard (the page, no data) and /dashboard/usage/breakdown
app.add_middleware(RefuseUnusableApiKey)
