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
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from autopack.api_key import require_api_key
from autopack.dashboard import PERIOD_DAYS, dialect_of, in_period, known_period, period_start
from autopack.dashboard_schemas import ERROR_RESPONSES
from autopack.dashboard_source import EPOCH, period_source, undated_source
from autopack.database import get_db
from autopack.event_time import group_key, undated, utc_day
from autopack.exact_sums import read_sums, sum_columns
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
    undated: TokenShares = Field(
        description="rows of any time whose created_at gives no instant: in no period or day, counted here"
    )


SHARES = ("total_tokens", "exact_split_tokens", "total_only_tokens", "total_only_events")


def _shares(dialect: str) -> list:
    e = LlmUsageEvent
    exact = and_(e.prompt_tokens.is_not(None), e.completion_tokens.is_not(None))
    sums = sum_columns(
        dialect,
        total_tokens=e.total_tokens,
        exact_split_tokens=case((exact, e.total_tokens), else_=0),
        total_only_tokens=case((exact, 0), else_=e.total_tokens),
        total_only_events=case((exact, 0), else_=1),
    )
    return [*sums, func.count().label("events")]


def _source_shares(source, dialect: str) -> list:
    """``_shares`` of a ``dashboard_source`` row source."""
    c = source.c
    sums = sum_columns(
        dialect,
        total_tokens=c.total_tokens,
        exact_split_tokens=c.exact_split_tokens,
        total_only_tokens=c.total_tokens - c.exact_split_tokens,
        total_only_events=c.total_only_events,
    )
    return [*sums, func.coalesce(func.sum(c.events), 0).label("events")]


def _read(row) -> dict:
    return {**read_sums(row._mapping, SHARES), "events": int(row.events)}


def usage_breakdown(db: Session, period: str, now: datetime | None = None) -> UsageBreakdown:
    """Per provider and per UTC day of ``period``: total, exact-split and total-only tokens; two GROUP BY queries,
    and one for the undated rows (``event_time``), which are in no period."""
    end = now or utcnow()
    start = period_start(period, end)
    end = start + timedelta(days=PERIOD_DAYS[period])  # naive UTC, whatever ``now`` was given as
    e = LlmUsageEvent
    dialect = dialect_of(db)
    source = period_source(db, start)
    if source is not None:  # the hourly aggregate, and the events of the period's first hour
        shares = _source_shares(source, dialect)
        some = func.sum(source.c.events) != 0  # a group whose rows all left is none
        by_provider = select(source.c.provider, *shares).group_by(source.c.provider).having(some)
        by_provider = by_provider.order_by(source.c.provider)
        day = source.c.day
        by_day_query = select(day.label("day"), *shares).group_by(day).having(some)
    else:
        shares = _shares(dialect)
        where = in_period(db, period, end)
        by_provider = select(e.provider, *shares).where(where).group_by(group_key(e.provider, dialect))
        by_provider = by_provider.order_by(e.provider)
        day = utc_day(e.created_at, dialect)
        by_day_query = select(day.label("day"), *shares).where(where).group_by(day)
    providers = [ProviderShares(provider=row.provider, **_read(row)) for row in db.execute(by_provider)]
    empty = dict.fromkeys(TokenShares.model_fields, 0)
    by_day: dict[date, dict] = {}
    for row in db.execute(by_day_query):
        # a writer whose clock runs ahead of this server's: counted today, as in every total, never dropped
        on = (
            (EPOCH + timedelta(days=int(row.day))).date()
            if source is not None
            else date.fromisoformat(str(row.day)[:10])
        )
        bucket = by_day.setdefault(min(on, end.date()), dict(empty))
        for field, value in _read(row).items():
            bucket[field] += value
    days = [
        DayShares(**{**empty, **by_day.get(d, {}), "day": d})
        for d in (start.date() + timedelta(days=i) for i in range((end.date() - start.date()).days + 1))
    ]
    overall = TokenShares(**{field: sum(getattr(p, field) for p in providers) for field in TokenShares.model_fields})
    held = undated_source(db)
    if held is not None:  # the aggregate's bucket of undated rows
        undated_row = db.execute(select(*_source_shares(held, dialect))).one()
    else:
        undated_row = db.execute(select(*shares).where(undated(e.created_at, dialect))).one()
    return UsageBreakdown(
        period=period,
        start=start.replace(tzinfo=UTC),
        end=end.replace(tzinfo=UTC),
        overall=overall,
        providers=providers,
        days=days,
        undated=TokenShares(**_read(undated_row)),
    )


router = APIRouter()


@router.head("/dashboard", include_in_schema=False)  # as a static page answers (a monitor's check, say)
@router.get("/dashboard", response_class=HTMLResponse, summary="The usage dashboard page (holds no data)")
def dashboard_page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=PAGE_HEADERS)


@router.get("/dashboard/usage/breakdown", dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)
def dashboard_usage_breakdown(
    db: Annotated[Session, Depends(get_db)],
    period: Annotated[str, Depends(known_period)],
) -> UsageBreakdown:
    """Per provider and per UTC day: all tokens, those recorded as an exact split and those recorded total-only."""
    return usage_breakdown(db, period)
