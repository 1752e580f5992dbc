"""The shape of ``GET /dashboard/usage``: upstream Autopack's ``dashboard_schemas`` plus our ``events`` counts and
``undated`` line."""

from pydantic import BaseModel, Field


# str | None: a legacy table adopted as it is may allow NULL providers and models; their usage is shown as null
class ProviderUsage(BaseModel):
    provider: str | None
    period: str = Field(description="day, week or month: the window these sums cover")
    prompt_tokens: int = Field(description="sum of prompt_tokens, NULL (total-only events) counted as 0")
    completion_tokens: int = Field(description="sum of completion_tokens, NULL (total-only events) counted as 0")
    total_tokens: int = Field(description="sum of total_tokens: total-only events count in full")
    cap_tokens: int = Field(description="the run token cap (AUTOPACK_RUN_TOKEN_CAP, default 5000000); 0 = no cap")
    percent_of_cap: float = Field(
        description="total_tokens / cap_tokens * 100, not rounded and not clamped (over 100 past the cap); "
        "0.0 when cap_tokens is 0"
    )
    events: int = Field(description="number of usage events in the period")


class ModelUsage(BaseModel):
    provider: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    events: int


class UndatedUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    events: int = Field(description="rows whose created_at gives no instant: 0 on a table only Autopack wrote")


class ErrorDetail(BaseModel):
    detail: str = Field(description="one sentence: what happened and what to do")


# the error answers every data route of the dashboard can give, as OpenAPI documents them
ERROR_RESPONSES: dict[int | str, dict] = {
    400: {"model": ErrorDetail, "description": "an unknown period, or a Host other than localhost with no key set"},
    401: {"model": ErrorDetail, "description": "AUTOPACK_API_KEY is set and X-API-Key is missing or wrong"},
    500: {
        "model": ErrorDetail,
        "description": "a setting is unusable (AUTOPACK_RUN_TOKEN_CAP), or the database could not answer (down, or "
        "not migrated to BUILD-144): the detail says which, in one sentence",
    },
}


class UsageResponse(BaseModel):
    providers: list[ProviderUsage] = Field(description="one row per provider, sorted by provider")
    models: list[ModelUsage] = Field(description="one row per (provider, model), sorted by provider then model")
    undated: UndatedUsage = Field(
        description="every row, of any time, whose created_at gives no instant (NULL, text the database cannot "
        "read as a time, PostgreSQL's infinity, MariaDB's zero dates): in no period, so counted here instead"
    )
