"""The ``llm_usage_events`` model at the BUILD-144 schema, and recording of usage events.

``total_tokens`` is always populated (NOT NULL, server default 0) and is the figure every total is
summed from. ``prompt_tokens`` / ``completion_tokens`` are NULL when the provider reported only a
total: a split is never guessed.
"""

from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import TypedDict, Unpack

from sqlalchemy import DateTime, Dialect, Integer, String, text
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from autopack.database import Base

# The token columns are INTEGER: 32-bit signed on PostgreSQL and MariaDB. SQLite would hold more, but the same
# limit applies on every engine, so an event is stored everywhere or refused everywhere.
INTEGER_MAX = 2**31 - 1

# VARCHAR without a length, as Autopack always declared it; MySQL/MariaDB need one. The recorder holds every engine
# to that length, so an event is stored whole everywhere or refused everywhere.
VARCHAR_LENGTH = 255
Varchar = String().with_variant(String(VARCHAR_LENGTH), "mysql", "mariadb")


def utcnow() -> datetime:
    """Naive UTC, as Autopack has always stored ``created_at``."""
    return datetime.now(UTC).replace(tzinfo=None)


def as_naive_utc(value: datetime) -> datetime:
    """``value`` as naive UTC: an aware datetime is converted, a naive one is taken to be UTC already."""
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


class UtcDateTime(TypeDecorator[datetime]):
    """``DateTime`` (no time zone, as the column is) that binds every value as naive UTC on every engine.

    Left to the drivers, an aware value would be stored as its wall time on SQLite and MariaDB and converted
    through the session's ``TimeZone`` on PostgreSQL; here it is converted to UTC first, identically everywhere,
    in writes and in comparisons alike. Values read back are naive UTC.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return as_naive_utc(value) if isinstance(value, datetime) else value


class LlmUsageEvent(Base):
    __tablename__ = "llm_usage_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, index=True)
    provider: Mapped[str] = mapped_column(Varchar, index=True)
    model: Mapped[str] = mapped_column(Varchar, index=True)
    run_id: Mapped[str | None] = mapped_column(Varchar, index=True)
    phase_id: Mapped[str | None] = mapped_column(Varchar)
    role: Mapped[str] = mapped_column(Varchar)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    is_doctor_call: Mapped[bool] = mapped_column(default=False, index=True)
    doctor_model: Mapped[str | None] = mapped_column(Varchar)
    doctor_action: Mapped[str | None] = mapped_column(Varchar)

    def __repr__(self) -> str:
        return (
            f"LlmUsageEvent(id={self.id}, provider={self.provider!r}, model={self.model!r}, "
            f"prompt={self.prompt_tokens}, completion={self.completion_tokens}, total={self.total_tokens})"
        )


# upstream Autopack's positional order, which callers written for it rely on
POSITIONAL_ORDER = "provider, model, run_id, phase_id, role, total_tokens, prompt_tokens, completion_tokens"
_ORDER_HINT = f" (UsageEventData's positional order is upstream Autopack's: {POSITIONAL_ORDER})"


@dataclass(frozen=True)
class UsageEventData:
    """One LLM call's usage as the provider reported it.

    Fields are in upstream Autopack's positional order (provider, model, run_id, phase_id, role, total_tokens,
    prompt_tokens, completion_tokens, then the doctor fields); ``created_at`` is ours, last. Every field after
    ``model`` has a default so that keyword calls may leave out run_id and phase_id; ``role`` is still required
    (``None`` is refused when the event is recorded).

    Give both splits (an exact split; ``total_tokens`` may be given too and must equal their sum), or
    neither split and a ``total_tokens`` > 0 (total-only). A single split is refused: which share the
    other half was is unknown, and a split is never guessed.
    """

    provider: str
    model: str
    run_id: str | None = None
    phase_id: str | None = None
    role: str | None = None
    total_tokens: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    is_doctor_call: bool = False
    doctor_model: str | None = None
    doctor_action: str | None = None
    created_at: datetime | None = None

    def validated(self) -> "UsageEventData":
        """This record with its total filled in, or ``ValueError`` saying what is wrong."""
        for name in ("provider", "model", "role"):
            value = getattr(self, name)
            if not isinstance(value, str):  # a call in the old positional order leaves role None or a count
                hint = _ORDER_HINT if name == "role" else ""
                raise ValueError(f"{name} must be a non-empty string, got {value!r}{hint}")
            if not value.strip():
                raise ValueError(f"{name} must be a non-empty string")
        for name in ("run_id", "phase_id", "doctor_model", "doctor_action"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string or None, got {value!r}{_ORDER_HINT}")
        for name in STRING_FIELDS:
            _storable(name, getattr(self, name))
        if not isinstance(self.is_doctor_call, bool):  # "no" or 2 would be stored as true, or fail in the driver
            raise ValueError(f"is_doctor_call must be True or False, got {self.is_doctor_call!r}")
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
            if value is not None and value > INTEGER_MAX:
                raise _too_large(f"{name}={value}")
        if self.created_at is not None and not isinstance(self.created_at, datetime):
            raise ValueError(f"created_at must be a datetime (aware, or naive UTC) or None, got {self.created_at!r}")
        prompt, completion, total = self.prompt_tokens, self.completion_tokens, self.total_tokens
        if (prompt is None) != (completion is None):
            raise ValueError(
                "give both prompt_tokens and completion_tokens, or neither (total-only): a single split is "
                "ambiguous and would not be guessed"
            )
        if prompt is None:
            if total is None:
                raise ValueError("no tokens given: an event needs both splits or a total_tokens")
            if total == 0:
                raise ValueError("a total-only event needs total_tokens > 0; record zero usage as splits (0, 0)")
            return self
        if total is not None and total != prompt + completion:
            raise ValueError(
                f"total_tokens={total} disagrees with prompt_tokens + completion_tokens = {prompt + completion}"
            )
        if prompt + completion > INTEGER_MAX:
            raise _too_large(f"prompt_tokens + completion_tokens = {prompt + completion}")
        return replace(self, total_tokens=prompt + completion)


STRING_FIELDS = ("provider", "model", "run_id", "phase_id", "role", "doctor_model", "doctor_action")


def _storable(name: str, value: str | None) -> None:
    """Refuse, the same on every engine, a string one of them would refuse or change: longer than MariaDB's
    ``VARCHAR(255)`` (strict mode refuses it, a server without it cuts it, so two long model ids would merge),
    holding NUL (PostgreSQL cannot store it) or a lone surrogate (no engine can encode it)."""
    if value is None:
        return
    if len(value) > VARCHAR_LENGTH:
        raise ValueError(
            f"{name} is {len(value)} characters, more than the {VARCHAR_LENGTH} its column holds on MariaDB (the "
            f"narrowest engine; refused on every engine alike): shorten it, e.g. {value[:40]!r}..."
        )
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character (\\x00), which PostgreSQL cannot store: remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{name} contains {value[error.start]!r} at position {error.start}, a lone surrogate that no database "
            "can store as text: decode the provider's bytes properly"
        ) from None


def _too_large(what: str) -> ValueError:
    return ValueError(
        f"{what} is more than {INTEGER_MAX}, the most an INTEGER column holds on any engine: check the figure the "
        "provider reported (no single call uses that many tokens), or record the usage as several events"
    )


def record_usage(db: Session, data: UsageEventData) -> LlmUsageEvent:
    """Validate and store one event (exact split or total-only), committing it; nothing is written on error.

    A commit that fails (the database refused the row, the connection dropped) is rolled back before the error
    propagates, so the same session can record the next event; like any rollback, it also discards whatever
    else the caller had left uncommitted in that session.
    """
    valid = data.validated()
    event = LlmUsageEvent(**{f.name: getattr(valid, f.name) for f in fields(valid) if f.name != "created_at"})
    event.created_at = as_naive_utc(valid.created_at) if valid.created_at else utcnow()
    db.add(event)
    try:
        db.commit()
    except DataError as error:  # a value this table cannot hold though every engine's would: a narrower column
        db.rollback()  # or a 3-byte character set made by other code
        raise ValueError(
            f"this table cannot hold a value of the event as given ({str(error.orig).splitlines()[0]}): shorten the "
            "value, or widen the column (or convert the table to utf8mb4); nothing was written"
        ) from error
    except BaseException:
        db.rollback()
        raise
    return event


class EventDetails(TypedDict, total=False):
    """What else an event may carry, by keyword, besides its provider, model, role and tokens."""

    run_id: str | None
    phase_id: str | None
    is_doctor_call: bool
    doctor_model: str | None
    doctor_action: str | None
    created_at: datetime | None


def record_exact_usage(
    db: Session,
    *,
    provider: str,
    model: str,
    role: str,
    prompt_tokens: int,
    completion_tokens: int,
    **details: Unpack[EventDetails],
) -> LlmUsageEvent:
    """Record a call whose provider reported both splits."""
    splits = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    return record_usage(db, UsageEventData(provider=provider, model=model, role=role, **splits, **details))


def record_total_only_usage(
    db: Session, *, provider: str, model: str, role: str, total_tokens: int, **details: Unpack[EventDetails]
) -> LlmUsageEvent:
    """Record a call whose provider reported only a total: splits stay NULL."""
    return record_usage(
        db, UsageEventData(provider=provider, model=model, role=role, total_tokens=total_tokens, **details)
    )


def record_usage_total_only(
    db: Session,
    *,
    provider: str,
    model: str,
    role: str,
    total_tokens: int,
    run_id: str | None = None,
    phase_id: str | None = None,
) -> LlmUsageEvent:
    """:func:`record_total_only_usage` under upstream Autopack's name and signature (its ``service.usage_recording``).

    Unlike upstream's, it returns the stored row and raises on bad input or a failed commit (nothing written)
    rather than returning a success flag.
    """
    return record_total_only_usage(
        db, provider=provider, model=model, role=role, total_tokens=total_tokens, run_id=run_id, phase_id=phase_id
    )
