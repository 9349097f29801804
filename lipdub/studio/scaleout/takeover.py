"""How a delivery of a job takes it over, whatever an earlier delivery left in its row."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import update

from lipdub.studio.jobs.recovery import STALE_AFTER_S
from lipdub.studio.jobs.store import (
    CANCELLED,
    FAILED,
    FINISHED,
    MAX_ATTEMPTS,
    RUNNING,
    JobRow,
    JobStore,
    utcnow,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Takeover:
    """What a delivery of a job should do: ``run`` (with ``token``), ``wait`` (``retry_in`` s) or ``skip``."""

    action: str
    token: str | None = None
    retry_in: float = 0.0
    reason: str = ""


def take_over(store: JobStore, job_id: str, worker: str, *, stale_after: float = STALE_AFTER_S) -> Takeover:
    """Claim ``job_id`` for this delivery, whatever an earlier delivery left in its row.

    Queued: claim it. Running under a live attempt (heartbeat fresh): wait and look again later.
    Running under a dead attempt (heartbeat stale): take it over with a new token, so the dead
    attempt's writes (should it be alive after all) are refused. Finished or deleted: nothing to do.
    """
    for _ in range(5):
        with store.session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                return Takeover("skip", reason="deleted")
            if row.status in FINISHED:
                return Takeover("skip", reason=row.status)
            now = utcnow()
            guard = [JobRow.id == job_id, JobRow.status == row.status,
                     JobRow.run_token.is_(None) if row.run_token is None else JobRow.run_token == row.run_token]
            if row.cancel_requested:
                s.execute(update(JobRow).where(*guard).values(
                    status=CANCELLED, stage=CANCELLED, finished_at=now, updated_at=now))
                return Takeover("skip", reason=CANCELLED)
            if row.status == RUNNING:
                age = (now - row.updated_at).total_seconds()
                if age < stale_after:
                    return Takeover("wait", retry_in=max(1.0, stale_after - age), reason=f"owned by {row.worker}")
                log.warning("Job %s: its worker %s went silent %.0f s ago; taking it over.", job_id, row.worker, age)
            if row.attempts >= MAX_ATTEMPTS:
                s.execute(update(JobRow).where(*guard).values(
                    status=FAILED, stage=FAILED, finished_at=now, updated_at=now, run_token=None,
                    error=f"The job was interrupted {row.attempts} times; giving up on it."))
                return Takeover("skip", reason=FAILED)
            token = secrets.token_hex(8)
            res = s.execute(update(JobRow).where(*guard).values(
                status=RUNNING, stage="starting", progress=0.0, message="starting", run_token=token,
                worker=worker[:128], started_at=now, updated_at=now, finished_at=None, error=None, result=None,
                attempts=JobRow.attempts + 1))
            if res.rowcount == 1:
                return Takeover("run", token=token)
        # Someone changed the row between our read and our update: look again.
    return Takeover("wait", retry_in=2.0, reason="contended")


def heartbeat(store: JobStore, job_id: str, token: str) -> bool:
    """Mark the attempt holding ``token`` alive; False once it no longer owns the job."""
    return store.heartbeat(job_id, token)
