"""`lipdub worker`: a Celery worker that renders the studio's jobs, one at a time, on one device."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lipdub.studio.jobs.storage import Storage
from lipdub.studio.jobs.store import JobStore
from lipdub.studio.scaleout.celery_app import (
    DEFAULT_QUEUE,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    TASK_NAME,
    make_celery,
)
from lipdub.studio.scaleout.outbox import create_outbox
from lipdub.studio.scaleout.takeover import take_over
from lipdub.studio.scaleout.urls import normalize_db_url, open_storage, redact

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    store: JobStore
    storage: Storage
    device: str  # resolved, e.g. "cuda:0" or "cpu"
    name: str


def register_task(app: Celery, ctx: WorkerContext) -> Any:
    """Register the render task on ``app`` (workers only): it renders one job by id with ``ctx``."""

    @app.task(name=TASK_NAME, bind=True, max_retries=None, acks_late=True, ignore_result=True)
    def render(self: Any, job_id: str) -> str:
        decision = take_over(ctx.store, job_id, ctx.name)
        if decision.action == "wait":
            # Another live worker owns the job; re-check later rather than drop this delivery (it may
            # be the only message left for the job if that worker dies).
            log.info("Job %s is %s; checking again in %.0f s.", job_id, decision.reason, decision.retry_in)
            raise self.retry(countdown=decision.retry_in)
        if decision.action == "skip":
            log.info("Job %s: nothing to do (%s).", job_id, decision.reason)
            return decision.reason
        return _render(ctx, job_id, decision.token or "")

    return render


def _render(ctx: WorkerContext, job_id: str, token: str) -> str:
    from lipdub.studio.jobs.runner import LocalDispatcher

    log.info("Job %s: rendering on %s.", job_id, ctx.device)
    # The same path as the embedded pool: a render child reporting into the store, watched (and its
    # heartbeat written every HEARTBEAT_S) by this process. The child dies with this process
    # (PR_SET_PDEATHSIG), so a killed worker leaves no orphan render.
    LocalDispatcher(ctx.store, ctx.storage, device=ctx.device).run_claimed(job_id, token, ctx.device)
    job = ctx.store.get(job_id)  # run_claimed logged the outcome; return it as the task's result
    return job.status if job else "deleted"


def run_worker(broker: str, db: str, storage: str, *, device: str = "auto", queue: str = DEFAULT_QUEUE,
               visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT_S, name: str | None = None,
               loglevel: str = "INFO") -> None:
    """Run one Celery worker in the foreground: one job at a time, on one device."""
    from lipdub.device import select_device

    # Logs "Using device: ...". This process only supervises render children: it holds no CUDA context.
    dev = select_device(device, in_process=False)
    dev_spec = dev.spec  # the resolved GPU, index included: every render of this worker uses it
    store = JobStore(normalize_db_url(db))
    create_outbox(store.engine)
    stor = open_storage(storage)
    host = socket.gethostname()
    node = name or f"lipdub-{dev_spec.replace(':', '')}-{os.getpid()}@{host}"
    ctx = WorkerContext(store=store, storage=stor, device=dev_spec, name=f"{node} pid {os.getpid()}")
    app = make_celery(broker, visibility_timeout=visibility_timeout, queue=queue)
    register_task(app, ctx)
    log.info("Worker %s: broker %s, store %s, storage %s, queue %s, visibility timeout %.0f s.", node,
             redact(broker), redact(store.url), stor.root, queue, visibility_timeout)
    try:
        # solo pool: the task runs in this process and only supervises the render child, so one
        # process is one job slot on one device; killing this process kills its render too.
        app.worker_main(["worker", "--pool=solo", "--concurrency=1", f"--hostname={node}", f"--queues={queue}",
                         f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"])
    finally:
        store.dispose()
