"""What the studio leaves on disk: refused requests store nothing, a failed zip leaves no partial zip,
and a start clears only what no running request is still writing."""

from __future__ import annotations

import errno
import io
import os
import threading
import time
import zipfile

import pytest
from fastapi.testclient import TestClient
from studio_support import LOCAL, NoRender, need_media, short_audio

from lipdub.jobs.service import STALE_TMP_S, Settings, Studio
from lipdub.jobs.store import DONE
from lipdub.web.app import create_app


@pytest.fixture()
def studio(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", device="cpu", workers=1, max_batch_items=2,
                        rate_per_minute=0)
    return Studio(settings, dispatcher=NoRender())


def _uploads(studio: Studio) -> list:
    return [p for p in (studio.storage.root / "uploads").rglob("*") if p.is_file()]


def test_refused_requests_store_no_upload(studio, tmp_path):
    """Bad options and oversized batches were refused only after every file had been stored; with
    retention off (the default) those files then stayed until the next restart."""
    (photo, photo2) = need_media("portrait_474.png", "portrait_624.jpg")
    audio = short_audio(tmp_path / "speech.wav", 1.0)
    with TestClient(create_app(studio.settings, studio), base_url=LOCAL) as client:
        files = [("audio", ("a.wav", audio.read_bytes())), ("face", ("p.png", photo.read_bytes()))]
        r = client.post("/api/v1/jobs", files=files, data={"engine": "nope"})
        assert r.status_code == 422 and r.json()["field"] == "engine"
        faces = [("faces", (p.name, p.read_bytes())) for p in (photo, photo2, photo)]
        r = client.post("/api/v1/batches", files=[("audio", ("a.wav", audio.read_bytes())), *faces])
        assert r.status_code == 422 and "at most 2" in r.json()["detail"]
        r = client.post("/api/v1/batches", files=[("audio", ("a.wav", audio.read_bytes())), *faces[:2]],
                        data={"quality": "max"})
        assert r.status_code == 422 and r.json()["field"] == "quality"
        assert _uploads(studio) == []
        # The hourly sweep of unreferenced uploads runs whatever the retention setting.
        assert studio.settings.retention_days == 0
        assert any(t.name == "lipdub-retention" and t.is_alive() for t in threading.enumerate())


def _done_job(studio: Studio, tmp_path) -> str:
    (photo,) = need_media("portrait_474.png")
    from lipdub.jobs.service import AUDIO, FACE

    a = studio.add_upload_path(short_audio(tmp_path / "speech.wav", 1.0), AUDIO)
    job = studio.submit(a, studio.add_upload_path(photo, FACE))
    claimed = studio.store.claim_next("test")
    studio.storage.job_dir(job.id).mkdir(parents=True, exist_ok=True)
    studio.storage.result_path(job.id).write_bytes(os.urandom(200_000))
    assert studio.store.finish(job.id, claimed.run_token, DONE, result={})
    return job.id


def test_a_zip_that_fails_leaves_nothing_behind(studio, tmp_path, monkeypatch):
    job_id = _done_job(studio, tmp_path)
    with TestClient(create_app(studio.settings, studio), base_url=LOCAL) as client:
        assert zipfile.ZipFile(io.BytesIO(client.get(f"/api/v1/zip?ids={job_id}").content)).namelist()

        def full(*_a, **_k):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(zipfile.ZipFile, "write", full)
        r = client.get(f"/api/v1/zip?ids={job_id}")
        assert r.status_code == 507 and "disk is full" in r.json()["detail"]
        assert list((studio.storage.root / "tmp").iterdir()) == []


def test_a_result_deleted_while_zipping_is_left_out(studio, tmp_path):
    (tmp_path / "b").mkdir()
    kept, gone = _done_job(studio, tmp_path), _done_job(studio, tmp_path / "b")
    jobs = [studio.store.get(kept), studio.store.get(gone)]
    real = studio.storage.result_path
    asked: list[str] = []

    def vanishing(job_id: str):  # deleted by another request between the listing and the copy
        asked.append(job_id)
        path = real(job_id)
        if job_id == gone and asked.count(gone) > 1:
            path.unlink(missing_ok=True)
        return path

    studio.storage.result_path = vanishing
    path = studio.zip_jobs(jobs)
    try:
        assert len(zipfile.ZipFile(path).namelist()) == 1
    finally:
        path.unlink()


def test_start_clears_only_stale_temporary_files(studio):
    tmp = studio.storage.root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    fresh, stale = tmp / "upload-in-progress.part", tmp / "left-by-a-crash.part"
    fresh.write_bytes(b"x")
    stale.write_bytes(b"x")
    old = time.time() - STALE_TMP_S - 60
    os.utime(stale, (old, old))
    studio.start()
    try:
        assert fresh.exists() and not stale.exists()
    finally:
        studio.stop()
