"""The outbox: the jobs a server has handed to the broker, so that no job is sent twice or never."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lipdub.studio.jobs.store import utcnow


class _OutboxBase(DeclarativeBase):
    pass


class OutboxRow(_OutboxBase):
    """A job the server has handed to the broker (its own table: the job models stay untouched)."""

    __tablename__ = "celery_outbox"
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def create_outbox(engine) -> None:
    """Create the outbox table beside the job tables, where it is missing."""
    _OutboxBase.metadata.create_all(engine)
