"""The REST API under ``/api/v1`` (documented in OpenAPI at ``/docs``)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from lipdub.studio.jobs.service import AUDIO, FACE, MAX_ZIP_JOBS, Studio, Upload, ValidationError
from lipdub.studio.jobs.store import DONE, FINISHED, Job

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1")
_JOB_ID = re.compile(r"[0-9a-zA-Z_-]{1,32}")
MAX_PAGE = 1_000_000  # beyond it the database's row offset overflows; no history is that long


def get_studio(request: Request) -> Studio:
    return request.app.state.studio


class Health(BaseModel):
    status: str
    device: str
    workers: int
    busy: int
    queued: int
    running: int


class JobCreated(BaseModel):
    id: str
    status: str
    url: str


class JobOut(BaseModel):
    id: str
    status: str  # queued, running, done, failed, cancelled
    progress: float  # 0..1
    stage: str
    message: str = ""
    error: str | None = None
    eta_seconds: float | None = None
    queue_position: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    audio_name: str = ""
    face_name: str = ""
    options: dict[str, Any] = {}
    batch_id: str | None = None
    attempts: int = 0
    result: dict[str, Any] | None = None
    result_url: str | None = None
    log_url: str | None = None
    thumbnail_url: str | None = None


class JobPage(BaseModel):
    items: list[JobOut]
    page: int
    page_size: int
    total: int
    pages: int


class BatchCreated(BaseModel):
    id: str
    jobs: list[JobCreated]


class BatchOut(BaseModel):
    id: str
    status: str
    total: int
    finished: int
    counts: dict[str, int]
    progress: float
    zip_url: str
    jobs: list[JobOut]


class StorageOut(BaseModel):
    uploads_bytes: int
    jobs_bytes: int
    total_bytes: int
    free_bytes: int
    avatar_cache_bytes: int  # analysed templates kept for reuse (pruned to $LIPDUB_CACHE_MAX_GB)
    avatar_cache_budget_bytes: int  # 0: no limit
    jobs: dict[str, int]
    retention_days: float


def _error(status: int, detail: str, field: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error of the API has this one shape: a sentence, and the form field it is about (or "")."""
    return JSONResponse(status_code=status, content={"detail": detail, "field": field}, headers=headers)


def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    return _error(422, str(exc), getattr(exc, "field", ""))


def request_validation_handler(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own refusals (a missing field, a page number out of range) in the API's shape."""
    errors = getattr(exc, "errors", lambda: [])()
    if not errors:
        return _error(422, "The request is not valid.")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header", "cookie")]
    field = loc[0] if loc else ""
    msg = str(first.get("msg", "is not valid")).rstrip(".")
    if first.get("type") == "missing":
        return _error(422, f"The field '{field}' is required.", field)
    return _error(422, f"'{field}' {msg[0].lower() + msg[1:]}." if field else f"{msg}.", field)


def http_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None)
    return _error(status, detail if isinstance(detail, str) else "The request was refused.",
                  headers=getattr(exc, "headers", None))


def error_handlers() -> dict[Any, Any]:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from lipdub.studio.jobs.service import DiskFull

    return {ValidationError: validation_error_handler, RequestValidationError: request_validation_handler,
            StarletteHTTPException: http_error_handler, DiskFull: lambda _r, e: _error(507, str(e))}


def _job_or_404(studio: Studio, job_id: str) -> Job:
    job = studio.store.get(job_id)
    if job is None:
        raise HTTPException(404, f"No job {job_id}.")
    return job


def _store(studio: Studio, f: UploadFile, role: str) -> Upload:
    return studio.add_upload(f.file, f.filename or role, role)


@router.get("/health", response_model=Health, summary="Liveness, device and queue size")
def health(studio: Studio = Depends(get_studio)) -> dict[str, Any]:
    counts = studio.store.counts()
    workers = getattr(studio.dispatcher, "workers", 0)
    return {"status": "ok", "device": studio.device_description, "workers": workers,
            "busy": studio.dispatcher.busy(), "queued": counts["queued"], "running": counts["running"]}


@router.post("/jobs", status_code=202, response_model=JobCreated, summary="Queue one render",
             responses={422: {"description": "An input was refused (format, size or duration)."}})
def create_job(audio: UploadFile = File(..., description="Speech recording (any audio, or a video with sound)"),
               face: UploadFile = File(..., description="Template video or photo of the person"),
               engine: str | None = Form(None), quality: str | None = Form(None),
               head_motion: bool | None = Form(None, description="Photos: sway and nod slightly (default true)"),
               studio: Studio = Depends(get_studio)) -> dict[str, Any]:
    studio.check_options(engine, quality, head_motion)  # before storing: a refused request stores nothing
    a = _store(studio, audio, AUDIO)
    f = _store(studio, face, FACE)
    job = studio.submit(a, f, engine=engine, quality=quality, head_motion=head_motion)
    return {"id": job.id, "status": job.status, "url": f"/api/v1/jobs/{job.id}"}


@router.get("/jobs", response_model=JobPage, summary="History, newest first")
def list_jobs(page: int = Query(1, ge=1, le=MAX_PAGE), page_size: int = Query(20, ge=1, le=200),
              status: str | None = Query(None, description="queued, running, done, failed or cancelled"),
              batch_id: str | None = None, studio: Studio = Depends(get_studio)) -> dict[str, Any]:
    jobs, total = studio.store.list(page, page_size, status=status, batch_id=batch_id)
    return {"items": [studio.job_view(j) for j in jobs], "page": page, "page_size": page_size, "total": total,
            "pages": max(1, -(-total // page_size))}


@router.get("/jobs/{job_id}", response_model=JobOut, summary="Status, stage and progress of a job")
def get_job(job_id: str, studio: Studio = Depends(get_studio)) -> dict[str, Any]:
    return studio.job_view(_job_or_404(studio, job_id))


@router.get("/jobs/{job_id}/result", response_class=FileResponse, summary="The rendered MP4",
            responses={200: {"content": {"video/mp4": {}}}, 409: {"description": "Not finished."}})
def get_result(job_id: str, studio: Studio = Depends(get_studio)) -> FileResponse:
    job = _job_or_404(studio, job_id)
    path = studio.storage.result_path(job_id)
    if job.status != DONE or not path.exists():
        raise HTTPException(409, f"Job {job_id} is {job.status}; there is no result yet.")
    return FileResponse(path, media_type="video/mp4", filename=studio.result_name(job))


@router.get("/jobs/{job_id}/thumbnail", response_class=FileResponse, summary="First frame of the result")
def get_thumbnail(job_id: str, studio: Studio = Depends(get_studio)) -> FileResponse:
    _job_or_404(studio, job_id)
    path = studio.storage.thumbnail_path(job_id)
    if not path.exists():
        raise HTTPException(404, "No thumbnail.")
    return FileResponse(path, media_type="image/jpeg")


@router.get("/jobs/{job_id}/log", response_class=PlainTextResponse, summary="The job's render log")
def get_log(job_id: str, studio: Studio = Depends(get_studio)) -> PlainTextResponse:
    _job_or_404(studio, job_id)
    path = studio.storage.log_path(job_id)
    text = path.read_text(errors="replace") if path.exists() else ""
    return PlainTextResponse(text)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a queued or running job")
def cancel_job(job_id: str, studio: Studio = Depends(get_studio)) -> dict[str, Any]:
    job = _job_or_404(studio, job_id)
    if job.status in FINISHED:
        raise HTTPException(409, f"Job {job_id} is already {job.status}.")
    job = studio.cancel(job_id) or job
    return studio.job_view(job)


@router.delete("/jobs/{job_id}", status_code=204, summary="Delete a job, its result, log and unused uploads")
def delete_job(job_id: str, studio: Studio = Depends(get_studio)) -> None:
    if studio.delete(job_id) is None:
        raise HTTPException(404, f"No job {job_id}.")


@router.post("/batches", status_code=202, response_model=BatchCreated,
             summary="Queue a batch: `audio` with several `faces`, or several `audios` with one `face`")
def create_batch(audio: UploadFile | None = File(None), faces: list[UploadFile] | None = File(None),
                 audios: list[UploadFile] | None = File(None), face: UploadFile | None = File(None),
                 engine: str | None = Form(None), quality: str | None = Form(None),
                 head_motion: bool | None = Form(None, description="Photos: sway and nod slightly (default true)"),
                 studio: Studio = Depends(get_studio)) -> dict[str, Any]:
    audio_files = ([audio] if audio else []) + list(audios or [])
    face_files = ([face] if face else []) + list(faces or [])
    if not audio_files or not face_files:
        raise ValidationError("Send `audio` with several `faces`, or several `audios` with one `face`.",
                              "audio" if not audio_files else "faces")
    # Shape, size and options before storing anything: a refused batch stores nothing.
    studio.check_batch_shape(len(audio_files), len(face_files))
    studio.check_options(engine, quality, head_motion)
    # Inputs stored before a later one is refused are dropped by the hourly clean-up, not here:
    # a concurrent request may be about to use the same content.
    a = [_store(studio, f, AUDIO) for f in audio_files]
    fs = [_store(studio, f, FACE) for f in face_files]
    batch_id, jobs = studio.submit_batch(a, fs, engine=engine, quality=quality, head_motion=head_motion)
    return {"id": batch_id, "jobs": [{"id": j.id, "status": j.status, "url": f"/api/v1/jobs/{j.id}"} for j in jobs]}


@router.get("/batches/{batch_id}", response_model=BatchOut, summary="A batch and its jobs")
def get_batch(batch_id: str, studio: Studio = Depends(get_studio)) -> dict[str, Any]:
    if not studio.store.batch_exists(batch_id):
        raise HTTPException(404, f"No batch {batch_id}.")
    return studio.batch_view(batch_id)


def _zip_response(studio: Studio, jobs: list[Job], name: str) -> FileResponse:
    path: Path = studio.zip_jobs(jobs)
    return FileResponse(path, media_type="application/zip", filename=name,
                        background=BackgroundTask(path.unlink, missing_ok=True))


@router.get("/batches/{batch_id}/zip", response_class=FileResponse, summary="Zip of a batch's finished results")
def get_batch_zip(batch_id: str, studio: Studio = Depends(get_studio)) -> FileResponse:
    if not studio.store.batch_exists(batch_id):
        raise HTTPException(404, f"No batch {batch_id}.")
    return _zip_response(studio, studio.store.batch_jobs(batch_id), f"lipdub_batch_{batch_id}.zip")


@router.get("/zip", response_class=FileResponse, summary="Zip of a selection of finished jobs: ?ids=a&ids=b")
def get_zip(ids: list[str] = Query(..., description="job ids (repeat, or comma-separated)"),
            studio: Studio = Depends(get_studio)) -> FileResponse:
    wanted = list(dict.fromkeys(i.strip() for part in ids for i in part.split(",") if i.strip()))
    if len(wanted) > MAX_ZIP_JOBS:
        raise ValidationError(f"A zip holds at most {MAX_ZIP_JOBS} jobs; select fewer.", "ids")
    jobs = [j for j in (studio.store.get(i) for i in wanted if _JOB_ID.fullmatch(i)) if j is not None]
    return _zip_response(studio, jobs, "lipdub_selection.zip")


@router.get("/storage", response_model=StorageOut, summary="Disk usage and the retention setting")
def get_storage(studio: Studio = Depends(get_studio)) -> dict[str, Any]:
    return studio.usage()
