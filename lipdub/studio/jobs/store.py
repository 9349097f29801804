"""The durable job store: jobs, batches and uploads as rows in any SQLAlchemy database.

SQLite in WAL mode is the default (one file in the data dir); the same code runs on PostgreSQL so that
a later Celery worker on another machine can report progress into the same store. Every state change
is a single UPDATE guarded by the expected state (and the run token of the attempt that owns the
job), so concurrent workers, orphaned render processes and the API never overwrite each other.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)

# A job interrupted this many times (server killed while it ran) is failed instead of re-queued, so a
# job that crashes the whole machine cannot loop forever.
MAX_ATTEMPTS = 5


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    return secrets.token_hex(6)


class Base(DeclarativeBase):
    pass


class UploadRow(Base):
    """A stored input file, named by the SHA-256 of its content; kept while any job refers to it."""

    __tablename__ = "uploads"
    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), default="")
    duration: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class BatchRow(Base):
    __tablename__ = "batches"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    mode: Mapped[str] = mapped_column(String(32))  # "faces" (1 audio x N faces) or "audios" (N x 1)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), index=True, nullable=True)
    batch_index: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), index=True, default=QUEUED)
    stage: Mapped[str] = mapped_column(String(32), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    audio_key: Mapped[str] = mapped_column(ForeignKey("uploads.key"), index=True)
    face_key: Mapped[str] = mapped_column(ForeignKey("uploads.key"), index=True)
    audio_name: Mapped[str] = mapped_column(String(255), default="")
    face_name: Mapped[str] = mapped_column(String(255), default="")
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # Result fields when done


@dataclass
class Job:
    """A detached snapshot of a job row (safe to pass between threads and into templates)."""

    id: str
    status: str
    stage: str
    progress: float
    message: str
    error: str | None
    audio_key: str
    face_key: str
    audio_name: str
    face_name: str
    options: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    attempts: int
    run_token: str | None
    cancel_requested: bool
    batch_id: str | None = None
    batch_index: int = 0
    result: dict[str, Any] | None = field(default=None)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def eta_seconds(self, now: datetime | None = None) -> float | None:
        """Linear estimate from the elapsed time and progress; None until there is enough to go on."""
        if self.status != RUNNING or not self.started_at or self.progress < 0.05:
            return None
        elapsed = ((now or utcnow()) - self.started_at).total_seconds()
        return max(0.0, elapsed * (1.0 - self.progress) / self.progress)


def _snapshot(row: JobRow) -> Job:
    return Job(id=row.id, status=row.status, stage=row.stage, progress=row.progress, message=row.message,
               error=row.error, audio_key=row.audio_key, face_key=row.face_key, audio_name=row.audio_name,
               face_name=row.face_name, options=dict(row.options or {}), created_at=row.created_at,
               started_at=row.started_at, finished_at=row.finished_at, updated_at=row.updated_at,
               attempts=row.attempts, run_token=row.run_token, cancel_requested=row.cancel_requested,
               batch_id=row.batch_id, batch_index=row.batch_index,
               result=dict(row.result) if row.result else None)


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Many processes (server, render children) share the file: WAL lets readers run beside the
        # one writer, and the busy timeout makes writers wait their turn instead of failing.
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001 - DBAPI connection
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            # Take the write lock at BEGIN (pysqlite's lazy BEGIN can fail a read-then-write
            # transaction with "database is locked" without waiting for the busy timeout).
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn):  # noqa: ANN001
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


class JobStore:
    """All reads and writes of jobs, batches and uploads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        # One transaction; SQLite writers queue on the busy timeout instead of failing.
        s = self._session()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def dispose(self) -> None:
        self.engine.dispose()

    # -- uploads ---------------------------------------------------------------------------------

    def add_upload(self, key: str, filename: str, size: int, kind: str = "", duration: float = 0.0,
                   session: Session | None = None) -> None:
        """Record an upload; one recorded before is renewed (the hourly sweep counts an unused upload's
        age from its last use)."""
        if session is None:
            with self.session() as s:
                return self.add_upload(key, filename, size, kind, duration, session=s)
        row = session.get(UploadRow, key)
        if row is None:
            session.add(UploadRow(key=key, filename=filename, size=size, kind=kind, duration=duration,
                                  created_at=utcnow()))
        else:
            row.created_at = utcnow()
        session.flush()

    def upload_keys(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(UploadRow.key)))

    def upload_in_use(self, key: str) -> bool:
        with self.session() as s:
            n = s.scalar(select(func.count()).select_from(JobRow)
                         .where(or_(JobRow.audio_key == key, JobRow.face_key == key)))
            return bool(n)

    def unreferenced_uploads(self, older_than: datetime | None = None) -> list[str]:
        with self.session() as s:
            used = select(JobRow.audio_key).union(select(JobRow.face_key))
            q = select(UploadRow.key).where(UploadRow.key.not_in(used))
            if older_than is not None:
                q = q.where(UploadRow.created_at < older_than)
            return list(s.scalars(q))

    def remove_upload(self, key: str, remove_file: Callable[[], None] | None = None) -> bool:
        """Drop the upload's row (and, through ``remove_file``, its file) unless a job uses it; True when it
        was dropped. The file goes inside the transaction that drops the row: a request recording a job
        on the same content either comes first (and the upload stays) or finds both gone and puts
        them back (:meth:`lipdub.studio.jobs.service.Studio.submit`)."""
        try:
            with self.session() as s:
                used = s.scalar(select(func.count()).select_from(JobRow)
                                .where(or_(JobRow.audio_key == key, JobRow.face_key == key)))
                if used:
                    return False
                row = s.get(UploadRow, key)
                if row is not None:
                    s.delete(row)
                    s.flush()  # a job recorded meanwhile on another connection makes this fail, not the job
                if remove_file is not None:
                    remove_file()
                return row is not None
        except IntegrityError:
            return False

    # -- creating and reading --------------------------------------------------------------------

    def create_job(self, audio_key: str, face_key: str, *, audio_name: str = "", face_name: str = "",
                   options: dict[str, Any] | None = None, batch_id: str | None = None, batch_index: int = 0,
                   session: Session | None = None) -> Job:
        row = JobRow(id=new_id(), audio_key=audio_key, face_key=face_key, audio_name=audio_name,
                     face_name=face_name, options=options or {}, batch_id=batch_id, batch_index=batch_index,
                     status=QUEUED, stage="queued", progress=0.0, message="", attempts=0,
                     cancel_requested=False, created_at=utcnow(), updated_at=utcnow())
        if session is not None:
            session.add(row)
            session.flush()
            return _snapshot(row)
        with self.session() as s:
            s.add(row)
            s.flush()
            return _snapshot(row)

    def create_batch(self, mode: str, items: list[tuple[str, str, str, str]],
                     options: dict[str, Any] | None = None, session: Session | None = None) -> tuple[str, list[Job]]:
        """One transaction for the batch and all its jobs: (audio_key, face_key, audio_name, face_name)."""
        if session is None:
            with self.session() as s:
                return self.create_batch(mode, items, options, session=s)
        batch = BatchRow(id=new_id(), mode=mode, created_at=utcnow())
        session.add(batch)
        session.flush()
        jobs = [self.create_job(a, f, audio_name=an, face_name=fn, options=options, batch_id=batch.id,
                                batch_index=i, session=session)
                for i, (a, f, an, fn) in enumerate(items)]
        return batch.id, jobs

    def get(self, job_id: str) -> Job | None:
        with self.session() as s:
            row = s.get(JobRow, job_id)
            return _snapshot(row) if row else None

    def batch_exists(self, batch_id: str) -> bool:
        with self.session() as s:
            return s.get(BatchRow, batch_id) is not None

    def batch_jobs(self, batch_id: str) -> list[Job]:
        with self.session() as s:
            rows = s.scalars(select(JobRow).where(JobRow.batch_id == batch_id).order_by(JobRow.batch_index))
            return [_snapshot(r) for r in rows]

    def list_batches(self, limit: int = 50) -> list[tuple[str, str, datetime, int]]:
        """(id, mode, created_at, number of jobs), newest first."""
        with self.session() as s:
            q = (select(BatchRow.id, BatchRow.mode, BatchRow.created_at, func.count(JobRow.id))
                 .join(JobRow, JobRow.batch_id == BatchRow.id).group_by(BatchRow.id)
                 .order_by(BatchRow.created_at.desc()).limit(limit))
            return [tuple(r) for r in s.execute(q)]  # type: ignore[misc]

    def list(self, page: int = 1, page_size: int = 20, status: str | None = None,
             batch_id: str | None = None) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and the total count."""
        page, page_size = max(1, page), max(1, min(page_size, 500))
        with self.session() as s:
            q = select(JobRow)
            c = select(func.count()).select_from(JobRow)
            if status:
                q, c = q.where(JobRow.status == status), c.where(JobRow.status == status)
            if batch_id:
                q, c = q.where(JobRow.batch_id == batch_id), c.where(JobRow.batch_id == batch_id)
            total = int(s.scalar(c) or 0)
            rows = s.scalars(q.order_by(JobRow.created_at.desc(), JobRow.id)
                             .offset((page - 1) * page_size).limit(page_size))
            return [_snapshot(r) for r in rows], total

    def counts(self) -> dict[str, int]:
        with self.session() as s:
            out = dict.fromkeys(STATUSES, 0)
            for status, n in s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)):
                out[status] = int(n)
            return out

    def queue_position(self, job: Job) -> int:
        """How many queued jobs are ahead of this one (0: next)."""
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(JobRow).where(
                JobRow.status == QUEUED,
                or_(JobRow.created_at < job.created_at,
                    (JobRow.created_at == job.created_at) & (JobRow.id < job.id)))) or 0)

    # -- the worker's side -----------------------------------------------------------------------

    def claim_next(self, worker: str) -> Job | None:
        """Atomically move the oldest queued job to running and hand out a fresh run token."""
        for _ in range(20):
            with self.session() as s:
                job_id = s.scalar(select(JobRow.id).where(JobRow.status == QUEUED)
                                  .order_by(JobRow.created_at, JobRow.batch_index, JobRow.id).limit(1))
                if job_id is None:
                    return None
                token = secrets.token_hex(8)
                now = utcnow()
                res = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == QUEUED).values(
                    status=RUNNING, stage="starting", progress=0.0, message="starting", run_token=token,
                    worker=worker, started_at=now, updated_at=now, attempts=JobRow.attempts + 1, error=None))
                if res.rowcount == 1:
                    return _snapshot(s.get(JobRow, job_id))  # type: ignore[arg-type]
            # Another worker took it between the select and the update; try the next one.
        return None

    def claim(self, job_id: str, worker: str) -> Job | None:
        """Claim one given queued job (what a Celery task does with the id it was sent); None when
        it is not queued any more (cancelled, deleted, or taken by another worker)."""
        with self.session() as s:
            token, now = secrets.token_hex(8), utcnow()
            res = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == QUEUED).values(
                status=RUNNING, stage="starting", progress=0.0, message="starting", run_token=token,
                worker=worker, started_at=now, updated_at=now, attempts=JobRow.attempts + 1, error=None))
            return _snapshot(s.get(JobRow, job_id)) if res.rowcount == 1 else None  # type: ignore[arg-type]

    def report_progress(self, job_id: str, token: str, stage: str, progress: float, message: str = "") -> bool:
        """Record progress of the attempt holding ``token``; False when that attempt no longer owns the job."""
        with self.session() as s:
            res = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.run_token == token,
                                                 JobRow.status == RUNNING)
                            .values(stage=stage, progress=max(0.0, min(1.0, progress)), message=message[:500],
                                    updated_at=utcnow()))
            return res.rowcount == 1

    def finish(self, job_id: str, token: str | None, status: str, *, error: str | None = None,
               result: dict[str, Any] | None = None, stage: str | None = None) -> bool:
        """Move a running job to done/failed/cancelled; guarded by the run token when one is given."""
        assert status in FINISHED
        values: dict[str, Any] = dict(status=status, error=error, finished_at=utcnow(), updated_at=utcnow(),
                                      stage=stage or status)
        if status == DONE:
            values.update(progress=1.0, result=result, message="done")
        with self.session() as s:
            q = update(JobRow).where(JobRow.id == job_id, JobRow.status == RUNNING)
            if token is not None:
                q = q.where(JobRow.run_token == token)
            return s.execute(q.values(**values)).rowcount == 1

    def is_cancel_requested(self, job_id: str) -> bool:
        with self.session() as s:
            return bool(s.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))

    def request_cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job at once; flag a running one for its worker to stop. Finished jobs stay."""
        with self.session() as s:
            now = utcnow()
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == QUEUED).values(
                status=CANCELLED, stage=CANCELLED, cancel_requested=True, finished_at=now, updated_at=now))
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == RUNNING).values(
                cancel_requested=True, message="cancelling", updated_at=now))
            row = s.get(JobRow, job_id)
            return _snapshot(row) if row else None

    def requeue_interrupted(self) -> list[str]:
        """On start: jobs left running by a previous server go back to the queue (or fail after
        MAX_ATTEMPTS, or become cancelled when a cancel was pending)."""
        requeued: list[str] = []
        with self.session() as s:
            now = utcnow()
            for row in s.scalars(select(JobRow).where(JobRow.status == RUNNING)):
                row.run_token = None
                row.updated_at = now
                if row.cancel_requested:
                    row.status, row.stage, row.finished_at = CANCELLED, CANCELLED, now
                elif row.attempts >= MAX_ATTEMPTS:
                    row.status, row.stage, row.finished_at = FAILED, FAILED, now
                    row.error = f"The job was interrupted {row.attempts} times; giving up on it."
                else:
                    row.status, row.stage, row.progress = QUEUED, "queued", 0.0
                    row.message = "re-queued after a restart"
                    requeued.append(row.id)
        return requeued

    def heartbeat(self, job_id: str, token: str) -> bool:
        """Mark the attempt holding ``token`` alive; False once it no longer owns the job."""
        with self.session() as s:
            res = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.run_token == token,
                                                 JobRow.status == RUNNING).values(updated_at=utcnow()))
            return res.rowcount == 1

    def running_heartbeats(self) -> list[tuple[str, str | None, datetime, str | None]]:
        """(id, run token, last heartbeat, worker) of every running job."""
        with self.session() as s:
            return [tuple(r) for r in s.execute(  # type: ignore[misc]
                select(JobRow.id, JobRow.run_token, JobRow.updated_at, JobRow.worker).where(JobRow.status == RUNNING))]

    def requeue_stale(self, job_id: str, token: str | None, beat: datetime,
                      also: Callable[[Session, str], None] | None = None) -> str | None:
        """Put back a running job whose owner stopped beating, only if its token and heartbeat are still
        exactly ``token`` and ``beat`` (the owner was seen dead, and has not beaten since). The dead
        attempt counts (so a job that kills every worker fails after MAX_ATTEMPTS); a pending cancel
        is honoured. Returns the job's new status, or None when it had moved on. ``also`` runs in the
        same transaction when the job was put back."""
        with self.session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                return None
            now = utcnow()
            values: dict[str, Any] = dict(run_token=None, updated_at=now)
            if row.cancel_requested:
                values.update(status=CANCELLED, stage=CANCELLED, finished_at=now)
            elif row.attempts >= MAX_ATTEMPTS:
                values.update(status=FAILED, stage=FAILED, finished_at=now,
                              error=f"The job was interrupted {row.attempts} times; giving up on it.")
            else:
                values.update(status=QUEUED, stage="queued", progress=0.0,
                              message="re-queued: the worker rendering it stopped answering")
            res = s.execute(update(JobRow).where(
                JobRow.id == job_id, JobRow.status == RUNNING, JobRow.updated_at == beat,
                JobRow.run_token.is_(None) if token is None else JobRow.run_token == token).values(**values))
            if res.rowcount != 1:
                return None
            if also is not None:
                also(s, job_id)
            return str(values["status"])

    def requeue(self, job_id: str, token: str, message: str) -> bool:
        """Put a running job back in the queue (its worker is shutting down, not the job failing). The
        attempt is not counted: MAX_ATTEMPTS is for jobs that keep taking their server down with them,
        and a server that is restarted for maintenance should not fail them."""
        with self.session() as s:
            res = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.run_token == token,
                                                 JobRow.status == RUNNING)
                            .values(status=QUEUED, stage="queued", progress=0.0, run_token=None,
                                    attempts=JobRow.attempts - 1, message=message, updated_at=utcnow()))
            return res.rowcount == 1

    # -- deleting --------------------------------------------------------------------------------

    def delete(self, job_id: str) -> Job | None:
        """Remove a job row (the caller removes its files and then unreferenced uploads)."""
        with self.session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                return None
            snap = _snapshot(row)
            s.delete(row)
            s.flush()
            if snap.batch_id:
                left = s.scalar(select(func.count()).select_from(JobRow).where(JobRow.batch_id == snap.batch_id))
                if not left:
                    batch = s.get(BatchRow, snap.batch_id)
                    if batch is not None:
                        s.delete(batch)
            return snap

    def finished_before(self, cutoff: datetime) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(JobRow.id).where(JobRow.status.in_(FINISHED),
                                                          JobRow.finished_at < cutoff)))
