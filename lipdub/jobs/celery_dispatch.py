"""Scale-out mode: the studio submits jobs to Celery over Redis; ``lipdub worker`` processes render them.

The job store (any SQLAlchemy URL; PostgreSQL across machines) stays the source of truth for a job's
state, progress and result; the broker only carries "render job <id>" messages. So:

* The server keeps an *outbox* table of the jobs it has sent: a sweep thread sends every queued job
  not in it yet (a job created while Redis was down is sent later, and two servers never send one twice).
* A worker takes a job over with one guarded UPDATE (a new run token), then renders it exactly as the
  embedded mode does: :meth:`LocalDispatcher.run_claimed` runs ``python -m lipdub.jobs.child`` (which
  calls :func:`~lipdub.jobs.runner.run_job`), so progress, logs, cancel and crash handling are shared.
* A worker touches its job row every 5 s while it renders. The server's sweep watches those heartbeats:
  a running job whose heartbeat has not moved for 30 s (its worker was killed) is put back in the queue
  under a void run token, in the same transaction as its outbox row is dropped, so the sweep sends it
  again at once and any live worker renders it (attempts + 1). The dead attempt's writes are refused.
* Messages are also acknowledged late, the last resort when no server is running: Redis hands a dead
  worker's message to another worker after ``visibility_timeout``, and that delivery takes the job over
  if its heartbeat went stale. A delivery of a job whose owner is alive (a late redelivery, or one the
  sweep already re-sent) is retried later instead of dropped, and a finished job is never rendered again.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import DateTime, String, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lipdub.errors import ConfigError
from lipdub.jobs.recovery import STALE_AFTER_S, HeartbeatWatch, requeue_stale
from lipdub.jobs.storage import LocalStorage, Storage
from lipdub.jobs.store import (
    CANCELLED,
    FAILED,
    FINISHED,
    MAX_ATTEMPTS,
    QUEUED,
    RUNNING,
    JobRow,
    JobStore,
    utcnow,
)

if TYPE_CHECKING:
    from celery import Celery

    from lipdub.jobs.service import Settings, Studio

log = logging.getLogger(__name__)

SCALE_EXTRA = "lipdub[scale]"  # the optional dependencies of this module: Celery, Redis, psycopg

TASK_NAME = "lipdub.render"
DEFAULT_QUEUE = "lipdub"
# Redis re-delivers a message its consumer has not acknowledged after this long. It must exceed the
# longest render: a live job older than this gets a second delivery (which then waits, see below).
DEFAULT_VISIBILITY_TIMEOUT_S = 2 * 3600
# A worker touches its job row every HEARTBEAT_S while it renders; a row untouched for STALE_AFTER_S
# belongs to a dead worker and is re-sent (both in lipdub/jobs/recovery.py).
SWEEP_S = 5.0  # how often the server re-checks for queued jobs it has not sent and for dead workers' jobs


class _OutboxBase(DeclarativeBase):
    pass


class OutboxRow(_OutboxBase):
    """A job the server has handed to the broker (its own table: the job models stay untouched)."""

    __tablename__ = "celery_outbox"
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# -- configuration -------------------------------------------------------------------------------


def normalize_db_url(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; use psycopg 3 (the declared extra) when that is
    what is installed, so the URL from the issue/docs works as written."""
    if url.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None:
            if importlib.util.find_spec("psycopg") is None:
                raise ConfigError("A PostgreSQL job store needs psycopg, which is not installed; install it "
                                  f"with: pip install '{SCALE_EXTRA}'")
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_storage(spec: str | os.PathLike) -> Storage:
    """The shared storage a worker and the server agree on. Today a mounted directory (NFS or
    similar); an ``s3://`` store plugs in here (and in the render child) later."""
    text = str(spec)
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"Unsupported storage {text!r}: give a directory every machine mounts.")
    return LocalStorage(text.removeprefix("file://"))


def redact(url: str) -> str:
    """A broker/database URL without its password, for logs and the UI."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"


def make_celery(broker: str, *, visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT_S,
                queue: str = DEFAULT_QUEUE) -> Celery:
    """The Celery app used by both sides (the server only sends; workers also register the task)."""
    try:
        from celery import Celery
    except ImportError:
        raise ConfigError("Scale-out (--broker, `lipdub worker`) needs Celery, which is not installed; install "
                          f"it with: pip install '{SCALE_EXTRA}'") from None

    app = Celery("lipdub", broker=broker, set_as_current=False)
    vt = float(visibility_timeout)
    app.conf.update(
        task_acks_late=True,  # a job is acknowledged only once rendered: a dead worker's job comes back
        task_reject_on_worker_lost=True,  # ... also when a pool child dies (prefork), not only the node
        worker_prefetch_multiplier=1,  # a busy worker holds no second job that an idle one could take
        task_ignore_result=True,  # results live in the job store, not in a result backend
        task_default_queue=queue,
        task_routes={TASK_NAME: {"queue": queue}},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,  # keep lipdub's ``[INFO] ...`` log format
        worker_send_task_events=False,
        broker_transport_options={
            "visibility_timeout": vt,
            # Kombu sweeps for abandoned messages every interval*throttle seconds (100 s by default);
            # make it a fraction of the visibility timeout so recovery is not dominated by the sweep.
            "unacked_restore_interval": max(1.0, min(10.0, vt / 4)),
            "unacked_restore_throttle": 1,
        },
    )
    return app


# -- taking a job over (worker side) -------------------------------------------------------------


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


# -- the worker ----------------------------------------------------------------------------------


@dataclass
class WorkerContext:
    store: JobStore
    storage: Storage
    device: str  # resolved, e.g. "cuda:0" or "cpu"
    name: str


_context: WorkerContext | None = None


def register_task(app: Celery) -> Any:
    """Register the render task on ``app`` (workers only). The task renders one job by id."""

    @app.task(name=TASK_NAME, bind=True, max_retries=None, acks_late=True, ignore_result=True)
    def render(self: Any, job_id: str) -> str:
        ctx = _context
        if ctx is None:
            raise RuntimeError("lipdub render task called outside `lipdub worker`")
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
    from lipdub.jobs.runner import LocalDispatcher

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
    global _context
    from lipdub.device import select_device

    # Logs "Using device: ...". This process only supervises render children: it holds no CUDA context.
    dev = select_device(device, in_process=False)
    dev_spec = dev.spec  # the resolved GPU, index included: every render of this worker uses it
    store = JobStore(normalize_db_url(db))
    _OutboxBase.metadata.create_all(store.engine)
    stor = open_storage(storage)
    host = socket.gethostname()
    node = name or f"lipdub-{dev_spec.replace(':', '')}-{os.getpid()}@{host}"
    _context = WorkerContext(store=store, storage=stor, device=dev_spec, name=f"{node} pid {os.getpid()}")
    app = make_celery(broker, visibility_timeout=visibility_timeout, queue=queue)
    register_task(app)
    log.info("Worker %s: broker %s, store %s, storage %s, queue %s, visibility timeout %.0f s.", node,
             redact(broker), redact(store.url), stor.root, queue, visibility_timeout)
    try:
        # solo pool: the task runs in this process and only supervises the render child, so one
        # process is one job slot on one device; killing this process kills its render too.
        app.worker_main(["worker", "--pool=solo", "--concurrency=1", f"--hostname={node}", f"--queues={queue}",
                         f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"])
    finally:
        store.dispose()


# -- the server ----------------------------------------------------------------------------------


class CeleryDispatcher:
    """The server's dispatcher in scale-out mode: sends queued jobs to Celery, renders nothing."""

    def __init__(self, store: JobStore, broker: str, *, queue: str = DEFAULT_QUEUE,
                 app: Celery | Any | None = None, sweep_s: float = SWEEP_S) -> None:
        self.store = store
        self.broker = broker
        self.queue = queue
        self.app = app if app is not None else make_celery(broker, queue=queue)
        self.sweep_s = sweep_s
        _OutboxBase.metadata.create_all(store.engine)
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


def celery_studio(studio_cls: type[Studio], settings: Settings) -> Studio:
    """A studio whose jobs are rendered by ``lipdub worker`` processes (``--broker`` given)."""
    assert settings.broker_url
    if settings.db_url:
        settings.db_url = normalize_db_url(settings.db_url)
    studio = studio_cls(settings, device_description=f"Celery workers via {redact(settings.broker_url)}",
                        device_kind="celery")
    studio.dispatcher = CeleryDispatcher(studio.store, settings.broker_url)
    return studio

