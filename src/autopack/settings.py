"""The application's settings, read from the environment with pydantic-settings and checked as the server starts.

- ``DATABASE_URL``: the database (default ``sqlite:///autopack.db``); a URL SQLAlchemy cannot read is refused.
- ``AUTOPACK_API_KEY``: the key every ``/dashboard`` data request must present (``autopack.api_key``'s rules).
- ``AUTOPACK_RUN_TOKEN_CAP`` (or upstream's ``RUN_TOKEN_CAP`` when ours is unset): the run token cap
  (``autopack.config``'s rules).

``uvicorn autopack.main:app`` validates them all at start-up (``RefuseUnusableSettings``): a bad value stops the
server with one sentence naming the variable, before it serves a request. The rules (which values are accepted,
and the sentence for each refusal) are the same as each module's own, which this reuses.
"""

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from autopack.api_key import ENV as API_KEY_ENV
from autopack.api_key import usable_api_key
from autopack.config import DEFAULT_RUN_TOKEN_CAP, RUN_TOKEN_CAP_ENV, UPSTREAM_RUN_TOKEN_CAP_ENV, whole_number_of_tokens
from autopack.database import DEFAULT_DATABASE_URL
from autopack.migrations.runtime.messages import sentence
from autopack.started_settings import keep


class SettingsError(ValueError):
    """A setting the application cannot run with, in one sentence naming the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=True)  # DATABASE_URL, as database_url() reads

    database_url: str = Field(default=DEFAULT_DATABASE_URL, validation_alias="DATABASE_URL")
    api_key: str | None = Field(default=None, validation_alias=API_KEY_ENV)
    run_token_cap: int = Field(
        default=DEFAULT_RUN_TOKEN_CAP, validation_alias=AliasChoices(RUN_TOKEN_CAP_ENV, UPSTREAM_RUN_TOKEN_CAP_ENV)
    )

    @field_validator("database_url", mode="before")
    @classmethod
    def _readable_url(cls, raw: str) -> str:
        if not raw.strip():  # a secret that resolved to nothing: never a new local SQLite file
            raise ValueError(sentence("url_empty"))
        url = raw
        try:
            make_url(url)
        except ArgumentError:
            raise ValueError("DATABASE_URL is not a database URL SQLAlchemy can read: check it") from None
        return url

    @field_validator("api_key", mode="before")
    @classmethod
    def _usable_key(cls, raw: str | None) -> str | None:
        return None if raw is None else usable_api_key(raw)

    @field_validator("run_token_cap", mode="before")
    @classmethod
    def _whole_number(cls, raw: str | int) -> int:
        if isinstance(raw, int):  # the default: pydantic-settings validates defaults too
            return raw
        return whole_number_of_tokens(cls._cap_variable(), raw)

    @staticmethod
    def _cap_variable() -> str:
        import os

        return RUN_TOKEN_CAP_ENV if RUN_TOKEN_CAP_ENV in os.environ else UPSTREAM_RUN_TOKEN_CAP_ENV


def load_settings() -> Settings:
    """The settings as the environment gives them now, or ``SettingsError`` with the first refusal's sentence."""
    try:
        return Settings()
    except ValidationError as error:
        first = error.errors()[0]
        cause = first.get("ctx", {}).get("error")
        raise SettingsError(str(cause) if cause is not None else first["msg"]) from None


# --- at start-up --------------------------------------------------------------------------------------------

SCHEMA_HEADER = "X-Autopack-Schema"


def schema_behind(database: str) -> str | None:
    """None when the database is at this tree's head; else what it is at (``0001``, ``no revision``, ``no database
    yet``, ``unreadable (…)``), read without creating or changing anything."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from autopack.database import make_engine, version_table
    from autopack.migrations.build144.retired_revisions import holding
    from autopack.migrations.runtime.connection import sqlite_path
    from autopack.migrations.runtime.errors import first_line
    from autopack.migrations.tree_config import alembic_config

    url = make_url(database)
    path = sqlite_path(url)
    if url.get_backend_name() == "sqlite" and path is not None and not path.exists():
        return "no database yet"
    config = alembic_config()
    head = ScriptDirectory.from_config(config).get_current_head() if config is not None else None
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": version_table()})
            heads = tuple(holding(h) for h in context.get_current_heads())
    except Exception as error:  # the log line says so; requests meet the same failure in their own sentence
        return f"unreadable ({first_line(error)})"
    finally:
        engine.dispose()
    return None if heads == (head,) else ", ".join(heads) or "no revision"


def cannot_start(error: Exception) -> str:
    """The one sentence uvicorn logs when start-up fails: a setting's own refusal, or what went wrong."""
    if isinstance(error, SettingsError):
        return str(error)
    from autopack.migrations.runtime.errors import first_line

    return (
        f"The server cannot start: {first_line(error)} ({type(error).__name__}); check DATABASE_URL and the "
        "installed drivers."
    )


def unreadable(behind: str) -> bool:
    """``schema_behind`` could not read the database (rather than finding it behind head)."""
    return behind.startswith("unreadable (")


def start_up_warning(behind: str) -> str:
    """The one log line for a database that is not at head as the server starts (or could not be read)."""
    if unreadable(behind):
        return (
            f"The database could not be read as the server started ({behind.removeprefix('unreadable (')[:-1]}): "
            "requests that read it will fail until it can; check DATABASE_URL, the server and the credentials"
        )
    where = {"no database yet": "not created yet (no file at DATABASE_URL's path)", "no revision": "unversioned"}
    return (
        f"The database is {where.get(behind, f'at {behind}')}, not this release's head (BUILD-144): run 'autopack "
        f"upgrade head' (or call init_db()); until then every response carries {SCHEMA_HEADER}: {header(behind)}"
    )


def header(behind: str) -> str:
    return "unknown (unreadable at start-up)" if unreadable(behind) else f"behind (at {behind})"


class RefuseUnusableSettings:
    """ASGI middleware. At start-up: every setting validated (a bad one fails start-up with its sentence, before a
    request is served), then the database's revision read. A database not at head is one warning line, and every
    response carries ``X-Autopack-Schema: behind (at …)`` until the server restarts: the server still serves,
    because the application's own ``init_db()`` (or an online migration in progress, whose expand step old and new
    code share) is the usual way it gets there, and a dashboard that refused to start would crash-loop meanwhile."""

    def __init__(self, app) -> None:
        self.app = app
        self.behind: str | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            try:
                settings = load_settings()
                self.behind = schema_behind(settings.database_url)
            except Exception as error:  # a bad setting, or one start-up cannot use (a driver not installed, ...)
                await receive()  # lifespan.startup
                await send({"type": "lifespan.startup.failed", "message": cannot_start(error)})
                return
            keep(scope, settings, self.behind)  # what requests read from now on: the values checked here
            if self.behind is not None:
                import logging

                logging.getLogger("uvicorn.error").warning(start_up_warning(self.behind))
        if scope["type"] != "http" or self.behind is None:
            await self.app(scope, receive, send)
            return
        value = header(self.behind).encode()

        async def with_header(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (SCHEMA_HEADER.lower().encode(), value)]
            await send(message)

        await self.app(scope, receive, with_header)
