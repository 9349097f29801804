"""The studio's operations, shared by the REST API, the web UI and ``lipdub batch``: validate and
store uploads, submit jobs and batches, cancel, delete, zip results, report disk usage, expire old jobs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lipdub.errors import InputError
from lipdub.face.avatar import default_cache_root
from lipdub.face.cache import avatars_root, banks_in_progress_bytes, budget_bytes, cached_avatars
from lipdub.media.limits import Limits, check_audio, check_face, safe_name
from lipdub.studio.jobs.runner import Dispatcher, LocalDispatcher, default_workers, gpu_count
from lipdub.studio.jobs.storage import LocalStorage, UploadTooLarge, as_named_by_user
from lipdub.studio.jobs.store import DONE, FINISHED, RUNNING, Job, JobStore, utcnow
from lipdub.studio.settings import Settings

log = logging.getLogger(__name__)

AUDIO, FACE = "audio", "face"
_OPTION_RE = re.compile(r"^[a-zA-Z0-9_.:-]{1,32}$")
STALE_TMP_S = 6 * 3600.0  # a file in tmp/ untouched this long belongs to no upload or zip in progress
# The web UI's uploads wait in the storage's ui_dir for the press of a button; the UI forgets them after
# this long, as the studio forgets uploads no job refers to.
UI_UPLOAD_TTL_S = 3600.0
MAX_ZIP_JOBS = 200
T = TypeVar("T")


class ValidationError(InputError):
    """An upload was refused before anything was queued; ``field`` names the form field."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class DiskFull(InputError):
    """The data dir's disk is full (HTTP 507)."""


@dataclass(frozen=True)
class Upload:
    key: str
    name: str
    size: int
    kind: str
    duration: float
    # This request's second name for the stored bytes (storage.put_upload_pinned), until its job is recorded.
    pin: Path | None = None


def check_media(path: str | Path, role: str, *, name: str | None = None, max_duration_s: float | None = None,
                limits: Limits | None = None) -> Any:
    """Probe a file by content and check it fits its role and the limits; raise :class:`ValidationError`
    with a sentence the user can act on (the same sentences as the library and the CLI)."""
    from lipdub.media.probe import probe

    if limits is None:
        limits = Limits.from_options(max_duration_s=max_duration_s)
    name = name or Path(path).name
    try:
        info = probe(path, limits)
        (check_audio if role == AUDIO else check_face)(info, name, limits)
    except InputError as e:
        # The stored file is named by its hash; say what the user called it.
        msg = as_named_by_user(str(e), path, name)
        cut = msg.find(" (")
        if cut != -1 and "/" in msg[cut:]:  # the decoder's detail names a server-side path: drop it
            msg = msg[:cut].rstrip(".") + "."
        raise ValidationError(msg if name in msg else f"{name}: {msg}", role) from e
    return info


def check_option(value: str | None, name: str) -> str | None:
    if value in (None, ""):
        return None
    if not _OPTION_RE.match(str(value)):
        raise ValidationError(f"'{value}' is not a valid {name}.", name)
    return str(value)


def engine_names() -> list[str]:
    from lipdub.render import ENGINES

    return ["auto", *ENGINES]


def missing_engine_note() -> str | None:
    """What the engines that need torch lack in this install, in one sentence; None when nothing is missing."""
    from lipdub.device import TORCH_EXTRA, torch_installed
    from lipdub.render import TORCH_ENGINES

    if torch_installed() or not TORCH_ENGINES:
        return None
    return (f"{', '.join(sorted(TORCH_ENGINES))} needs PyTorch, which is not installed here "
            f"(pip install '{TORCH_EXTRA}').")


def worker_devices(spec: str, device: Any, workers: int | None) -> list[str]:
    """The device each render worker uses, worker i taking entry i modulo the list's length.

    ``cuda:N`` asked for: every worker on GPU N. ``auto`` or ``cuda`` on CUDA: one worker per GPU
    without ``workers``, else each worker's render picks the freest GPU when it starts. The CPU:
    all on it (a GPU asked for and not usable is not asked again by each job).
    """
    spec = (spec or "auto").strip().lower()
    if device.kind != "cuda":
        return [device.kind]
    if spec.startswith("cuda:"):
        return [f"cuda:{device.index}"]
    if workers:
        return [spec]
    return [f"cuda:{i}" for i in range(gpu_count())]


def quality_names() -> list[str]:
    from lipdub.media.encode import QUALITIES

    return list(QUALITIES)


class Studio:
    """Owns the store, the storage and the dispatcher of one server."""

    def __init__(self, settings: Settings, *, dispatcher: Dispatcher | None = None,
                 device_description: str | None = None, device_kind: str = "cpu") -> None:
        self.settings = settings
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        self.storage = LocalStorage(settings.data_dir)
        self.store = JobStore(settings.database_url)
        self.device_description = device_description or settings.device
        self.device_kind = device_kind
        self.dispatcher: Dispatcher = dispatcher or LocalDispatcher(
            self.store, self.storage, workers=settings.workers or 1, device=settings.device,
            timeout_s=settings.job_timeout_s, memory_mb=settings.job_memory_mb)
        self._retention_stop = threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> Studio:
        """Pick the device (logging ``Using device: ...``) and size the worker pool from it."""
        if settings.broker_url:  # scale-out: this server only queues; `lipdub worker` processes render
            from lipdub.studio.scaleout.dispatcher import CeleryDispatcher
            from lipdub.studio.scaleout.urls import normalize_db_url, redact

            if settings.db_url:
                settings.db_url = normalize_db_url(settings.db_url)
            studio = cls(settings, device_description=f"Celery workers via {redact(settings.broker_url)}",
                         device_kind="celery")
            studio.dispatcher = CeleryDispatcher(studio.store, settings.broker_url)
            return studio
        from lipdub.device import select_device

        # The server renders nothing itself: it must hold no CUDA context (the query runs in a subprocess).
        device = select_device(settings.device, in_process=False)
        devices = worker_devices(settings.device, device, settings.workers)
        if settings.workers:
            workers = settings.workers
        elif device.kind == "cuda":
            workers = len(devices)  # one per GPU used
        else:
            workers = default_workers(device)
        studio = cls(settings, device_description=device.describe(), device_kind=device.kind)
        studio.dispatcher = LocalDispatcher(studio.store, studio.storage, workers=workers, devices=devices,
                                            timeout_s=settings.job_timeout_s, memory_mb=settings.job_memory_mb)
        return studio

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.dispatcher.start()
        self.apply_retention()
        # Hourly even when finished jobs are kept forever: uploads of refused requests must still go.
        threading.Thread(target=self._retention_loop, daemon=True, name="lipdub-retention").start()

    def sweep_ui_uploads(self) -> int:
        """Remove the web UI's uploads older than :data:`UI_UPLOAD_TTL_S`, with the partial files of uploads
        cut off half-way (the UI's own clean-up only knows the uploads that completed). Returns the count."""
        removed = 0
        root = self.storage.ui_dir
        for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(FileNotFoundError, OSError):
                if path.is_symlink() or path.is_file():
                    if time.time() - path.lstat().st_mtime > UI_UPLOAD_TTL_S:
                        path.unlink()
                        removed += 1
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
        return removed

    def stop(self) -> None:
        self._retention_stop.set()
        self.dispatcher.stop()
        self.store.dispose()

    def _retention_loop(self) -> None:
        while not self._retention_stop.wait(3600):
            try:
                self.apply_retention()
            except Exception:
                log.exception("Retention pass failed")

    def apply_retention(self) -> list[str]:
        """Delete finished jobs (files and rows) older than ``retention_days``; 0 keeps everything.
        Also drops, after an hour, uploads no job refers to (a request refused half-way) and upload files
        with no row at all (a crash between the write and the insert); and old files in ``tmp/``."""
        # Half-written uploads and zips of a crash. Only old ones: another server may share this data dir
        # (docs/deploy.md) and be writing its own right now.
        for stale in (self.storage.root / "tmp").iterdir():
            with contextlib.suppress(FileNotFoundError):
                if time.time() - stale.stat().st_mtime > STALE_TMP_S:
                    stale.unlink(missing_ok=True)
        for key in self.store.unreferenced_uploads(older_than=utcnow() - timedelta(hours=1)):
            self._discard(key)
        self.sweep_ui_uploads()
        # Pins of requests that stored an upload and then were refused (their other file was bad): a
        # request records its job seconds after its uploads, so an hour-old pin has no request left.
        self.storage.sweep_pins(older_than_s=3600)
        known = self.store.upload_keys()
        orphans = [key for key in self.storage.upload_files(older_than_s=3600) if key not in known]
        for key in orphans:
            self._discard(key)
        if orphans:
            log.info("Removed %d stored upload file(s) that no job or upload record refers to.", len(orphans))
        days = self.settings.retention_days
        if days <= 0:
            return []
        expired = self.store.finished_before(utcnow() - timedelta(days=days))
        for job_id in expired:
            self.delete(job_id)
        if expired:
            log.info("Retention: deleted %d job(s) finished more than %g days ago.", len(expired), days)
        return expired

    # -- uploads ---------------------------------------------------------------------------------

    def add_upload(self, stream: BinaryIO, filename: str, role: str) -> Upload:
        """Store an upload by content hash and validate it; a refused upload leaves nothing behind."""
        name = safe_name(filename, role)
        limits = self.settings.limits
        try:
            key, size, pin = self.storage.put_upload_pinned(stream, name, max_bytes=limits.max_bytes)
        except UploadTooLarge as e:
            raise ValidationError(f"{name} is larger than the {self.settings.max_upload_mb:g} MB limit.", role) from e
        except OSError as e:
            if e.errno == errno.ENOSPC:
                log.error("Disk full while storing an upload in %s", self.storage.root)
                raise DiskFull("The server's disk is full; the upload was not stored. Try again later.") from e
            raise
        try:
            if size == 0:
                raise ValidationError(f"{name} is empty (0 bytes).", role)
            # The pin, not the stored file: a delete of another job on the same content may remove that now.
            info = check_media(pin, role, name=name, limits=limits)
            self.store.add_upload(key, name, size, info.kind, float(info.duration))
        except BaseException:
            pin.unlink(missing_ok=True)
            self._discard(key)
            raise
        return Upload(key, name, size, info.kind, float(info.duration), pin)

    def add_upload_path(self, path: str | Path, role: str, name: str | None = None) -> Upload:
        with open(path, "rb") as f:
            return self.add_upload(f, name or Path(path).name, role)

    def _discard(self, key: str) -> None:
        # Only when no job refers to the same content (a job's upload is never lost).
        self.store.remove_upload(key, remove_file=lambda: self.storage.delete_upload(key))

    def _record(self, uploads: list[Upload], create: Callable[[Session], T]) -> T:
        """Record jobs on ``uploads`` (``create`` inserts them) in one transaction that first makes sure each
        upload's row and file are there: a delete of another job on the same content, since the upload,
        may have removed both, and they are put back from this request's pin."""
        for attempt in range(3):
            try:
                with self.store.session() as s:
                    for u in uploads:
                        self.store.add_upload(u.key, u.name, u.size, u.kind, u.duration, session=s)
                        if u.pin is not None and u.pin.exists() and self.storage.restore_upload(u.key, u.pin):
                            log.info("%s was removed by a delete on the same content meanwhile; put back.", u.name)
                        elif not self.storage.upload_path(u.key).exists():
                            raise ValidationError(f"{u.name} is no longer stored; upload it again.")
                    created = create(s)
                break
            except IntegrityError:  # PostgreSQL: the delete committed while this ran; look again
                if attempt == 2:
                    raise
        for u in uploads:
            if u.pin is not None:
                u.pin.unlink(missing_ok=True)
        return created

    # -- jobs ------------------------------------------------------------------------------------

    def check_batch_shape(self, n_audios: int, n_faces: int) -> str:
        """The batch's mode ("faces" or "audios"), or :class:`ValidationError`; callable before any upload is
        stored, so a refused batch stores nothing."""
        if not n_audios or not n_faces:
            raise ValidationError("A batch needs at least one audio and one face.", "audio" if not n_audios else "face")
        if n_audios > 1 and n_faces > 1:
            raise ValidationError("A batch is one audio with many faces, or many audios with one face.", "faces")
        mode = "faces" if n_audios == 1 else "audios"
        if n_audios * n_faces > self.settings.max_batch_items:
            raise ValidationError(f"A batch holds at most {self.settings.max_batch_items} items.", mode)
        return mode

    def check_options(self, engine: str | None, quality: str | None, head_motion: bool | None = None) -> dict[str, Any]:
        """Check engine and quality names now, not minutes later in the render."""
        opts: dict[str, Any] = {}
        if head_motion is not None:
            opts["head_motion"] = bool(head_motion)
        if (e := check_option(engine, "engine")) is not None:
            if e not in engine_names():
                raise ValidationError(f"Unknown engine '{e}'; use one of: {', '.join(engine_names())}.", "engine")
            from lipdub.render import TORCH_ENGINES

            if e in TORCH_ENGINES and (note := missing_engine_note()):
                raise ValidationError(note, "engine")
            opts["engine"] = e
        if (q := check_option(quality, "quality")) is not None:
            if q not in quality_names():
                raise ValidationError(f"Unknown quality '{q}'; use one of: {', '.join(quality_names())}.",
                                      "quality")
            opts["quality"] = q
        return opts

    def submit(self, audio: Upload, face: Upload, *, engine: str | None = None, quality: str | None = None,
               head_motion: bool | None = None) -> Job:
        options = self.check_options(engine, quality, head_motion)
        job = self._record([audio, face], lambda s: self.store.create_job(
            audio.key, face.key, audio_name=audio.name, face_name=face.name, options=options, session=s))
        log.info("Job %s queued: %s + %s", job.id, audio.name, face.name)
        self.dispatcher.notify()
        return job

    def submit_batch(self, audios: list[Upload], faces: list[Upload], *, engine: str | None = None,
                     quality: str | None = None, head_motion: bool | None = None) -> tuple[str, list[Job]]:
        """One audio x many faces, or many audios x one face."""
        mode = self.check_batch_shape(len(audios), len(faces))
        pairs = [(a, f) for a in audios for f in faces]
        items = [(a.key, f.key, a.name, f.name) for a, f in pairs]
        options = self.check_options(engine, quality, head_motion)
        batch_id, jobs = self._record([*audios, *faces], lambda s: self.store.create_batch(mode, items, options, session=s))
        log.info("Batch %s queued: %d job(s).", batch_id, len(jobs))
        self.dispatcher.notify()
        return batch_id, jobs

    def cancel(self, job_id: str) -> Job | None:
        return self.store.request_cancel(job_id)

    def delete(self, job_id: str) -> Job | None:
        """Delete a job, its files and the uploads no other job uses (cancelling it first if running)."""
        job = self.store.get(job_id)
        if job is None:
            return None
        if job.status == RUNNING:
            self.store.request_cancel(job_id)
        job = self.store.delete(job_id)
        self.storage.delete_job(job_id)
        if job is not None:
            for key in {job.audio_key, job.face_key}:
                self._discard(key)
        return job

    # -- results ---------------------------------------------------------------------------------

    def result_name(self, job: Job) -> str:
        def stem(name: str) -> str:
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem)[:40] or "x"

        prefix = f"{job.batch_index + 1:03d}_" if job.batch_id else ""
        return f"{prefix}{stem(job.face_name)}__{stem(job.audio_name)}_{job.id}.mp4"

    def zip_jobs(self, jobs: list[Job]) -> Path:
        """A zip (stored, not compressed: MP4 is already compressed) of the finished results."""
        done = [j for j in jobs if j.status == DONE and self.storage.result_path(j.id).exists()]
        if not done:
            raise ValidationError("None of these jobs has a finished result yet.", "ids")
        fd, tmp = tempfile.mkstemp(dir=self.storage.root / "tmp", suffix=".zip")
        written = 0
        try:
            with open(fd, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
                for j in done:
                    try:
                        z.write(self.storage.result_path(j.id), self.result_name(j))
                        written += 1
                    except FileNotFoundError:
                        log.info("Job %s was deleted while its result was being zipped; left out.", j.id)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise DiskFull("The server's disk is full; the zip could not be made. Download the videos "
                               "one by one, or free some space.") from e
            raise
        if not written:
            Path(tmp).unlink(missing_ok=True)
            raise ValidationError("None of these jobs has a finished result any more.", "ids")
        return Path(tmp)

    def usage(self) -> dict[str, Any]:
        u = dict(self.storage.usage())
        # The avatar cache lives apart from the storage ($LIPDUB_CACHE) but fills the same kind of disk.
        avatars = avatars_root(default_cache_root())
        u["avatar_cache_bytes"] = sum(a.bytes for a in cached_avatars(avatars)) + banks_in_progress_bytes(avatars)
        try:
            u["avatar_cache_budget_bytes"] = budget_bytes()
        except InputError:
            u["avatar_cache_budget_bytes"] = 0  # the jobs report the bad setting themselves
        u["jobs"] = self.store.counts()
        u["retention_days"] = self.settings.retention_days
        return u

    def job_view(self, job: Job) -> dict[str, Any]:
        """The JSON shape of a job in the API."""
        base = f"/api/v1/jobs/{job.id}"
        eta = job.eta_seconds()
        view: dict[str, Any] = {
            "id": job.id, "status": job.status, "progress": round(job.progress, 4), "stage": job.stage,
            "message": job.message, "error": job.error, "eta_seconds": round(eta, 1) if eta is not None else None,
            "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at), "audio_name": job.audio_name, "face_name": job.face_name,
            "options": job.options, "batch_id": job.batch_id, "attempts": job.attempts, "result": job.result,
            "result_url": f"{base}/result" if job.status == DONE else None, "log_url": f"{base}/log",
            "thumbnail_url": f"{base}/thumbnail" if job.status == DONE else None,
        }
        if job.status == "queued":
            view["queue_position"] = self.store.queue_position(job)
        return view

    def batch_view(self, batch_id: str) -> dict[str, Any]:
        jobs = self.store.batch_jobs(batch_id)
        counts: dict[str, int] = {}
        for j in jobs:
            counts[j.status] = counts.get(j.status, 0) + 1
        finished = sum(1 for j in jobs if j.status in FINISHED)
        progress = sum(1.0 if j.status in FINISHED else j.progress for j in jobs) / max(1, len(jobs))
        return {"id": batch_id, "status": "finished" if finished == len(jobs) else "running",
                "total": len(jobs), "finished": finished, "counts": counts, "progress": round(progress, 4),
                "zip_url": f"/api/v1/batches/{batch_id}/zip", "jobs": [self.job_view(j) for j in jobs]}


def _iso(t: Any) -> str | None:
    return t.isoformat() + "Z" if t is not None else None
