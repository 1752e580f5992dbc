"""The API: ``uvicorn autopack.main:app``; ``GET /dashboard/usage?period=day|week|month``.

When ``AUTOPACK_API_KEY`` is set, every ``/dashboard`` route requires it in the ``X-API-Key`` header; a key
that is set but empty, or holds characters a header cannot carry, stops the server at start-up (see
``autopack.api_key``). Without it the dashboard is open, so bind the server to localhost
(``--host 127.0.0.1``, uvicorn's default), and only requests addressed to ``localhost``, ``127.0.0.1`` or
``[::1]`` are served (any other ``Host``, as a DNS-rebinding page sends, is a 400). ``/docs`` and
``/openapi.json`` describe the API and hold no
data: they need no key, nor does the page ``GET /dashboard``, which holds no data either (it asks the user for
the key and sends it with its own requests).
"""

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from autopack.api_key import LocalHostsWithoutKey, require_api_key
from autopack.config import RunTokenCapError, run_token_cap
from autopack.dashboard import known_period, undated_usage, usage_by_provider_and_model
from autopack.dashboard_page import router as dashboard_page
from autopack.dashboard_schemas import ERROR_RESPONSES, UsageResponse
from autopack.database import get_db
from autopack.migrations.runtime.errors import first_line
from autopack.settings import RefuseUnusableSettings, unreadable
from autopack.started_settings import schema_behind_at_start_up

__all__ = ["app", "get_db"]

log = logging.getLogger("uvicorn.error")
dashboard = APIRouter(prefix="/dashboard", dependencies=[Depends(require_api_key)])


@dashboard.get("/usage", response_model=UsageResponse, responses=ERROR_RESPONSES)
def dashboard_usage(
    request: Request,
    db: Annotated[Session, Depends(get_db)],
    period: Annotated[str, Depends(known_period)],
) -> UsageResponse:
    """Token sums per provider (each against the run token cap) and per model over the last day, week or month."""
    try:
        cap = run_token_cap(request.scope)
    except RunTokenCapError as error:  # the operator's setting is wrong: say which, never a made-up cap
        log.error("%s", error)
        raise HTTPException(status_code=500, detail=str(error)) from None
    providers, models = usage_by_provider_and_model(db, period, cap_tokens=cap)
    return UsageResponse(providers=providers, models=models, undated=undated_usage(db))


app = FastAPI(title="Autopack usage dashboard")


@app.exception_handler(SQLAlchemyError)
def database_could_not_answer(request: Request, error: SQLAlchemyError) -> JSONResponse:
    """A request the database could not answer (down, or a table not migrated): one log line and one sentence, no
    traceback; answered inside the middleware, so it carries the schema header too."""
    behind = schema_behind_at_start_up(request.scope)
    detail = f"The database could not answer: {first_line(error)}"
    if behind is not None and not unreadable(behind):
        detail += f"; it is not at this release's head (at {behind}): run 'autopack upgrade head'"
    log.error("%s %s: %s", request.method, request.url.path, detail)
    return JSONResponse({"detail": detail}, status_code=500)


app.include_router(dashboard)
app.include_router(dashboard_page)  # GET /dashboard (the page, no data) and /dashboard/usage/breakdown
app.add_middleware(LocalHostsWithoutKey)  # no key: only localhost, 127.0.0.1 and [::1] (DNS rebinding)
app.add_middleware(RefuseUnusableSettings)  # every setting checked at start-up; the revision read
