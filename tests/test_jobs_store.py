"""Job store and storage: state changes, run-token guards, recovery, uploads by content hash."""

from __future__ import annotations

import io
import threading
from datetime import timedelta

import pytest
from studio_support import need_media

from lipdub.studio.jobs.service import Settings, Studio
from lipdub.studio.jobs.storage import LocalStorage, UploadTooLarge
from lipdub.studio.jobs.store import (
    CANCELLED,
    DONE,
    FAILED,
    MAX_ATTEMPTS,
    QUEUED,
    RUNNING,
    JobStore,
    sqlite_url,
    utcnow,
)


@pytest.fixture()
def store(tmp_path):
    s = JobStore(sqlite_url(tmp_path / "t.db"))
    s.add_upload("a" * 64 + ".wav", "a.wav", 10)
    s.add_upload("b" * 64 + ".mp4", "b.mp4", 10)
    yield s
    s.dispose()


def _job(store):
    return store.create_job("a" * 64 + ".wav", "b" * 64 + ".mp4", audio_name="a.wav", face_name="b.mp4")


def test_wal_mode(store):
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_claim_progress_finish(store):
    job = _job(store)
    assert store.get(job.id).status == QUEUED
    claimed = store.claim_next("w0")
    assert claimed.id == job.id and claimed.status == RUNNING and claimed.attempts == 1 and claimed.run_token
    assert store.claim_next("w1") is None
    assert store.report_progress(job.id, claimed.run_token, "rendering", 0.5, "half")
    assert not store.report_progress(job.id, "stale-token", "rendering", 0.9)
    got = store.get(job.id)
    assert (got.stage, got.progress) == ("rendering", 0.5)
    assert store.finish(job.id, claimed.run_token, DONE, result={"frames": 3})
    got = store.get(job.id)
    assert got.status == DONE and got.progress == 1.0 and got.result == {"frames": 3} and got.finished_at


def test_jobs_are_claimed_in_order_and_once(store):
    ids = [_job(store).id for _ in range(30)]
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        while (j := store.claim_next(f"w{n}")) is not None:
            with lock:
                claimed.append(j.id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids) and len(set(claimed)) == 30


def test_interrupted_jobs_are_requeued_and_old_attempts_lose_ownership(store):
    job = _job(store)
    first = store.claim_next("w0")
    assert store.requeue_interrupted() == [job.id]
    got = store.get(job.id)
    assert got.status == QUEUED and got.run_token is None
    second = store.claim_next("w0")
    assert second.attempts == 2
    # The orphaned first attempt can no longer write.
    assert not store.report_progress(job.id, first.run_token, "rendering", 0.7)
    assert not store.finish(job.id, first.run_token, FAILED, error="x")
    assert store.finish(job.id, second.run_token, DONE)


def test_a_job_that_keeps_killing_the_server_is_failed(store):
    job = _job(store)
    for _ in range(MAX_ATTEMPTS):
        store.claim_next("w")
        store.requeue_interrupted()
    got = store.get(job.id)
    assert got.status == FAILED and "interrupted" in got.error


def test_cancel(store):
    queued = _job(store)
    running = _job(store)
    store.claim_next("w")  # the older one
    store.request_cancel(queued.id)
    store.request_cancel(running.id)
    # claim_next took `queued` (oldest); check the right things happened to each
    a, b = store.get(queued.id), store.get(running.id)
    assert a.status == RUNNING and a.cancel_requested
    assert b.status == CANCELLED
    assert store.is_cancel_requested(queued.id)


def test_list_pagination_and_counts(store):
    for _ in range(25):
        _job(store)
    page1, total = store.list(1, 10)
    page3, _ = store.list(3, 10)
    assert total == 25 and len(page1) == 10 and len(page3) == 5
    assert store.counts()[QUEUED] == 25


def test_storage_hashes_content(tmp_path):
    st = LocalStorage(tmp_path)
    k1, n1 = st.put_upload(io.BytesIO(b"x" * 1000), "voice.WAV")
    k2, _ = st.put_upload(io.BytesIO(b"x" * 1000), "other.wav")
    assert k1 == k2 and k1.endswith(".wav") and n1 == 1000
    assert st.upload_path(k1).read_bytes() == b"x" * 1000
    with pytest.raises(UploadTooLarge):
        st.put_upload(io.BytesIO(b"y" * 2000), "big.wav", max_bytes=1000)
    assert not list((tmp_path / "tmp").iterdir())
    with pytest.raises(ValueError):
        st.job_dir("../etc")


def test_uploads_are_kept_while_a_job_uses_them_and_retention(tmp_path):
    audio, photo = need_media("en_radio_8s.wav", "portrait_474.png")
    studio = Studio(Settings(data_dir=tmp_path, retention_days=1))
    try:
        a = studio.add_upload_path(audio, "audio")
        f = studio.add_upload_path(photo, "face")
        j1 = studio.submit(a, f)
        j2 = studio.submit(a, f)
        assert studio.store.get(j1.id).audio_key == a.key
        studio.delete(j1.id)
        assert studio.storage.upload_path(a.key).exists()  # j2 still needs it
        # j2 finished long ago: retention removes it and, with it, the uploads nobody uses any more.
        tok = studio.store.claim_next("w").run_token
        studio.store.finish(j2.id, tok, DONE)
        with studio.store.session() as s:
            from lipdub.studio.jobs.store import JobRow

            s.get(JobRow, j2.id).finished_at = utcnow() - timedelta(days=2)
        assert studio.apply_retention() == [j2.id]
        assert not studio.storage.upload_path(a.key).exists()
        assert studio.store.get(j2.id) is None
    finally:
        studio.store.dispose()


def test_claim_by_id_for_remote_workers(store):
    a, b = _job(store), _job(store)
    got = store.claim(b.id, "celery@host")
    assert got.id == b.id and got.status == RUNNING and got.run_token
    assert store.claim(b.id, "other") is None  # already taken
    store.request_cancel(a.id)
    assert store.claim(a.id, "celery@host") is None  # cancelled while queued
