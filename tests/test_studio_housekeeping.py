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

from lipdub.studio.jobs.service import STALE_TMP_S, Settings, Studio
from lipdub.studio.jobs.store import DONE
from lipdub.studio.web.app import create_app


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
    from lipdub.studio.jobs.service import AUDIO, FACE

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


def _same_inputs(studio: Studio, tmp_path):
    from lipdub.studio.jobs.service import AUDIO, FACE

    (photo,) = need_media("portrait_474.png")
    audio = short_audio(tmp_path / "speech.wav", 1.0)
    return (lambda: studio.add_upload_path(audio, AUDIO)), (lambda: studio.add_upload_path(photo, FACE))


def test_deleting_a_job_while_another_request_uploads_the_same_files(studio, tmp_path):
    """Request B uploads the same speech and photo as job J; request A deletes J before B submits. A took
    the uploads away (no job used them any more): B's job then broke the foreign key (a 500) or, without
    one, pointed at files that were gone."""
    audio, face = _same_inputs(studio, tmp_path)
    old = studio.submit(audio(), face())
    a2, f2 = audio(), face()  # request B, up to its submit
    studio.delete(old.id)  # request A
    job = studio.submit(a2, f2)  # request B goes on
    for key in (job.audio_key, job.face_key):
        path = studio.storage.upload_path(key)
        assert path.exists() and path.stat().st_size > 0, key
    assert studio.store.upload_in_use(job.audio_key) and studio.store.upload_in_use(job.face_key)
    assert not list((studio.storage.root / "pins").iterdir())  # B's pins are gone once its job is recorded


def test_deleting_a_job_while_another_request_checks_the_same_file(studio, tmp_path, monkeypatch):
    """A's delete lands while B's upload of the same photo is being checked: B's check found no file and
    refused the user's photo."""
    from lipdub.studio.jobs import service

    audio, face = _same_inputs(studio, tmp_path)
    old = studio.submit(audio(), face())
    real_check = service.check_media

    def check_while_deleted(path, role, **kw):  # noqa: ANN001, ANN003
        if role == service.FACE:
            studio.delete(old.id)  # request A, at this very moment
        return real_check(path, role, **kw)

    monkeypatch.setattr(service, "check_media", check_while_deleted)
    a2 = audio()
    f2 = face()
    job = studio.submit(a2, f2)
    assert studio.storage.upload_path(job.face_key).exists() and studio.storage.upload_path(job.audio_key).exists()


def test_upload_files_without_a_record_are_swept(studio, tmp_path):
    """A crash between writing an upload and recording it left the file forever (the sweep went by the
    database's records)."""
    audio, face = _same_inputs(studio, tmp_path)
    kept = studio.submit(audio(), face())
    orphan, _ = studio.storage.put_upload(io.BytesIO(b"speech the server crashed on" * 100), "lost.wav")
    fresh, _ = studio.storage.put_upload(io.BytesIO(b"an upload in progress" * 100), "new.wav")
    hour_ago = time.time() - 3700
    for key in (orphan, kept.audio_key, kept.face_key):
        os.utime(studio.storage.upload_path(key), (hour_ago, hour_ago))
    _key, _size, pin = studio.storage.put_upload_pinned(io.BytesIO(b"refused later" * 100), "x.wav")
    os.utime(pin, (hour_ago, hour_ago))  # a request refused after this upload was stored: no job released it
    studio.apply_retention()
    assert not pin.exists()
    assert not studio.storage.upload_path(orphan).exists()
    assert studio.storage.upload_path(fresh).exists()  # may be recorded any moment now
    assert studio.storage.upload_path(kept.audio_key).exists() and studio.storage.upload_path(kept.face_key).exists()
