"""The server's dispatcher in scale-out mode: sends queued jobs to Celery and re-sends dead workers' jobs."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from lipdub.studio.jobs.recovery import STALE_AFTER_S, HeartbeatWatch, requeue_stale
from lipdub.studio.jobs.store import FINISHED, QUEUED, RUNNING, JobRow, JobStore, utcnow
from lipdub.studio.scaleout.celery_app import DEFAULT_QUEUE, TASK_NAME, make_celery
from lipdub.studio.scaleout.outbox import OutboxRow, create_outbox
from lipdub.studio.scaleout.urls import redact

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

# How often the server re-checks for queued jobs it has not sent and for dead workers' jobs.
SWEEP_S = 5.0


class CeleryDispatcher:
    """The server's dispatcher in scale-out mode: sends queued jobs to Celery, renders nothing."""

    def __init__(self, store: JobStore, broker: str, *, queue: str = DEFAULT_QUEUE,
                 app: Celery | Any | None = None, sweep_s: float = SWEEP_S) -> None:
        self.store = store
        self.broker = broker
        self.queue = queue
        self.app = app if app is not None else make_celery(broker, queue=queue)
        self.sweep_s = sweep_s
        create_outbox(store.engine)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[str, float] = {}  # worker name -> last time seen (ping or a running job)
        self._watch = HeartbeatWatch(store, STALE_AFTER_S)

    @property
    def workers(self) -> int:
        """Workers seen in the last minute (for /health and the UI banner)."""
        cutoff = time.monotonic() - 60
        return sum(1 for t in self._seen.values() if t > cutoff)

    def start(self) -> None:
        # No requeue_interrupted() here: in this mode a "running" row may be rendering right now on
        # another machine; a dead worker's job is found by its heartbeat (recover_stale) instead.
        self._thread = threading.Thread(target=self._loop, name="lipdub-celery-sender", daemon=True)
        self._thread.start()
        log.info("Sending jobs to Celery at %s (queue %s).", redact(self.broker), self.queue)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def notify(self) -> None:
        self._wake.set()

    def busy(self) -> int:
        return self.store.counts()[RUNNING]

    def _loop(self) -> None:
        last_ping = 0.0
        while not self._stopping.is_set():
            try:
                self.recover_stale()
            except Exception:  # the database may be briefly away; look again next sweep
                log.warning("Could not look for jobs of dead workers", exc_info=True)
            try:
                self.send_pending()
            except Exception:  # the database or broker may be briefly away; try again next sweep
                log.exception("Could not send queued jobs to Celery")
            if time.monotonic() - last_ping > 15:
                last_ping = time.monotonic()
                self._refresh_workers()
            self._wake.wait(self.sweep_s)
            self._wake.clear()

    def recover_stale(self) -> list[str]:
        """Put back the running jobs whose worker stopped beating; :meth:`send_pending` then sends them
        again. Their outbox rows go in the same transaction, so a crash in between loses no job."""

        def unsend(s: Any, job_id: str) -> None:
            s.execute(delete(OutboxRow).where(OutboxRow.job_id == job_id))

        return requeue_stale(self.store, self._watch, also=unsend)

    def send_pending(self) -> list[str]:
        """Send every queued job not sent yet; returns the ids sent. Safe to run from several servers."""
        sent: list[str] = []
        with self.store.session() as s:
            ids = list(s.scalars(select(JobRow.id).where(JobRow.status == QUEUED,
                                                         JobRow.id.not_in(select(OutboxRow.job_id)))
                                 .order_by(JobRow.created_at, JobRow.batch_index, JobRow.id)))
        for job_id in ids:
            try:
                with self.store.session() as s:  # record first: whoever inserts the row sends the job
                    s.add(OutboxRow(job_id=job_id, sent_at=utcnow()))
            except IntegrityError:
                continue
            try:
                self.app.send_task(TASK_NAME, args=[job_id], queue=self.queue)
            except Exception:
                with self.store.session() as s:  # not sent: the next sweep tries again
                    s.execute(delete(OutboxRow).where(OutboxRow.job_id == job_id))
                raise
            sent.append(job_id)
        if sent:
            log.info("Sent %d job(s) to Celery: %s", len(sent), ", ".join(sent))
        # Forget finished jobs (they can never be queued again), keeping the table small.
        with self.store.session() as s:
            s.execute(delete(OutboxRow).where(OutboxRow.job_id.not_in(
                select(JobRow.id).where(JobRow.status.not_in(FINISHED)))))
        return sent

    def _refresh_workers(self) -> None:
        now = time.monotonic()
        try:
            # A worker busy rendering does not answer pings (solo pool): count the owners of running jobs too.
            for reply in self.app.control.ping(timeout=1.0) or []:
                for name in reply:
                    self._seen[name] = now
        except Exception:  # noqa: BLE001 - informational only
            log.debug("Worker ping failed", exc_info=True)
        with self.store.session() as s:
            fresh = utcnow() - timedelta(seconds=STALE_AFTER_S)
            for w in s.scalars(select(JobRow.worker).where(JobRow.status == RUNNING, JobRow.updated_at > fresh)):
                if w:
                    self._seen[w.split(" pid ")[0]] = now
