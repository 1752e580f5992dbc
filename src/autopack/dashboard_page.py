"""The usage dashboard page, ``GET /dashboard``, and the JSON it needs beyond ``/dashboard/usage``.

The page is static HTML with its CSS and JavaScript inline (``dashboard_page.html``, no build step, nothing
fetched from elsewhere: its Content-Security-Policy allows only this server). It holds no data, so it is
served without the key; its script asks for the key, keeps it for the tab only (``sessionStorage``) and
fetches the key-protected JSON with it: ``/dashboard/usage`` (providers with their cap, models) and
``/dashboard/usage/breakdown`` below (tokens per UTC day, and how many tokens were recorded total-only
rather than as an exact split).

Total-only tokens are those of events whose splits are not both known (BUILD-144's total-only events have
both NULL); their usage is in ``total_tokens``, which every figure is summed from, as in ``dashboard.py``.
"""

import base64
import hashlib
import re
from datetime import UTC, date, datetime, timedelta
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from sqlalchemy import BigInteger, and_, case, cast, func, select
from sqlalchemy.orm import Session

from autopack.api_key import require_api_key
from autopack.dashboard import PERIOD_DAYS, known_period, period_start
from autopack.database import get_db
from autopack.usage_recorder import LlmUsageEvent, utcnow

PAGE = files("autopack").joinpath("dashboard_page.html").read_text(encoding="utf-8")


def _csp_hashes(tag: str) -> str:
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", PAGE, flags=re.DOTALL)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)


PAGE_HEADERS = {
    # the page's own inline script and style, and requests to this server: nothing else runs or loads
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hashes('script')}; style-src {_csp_hashes('style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class TokenShares(BaseModel):
    total_tokens: int = Field(description="SUM(total_tokens): total-only events count in full")
    exact_split_tokens: int = Field(description="tokens of events with both prompt and completion tokens known")
    total_only_tokens: int = Field(description="tokens of events recorded with a total only (splits NULL)")
    events: int
    total_only_events: int


class ProviderShares(TokenShares):
    provider: str | None = Field(description="null for rows of a legacy table that allows a NULL provider")


class DayShares(TokenShares):
    day: date = Field(description="a UTC calendar day; the first and last of the period are partial")


class UsageBreakdown(BaseModel):
    period: str
    start: datetime = Field(description="the period's first instant (UTC)")
    end: datetime = Field(description="now (UTC): the period is start <= created_at")
    overall: TokenShares
    providers: list[ProviderShares]
    days: list[DayShares] = Field(description="every UTC day from start to end, days without usage as zeros")


def _sum(expression) -> object:
    # CAST: MySQL's SUM is DECIMAL, which JSON would render as a float
    return cast(func.coalesce(func.sum(expression), 0), BigInteger)


def _shares():
    e = LlmUsageEvent
    exact = and_(e.prompt_tokens.is_not(None), e.completion_tokens.is_not(None))
    return (
        _sum(e.total_tokens).label("total_tokens"),
        _sum(case((exact, e.total_tokens), else_=0)).label("exact_split_tokens"),
        _sum(case((exact, 0), else_=e.total_tokens)).label("total_only_tokens"),
        func.count().label("events"),
        _sum(case((exact, 0), else_=1)).label("total_only_events"),
    )


def usage_breakdown(db: Session, period: str, now: datetime | None = None) -> UsageBreakdown:
    """Per provider and per UTC day of ``period``: total, exact-split and total-only tokens; two GROUP BY queries."""
    end = now or utcnow()
    start = period_start(period, end)
    end = start + timedelta(days=PERIOD_DAYS[period])  # naive UTC, whatever ``now`` was given as
    e = LlmUsageEvent
    providers = [
        ProviderShares(**row._asdict())
        for row in db.execute(
            select(e.provider, *_shares()).where(e.created_at >= start).group_by(e.provider).order_by(e.provider)
        )
    ]
    day = func.date(e.created_at)  # created_at is naive UTC on every engine; SQLite answers 'YYYY-MM-DD'
    empty = dict.fromkeys(TokenShares.model_fields, 0)
    by_day: dict[date, dict] = {}
    for row in db.execute(select(day.label("day"), *_shares()).where(e.created_at >= start).group_by(day)):
        # a writer whose clock runs ahead of this server's: counted today, as in every total, never dropped
        bucket = by_day.setdefault(min(date.fromisoformat(str(row.day)[:10]), end.date()), dict(empty))
        for field in TokenShares.model_fields:
            bucket[field] += getattr(row, field)
    days = [
        DayShares(**{**empty, **by_day.get(d, {}), "day": d})
        for d in (start.date() + timedelta(days=i) for i in range((end.date() - start.date()).days + 1))
    ]
    overall = TokenShares(**{field: sum(getattr(p, field) for p in providers) for field in TokenShares.model_fields})
    return UsageBreakdown(
        period=period,
        start=start.replace(tzinfo=UTC),
        end=end.replace(tzinfo=UTC),
        overall=overall,
        providers=providers,
        days=days,
    )


router = APIRouter()


@router.head("/dashboard", include_in_schema=False)  # as a static page answers (a monitor's check, say)
@router.get("/dashboard", response_class=HTMLResponse, summary="The usage dashboard page (holds no data)")
def dashboard_page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=PAGE_HEADERS)


@router.get("/dashboard/usage/breakdown", dependencies=[Depends(require_api_key)])
def dashboard_usage_breakdown(
    db: Annotated[Session, Depends(get_db)],
    period: Annotated[str, Depends(known_period)],
) -> UsageBreakdown:
    """Per provider and per UTC day: all tokens, those recorded as an exact split and those recorded total-only."""
    return usage_breakdown(db, period)
