"""Where files live: content-hashed uploads and one folder per job (result, thumbnail, log).

:class:`Storage` is the seam: the server, the runner and the API only use its methods, so an S3
implementation can replace :class:`LocalStorage` (render children then fetch inputs to a local
cache and push results back) without touching them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Protocol

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SAFE_EXT = re.compile(r"^\.[a-z0-9]{1,5}$")


def as_named_by_user(text: str, stored: str | os.PathLike, name: str) -> str:
    """``text`` with a stored upload (named by its hash) called by the name its user gave it."""
    return text.replace(str(stored), name).replace(Path(stored).name, name)


class UploadTooLarge(Exception):
    """The stream was longer than the allowed size (the partial file is already removed)."""


class Storage(Protocol):
    root: Path

    @property
    def ui_dir(self) -> Path: ...

    def put_upload(self, stream: BinaryIO, filename: str, max_bytes: int | None = None) -> tuple[str, int]: ...
    def put_upload_pinned(self, stream: BinaryIO, filename: str,
                          max_bytes: int | None = None) -> tuple[str, int, Path]: ...
    def restore_upload(self, key: str, pin: Path) -> bool: ...
    def upload_files(self, older_than_s: float) -> list[str]: ...
    def sweep_pins(self, older_than_s: float) -> int: ...
    def upload_path(self, key: str) -> Path: ...
    def delete_upload(self, key: str) -> None: ...
    def job_dir(self, job_id: str) -> Path: ...
    def result_path(self, job_id: str) -> Path: ...
    def thumbnail_path(self, job_id: str) -> Path: ...
    def log_path(self, job_id: str) -> Path: ...
    def delete_job(self, job_id: str) -> None: ...
    def usage(self) -> dict[str, int]: ...


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


class LocalStorage:
    """Files under one root folder: ``uploads/ab/<sha256><ext>`` and ``jobs/<id>/``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        (self.root / "uploads").mkdir(parents=True, exist_ok=True)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        (self.root / "pins").mkdir(parents=True, exist_ok=True)
        self.ui_dir.mkdir(parents=True, exist_ok=True)

    @property
    def ui_dir(self) -> Path:
        """Where the web UI keeps uploads until a job is submitted from them (then they are copied into
        ``uploads/``)."""
        return self.root / "gradio"

    def put_upload(self, stream: BinaryIO, filename: str, max_bytes: int | None = None) -> tuple[str, int]:
        """Store a stream under the hash of its content; return (key, size). Same content, same key."""
        key, size, pin = self.put_upload_pinned(stream, filename, max_bytes)
        pin.unlink(missing_ok=True)
        return key, size

    def put_upload_pinned(self, stream: BinaryIO, filename: str,
                          max_bytes: int | None = None) -> tuple[str, int, Path]:
        """:meth:`put_upload`, and a second name for the same bytes in ``pins/`` (the *pin*; a hard link, or
        a copy where the filesystem has none) for the caller to remove once its job is recorded: a
        request deleting another job on the same content may remove the stored file meanwhile, and
        :meth:`restore_upload` puts it back from the pin. A request that never records a job leaves its
        pin to :meth:`sweep_pins`."""
        ext = Path(filename or "").suffix.lower()
        ext = ext if _SAFE_EXT.match(ext) else ""
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", suffix=ext)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise UploadTooLarge(filename)
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())  # an upload acknowledged to the user must survive a crash
            key = digest.hexdigest() + ext
            # Always this request's own copy (the same bytes under the same name, swapped in atomically): a
            # file being removed by another request right now is not relied on, and its age is now.
            self._place(Path(tmp), self.upload_path(key))
            pin = self.root / "pins" / Path(tmp).name
            os.replace(tmp, pin)
            return key, size, pin
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _place(self, pin: Path, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = pin.with_name(pin.name + ".placing")
        try:
            os.link(pin, staged)
        except OSError:  # no hard links here (some network filesystems)
            shutil.copyfile(pin, staged)
        os.replace(staged, final)

    def restore_upload(self, key: str, pin: Path) -> bool:
        """Put an upload back from its pin if it is missing; True when it had to."""
        final = self.upload_path(key)
        if final.exists():
            return False
        self._place(pin, final)
        return True

    def sweep_pins(self, older_than_s: float) -> int:
        """Remove the pins of requests that ended without recording a job; returns how many."""
        cutoff, removed = time.time() - older_than_s, 0
        for pin in (self.root / "pins").iterdir():
            try:
                if pin.stat().st_mtime < cutoff:
                    pin.unlink()
                    removed += 1
            except OSError:
                continue  # released meanwhile
        return removed

    def upload_files(self, older_than_s: float) -> list[str]:
        """Keys of the stored upload files last written more than ``older_than_s`` seconds ago."""
        cutoff = time.time() - older_than_s
        keys = []
        for path in (self.root / "uploads").glob("*/*"):
            try:
                if path.stat().st_mtime < cutoff and re.fullmatch(r"[0-9a-f]{64}(\.[a-z0-9]{1,5})?", path.name):
                    keys.append(path.name)
            except OSError:
                continue  # removed while we looked
        return keys

    def put_file(self, path: str | os.PathLike, max_bytes: int | None = None) -> tuple[str, int]:
        with open(path, "rb") as f:
            return self.put_upload(f, Path(path).name, max_bytes)

    def upload_path(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}(\.[a-z0-9]{1,5})?", key):
            raise ValueError(f"bad upload key {key!r}")
        return self.root / "uploads" / key[:2] / key

    def delete_upload(self, key: str) -> None:
        self.upload_path(key).unlink(missing_ok=True)

    def job_dir(self, job_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-zA-Z_-]{1,32}", job_id):
            raise ValueError(f"bad job id {job_id!r}")
        return self.root / "jobs" / job_id

    def result_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "result.mp4"

    def thumbnail_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "thumb.jpg"

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "job.log"

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def usage(self) -> dict[str, int]:
        """Bytes used by uploads (the web UI's waiting ones included), job folders and everything under the
        root (the database included)."""
        uploads = _dir_size(self.root / "uploads") + _dir_size(self.ui_dir)
        jobs = _dir_size(self.root / "jobs")
        total = _dir_size(self.root)
        free = shutil.disk_usage(self.root).free
        return {"uploads_bytes": uploads, "jobs_bytes": jobs, "total_bytes": total, "free_bytes": free}
