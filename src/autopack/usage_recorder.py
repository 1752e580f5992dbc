"""The ``llm_usage_events`` model at the BUILD-144 schema.

``total_tokens`` is always populated (NOT NULL, server default 0) and is the figure every total is
summed from. ``prompt_tokens`` / ``completion_tokens`` are NULL when the provider reported only a
total: a split is never guessed.
"""

from datetime import UTC, datetime

from sqlalchemy import DateTime, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from autopack.database import Base


def utcnow() -> datetime:
    """Naive UTC, as Autopack has always stored ``created_at``."""
    return datetime.now(UTC).replace(tzinfo=None)


class LlmUsageEvent(Base):
    __tablename__ = "llm_usage_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, index=True)
    provider: Mapped[str] = mapped_column(String, index=True)
    model: Mapped[str] = mapped_column(String, index=True)
    run_id: Mapped[str | None] = mapped_column(String, index=True)
    phase_id: Mapped[str | None] = mapped_column(String)
    role: Mapped[str] = mapped_column(String)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    is_doctor_call: Mapped[bool] = mapped_column(default=False)
    doctor_model: Mapped[str | None] = mapped_column(String)
    doctor_action: Mapped[str | None] = mapped_column(String)

    def __repr__(self) -> str:
        return (
            f"LlmUsageEvent(id={self.id}, provider={self.provider!r}, model={self.model!r}, "
            f"prompt={self.prompt_tokens}, completion={self.completion_tokens}, total={self.total_tokens})"
        )
