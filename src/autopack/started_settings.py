"""The settings as the server read them at start-up, kept in the ASGI lifespan state (Starlette hands each request
a copy of it as ``request.state``), so that routes and middleware use the values start-up checked instead of
reading the environment again on every request.

Where start-up did not run (Starlette's ``TestClient`` used without ``with``, as upstream Autopack's tests do, or
``uvicorn --lifespan off``), there is nothing here and the callers read the environment themselves, by the same
rules."""

from typing import TYPE_CHECKING

from starlette.types import Scope

if TYPE_CHECKING:
    from autopack.settings import Settings

STATE_KEY = "autopack_settings"
SCHEMA_KEY = "autopack_schema_behind"


def keep(scope: Scope, settings: "Settings", behind: str | None) -> bool:
    """Keep ``settings`` and what start-up found of the schema (None: at head) in the lifespan scope's state; False
    when the server gives no state to keep them in."""
    state = scope.get("state")
    if state is None:
        return False
    state[STATE_KEY] = settings
    state[SCHEMA_KEY] = behind
    return True


def schema_behind_at_start_up(scope: Scope) -> str | None:
    """What start-up found of the schema: None at head (or when start-up did not run), else where it is."""
    return (scope.get("state") or {}).get(SCHEMA_KEY)


def started_settings(scope: Scope) -> "Settings | None":
    """The settings start-up read and checked, or None when start-up did not run."""
    return (scope.get("state") or {}).get(STATE_KEY)
