"""``AUTOPACK_API_KEY``: checked when the server starts, so a key that cannot work never leaves the dashboard open.

Unset: no key (the dashboard is open; bind to 127.0.0.1). Set: whitespace around it is ignored (a secrets
file's trailing newline; HTTP strips it from headers too), and what is left must be non-empty and made of
visible ASCII characters only, the characters an ``X-API-Key`` header carries unchanged.
"""

import logging
import os
import re
import secrets
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from autopack.started_settings import started_settings

ENV = "AUTOPACK_API_KEY"
log = logging.getLogger("uvicorn.error")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_VISIBLE_ASCII = re.compile(r"[!-~]+")


class ApiKeyError(ValueError):
    """``AUTOPACK_API_KEY`` is set to a key no request could present."""


def configured_api_key(scope: Scope | None = None) -> str | None:
    """The key requests must present, ``None`` when none is configured, or ``ApiKeyError`` in one sentence: as
    start-up read it, or from the environment where start-up did not run."""
    started = started_settings(scope or {})
    if started is not None:
        return started.api_key
    raw = os.environ.get(ENV)
    return None if raw is None else usable_api_key(raw)


def usable_api_key(raw: str) -> str:
    """The key ``raw`` sets (whitespace around it ignored), or ``ApiKeyError`` in one sentence."""
    key = raw.strip(" \t\r\n")
    if not key:
        raise ApiKeyError(
            f"{ENV} is set but empty: set it to the key clients send in X-API-Key, or unset it to serve the "
            "dashboard without a key on 127.0.0.1 only."
        )
    if not _VISIBLE_ASCII.fullmatch(key):
        raise ApiKeyError(
            f"{ENV} contains a character an HTTP header cannot carry (only visible ASCII, no spaces, is accepted): "
            "choose a key of letters, digits and punctuation, e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'."
        )
    return key


# the host names a browser on the operator's machine uses for it (any port): a page elsewhere that rebinds its own
# name to 127.0.0.1 (DNS rebinding) still sends its own name in Host, and is refused
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


class LocalHostsWithoutKey:
    """ASGI middleware: without ``AUTOPACK_API_KEY`` the dashboard is open, so only requests addressed to a local
    host name are served (Starlette's ``TrustedHostMiddleware``: any other ``Host`` is a 400); with a key, every
    host name is served and the key decides."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.local_only = TrustedHostMiddleware(app, allowed_hosts=LOCAL_HOSTS, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            keyless = configured_api_key(scope) is None
        except ApiKeyError:  # an unusable key serves no data anyway (RefuseUnusableApiKey, require_api_key)
            keyless = False
        await (self.local_only if keyless and not in_process(scope) else self.app)(scope, receive, send)


def in_process(scope: Scope) -> bool:
    """A request from Starlette's in-process ``TestClient`` at its default ``http://testserver``, as upstream
    Autopack's own dashboard tests send: no browser and no network is involved, so no page can rebind it. Told by
    what only the TestClient sets: ``server`` named ``testserver`` (a server such as uvicorn gives its socket's own
    address, which no request header changes) and its ``http.response.debug`` extension. The ``client`` is not
    enough: uvicorn takes it from ``X-Forwarded-For`` on requests from 127.0.0.1, which a page can send."""
    server = scope.get("server") or ("",)
    return (
        scope.get("type") == "http"
        and server[0] == "testserver"
        and "http.response.debug" in (scope.get("extensions") or {})
    )


def require_api_key(request: Request, given: Annotated[str | None, Security(api_key_header)]) -> None:
    """The rule of every ``/dashboard`` data route: the configured key in ``X-API-Key``, or 401; no key set, open."""
    try:
        expected = configured_api_key(request.scope)
    except ApiKeyError as error:  # only reachable when start-up was skipped (--lifespan off): never serve data
        log.error("%s", error)
        raise HTTPException(
            status_code=500, detail="the server's AUTOPACK_API_KEY is unusable: see the server log"
        ) from None
    if expected is not None and not (given and secrets.compare_digest(given.encode(), expected.encode())):
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key")
