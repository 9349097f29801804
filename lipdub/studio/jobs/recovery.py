"""Finding running jobs that nobody renders any more, by their heartbeat.

Whoever watches a render (the embedded pool's worker thread, or a ``lipdub worker``) touches its job row
every :data:`HEARTBEAT_S` seconds. A row whose heartbeat has not moved for :data:`STALE_AFTER_S`
belongs to a process that died (SIGKILL, power loss, a lost watcher) and is put back in the queue.

Staleness is measured on the observer's own clock, as "the same heartbeat value seen for that long",
never by comparing a timestamp written on one machine with another machine's clock: a worker whose
clock is a minute off is not mistaken for a dead one. The re-queue is one UPDATE guarded by the exact
token and heartbeat that were seen, so a heartbeat that lands meanwhile keeps the job where it is.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from lipdub.studio.jobs.store import QUEUED, JobStore

log = logging.getLogger(__name__)

# A render's watcher touches its job row this often; a row untouched for STALE_AFTER_S belongs to a
# dead process. Six missed beats: a busy database or a paused VM does not look like a death.
HEARTBEAT_S = 5.0
STALE_AFTER_S = float(os.environ.get("LIPDUB_CELERY_STALE_S", "30"))


@dataclass(frozen=True)
class StaleJob:
    id: str
    token: str | None
    beat: datetime  # the heartbeat value that did not move
    worker: str
    silent_s: float  # how long it has been seen unchanged


class HeartbeatWatch:
    """Remembers each running job's last heartbeat value and since when (monotonic) it has not moved."""

    def __init__(self, store: JobStore, stale_after: float = STALE_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.stale_after = stale_after
        self.clock = clock
        self._seen: dict[str, tuple[tuple[str | None, datetime], float]] = {}

    def stale(self, alive_tokens: Collection[str] = ()) -> list[StaleJob]:
        """Running jobs whose heartbeat has not moved for ``stale_after`` seconds of this clock, except
        those whose token is in ``alive_tokens`` (renders this process knows to be alive)."""
        try:
            rows = self.store.running_heartbeats()
        except Exception:
            self._seen.clear()  # what was seen before a gap says nothing about the gap: start again
            raise
        now = self.clock()
        seen: dict[str, tuple[tuple[str | None, datetime], float]] = {}
        found = []
        for job_id, token, beat, worker in rows:
            prev = self._seen.get(job_id)
            since = prev[1] if prev is not None and prev[0] == (token, beat) else now
            seen[job_id] = ((token, beat), since)
            if now - since >= self.stale_after and token not in alive_tokens:
                found.append(StaleJob(job_id, token, beat, worker or "?", now - since))
        self._seen = seen
        return found


def requeue_stale(store: JobStore, watch: HeartbeatWatch, alive_tokens: Collection[str] = (),
                  also: Callable[[Session, str], None] | None = None) -> list[str]:
    """Put back every job whose owner stopped beating; returns the ids re-queued (not those cancelled or
    failed on the way). ``also`` runs in the same transaction as each job's UPDATE."""
    requeued = []
    for job in watch.stale(alive_tokens):
        status = store.requeue_stale(job.id, job.token, job.beat, also=also)
        if status is None:
            continue  # it moved meanwhile (a late heartbeat, a finish): leave it
        log.warning("Job %s: its worker %s has not been heard from for %.0f s; %s.", job.id, job.worker,
                    job.silent_s, "re-queued" if status == QUEUED else f"marked {status}")
        if status == QUEUED:
            requeued.append(job.id)
    return requeued
