"""REST API tests with httpx (FastAPI's TestClient) against a real studio rendering real clips."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from studio_support import LOCAL, mp4_facts, need_media, short_audio, wait_job

from lipdub.studio.jobs.service import Settings
from lipdub.studio.web.app import create_app

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("media")
    photo, photo2, video = need_media("portrait_474.png", "portrait_624.jpg", "map_talk_844.mp4")
    return {"audio": short_audio(tmp / "speech_2s.wav", 2.0), "long_audio": short_audio(tmp / "speech_8s.wav", 8.0),
            "photo": photo, "photo2": photo2, "video": video}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data = tmp_path_factory.mktemp("studio")
    app = create_app(Settings(data_dir=data, device="cpu", workers=1, max_duration_s=30))
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def _files(**named: Path) -> list:
    return [(field, (p.name, p.read_bytes())) for field, p in named.items()]


def test_health(client):
    r = client.get("/api/v1/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["device"].startswith("cpu")


def test_openapi_documents_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/api/v1/health", "/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/result",
                  "/api/v1/jobs/{job_id}/log", "/api/v1/jobs/{job_id}/cancel", "/api/v1/batches",
                  "/api/v1/batches/{batch_id}", "/api/v1/batches/{batch_id}/zip", "/api/v1/storage"):
        assert route in paths, route
    assert client.get("/docs").status_code == 200


def test_validation_happens_before_anything_is_queued(client, media):
    before = client.get("/api/v1/jobs").json()["total"]
    r = client.post("/api/v1/jobs", files=[("audio", ("notes.txt", b"hello, not audio")),
                                           ("face", ("p.png", media["photo"].read_bytes()))])
    assert r.status_code == 422 and "notes.txt" in r.json()["detail"] and r.json()["field"] == "audio"
    r = client.post("/api/v1/jobs", files=_files(audio=media["photo"], face=media["photo"]))
    assert r.status_code == 422 and "no sound" in r.json()["detail"]
    r = client.post("/api/v1/jobs", files=_files(audio=media["audio"], face=media["audio"]))
    assert r.status_code == 422 and "not a video or photo" in r.json()["detail"]
    r = client.post("/api/v1/jobs", files=[("audio", ("empty.wav", b"")), ("face", ("p.png", b"x"))])
    assert r.status_code == 422
    # Longer than the server's --max-duration (30 s here).
    long = need_media("en_speech_60s.wav")[0]
    r = client.post("/api/v1/jobs", files=_files(audio=long, face=media["photo"]))
    assert r.status_code == 422 and "limit is 30 s" in r.json()["detail"]
    r = client.post("/api/v1/jobs", files=_files(audio=media["audio"]))
    assert r.status_code == 422
    r = client.post("/api/v1/jobs", files=_files(audio=media["audio"], face=media["photo"]), data={"engine": "nope"})
    assert r.status_code == 422 and "Unknown engine 'nope'" in r.json()["detail"]
    r = client.post("/api/v1/jobs", files=_files(audio=media["audio"], face=media["photo"]), data={"quality": "max"})
    assert r.status_code == 422 and r.json()["field"] == "quality"
    assert client.get("/api/v1/jobs").json()["total"] == before
    assert client.get("/api/v1/jobs/nope").status_code == 404


def test_single_job_end_to_end(client, media):
    r = client.post("/api/v1/jobs", files=_files(audio=media["audio"], face=media["photo"]),
                    data={"quality": "balanced", "head_motion": "false"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert client.get(f"/api/v1/jobs/{job_id}").json()["options"]["head_motion"] is False
    assert r.json()["status"] == "queued"
    seen_progress = wait_job(client, job_id, check=lambda j: j["status"] == "running" and j["progress"] > 0)
    if seen_progress["status"] == "running":
        assert seen_progress["stage"] and 0 < seen_progress["progress"] <= 1
    job = wait_job(client, job_id)
    assert job["status"] == "done", job
    assert job["progress"] == 1.0 and job["error"] is None and job["result"]["frames"] > 0
    # While a job is unfinished its result is a 409; now it is the MP4.
    res = client.get(f"/api/v1/jobs/{job_id}/result")
    assert res.status_code == 200 and res.headers["content-type"] == "video/mp4"
    out = Path(client.app.state.studio.storage.root) / "check.mp4"
    out.write_bytes(res.content)
    facts = mp4_facts(out)
    assert facts["video"] and facts["audio"] and abs(facts["duration"] - 2.0) < 0.3 and facts["frames"] > 20
    log = client.get(f"/api/v1/jobs/{job_id}/log")
    assert log.status_code == 200 and "Done" in log.text
    assert client.get(f"/api/v1/jobs/{job_id}/thumbnail").headers["content-type"] == "image/jpeg"
    page = client.get("/api/v1/jobs", params={"page": 1, "page_size": 5}).json()
    assert job_id in [j["id"] for j in page["items"]] and page["total"] >= 1
    z = client.get("/api/v1/zip", params={"ids": job_id})
    assert z.status_code == 200
    assert len(zipfile.ZipFile(io.BytesIO(z.content)).namelist()) == 1
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409  # finished already
    usage = client.get("/api/v1/storage").json()
    assert usage["jobs_bytes"] > len(res.content) // 2 and usage["jobs"]["done"] >= 1
    assert usage["avatar_cache_bytes"] > 0 and usage["avatar_cache_budget_bytes"] == 20 * 2**30
    # Delete: gone from the API and from disk.
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/api/v1/jobs/{job_id}").status_code == 404
    assert not client.app.state.studio.storage.job_dir(job_id).exists()


def test_cancel_queued_and_running(client, media):
    running = client.post("/api/v1/jobs", files=_files(audio=media["long_audio"], face=media["photo"])).json()["id"]
    queued = client.post("/api/v1/jobs", files=_files(audio=media["long_audio"], face=media["photo"])).json()["id"]
    assert client.get(f"/api/v1/jobs/{queued}").json()["status"] == "queued"
    assert client.post(f"/api/v1/jobs/{queued}/cancel").json()["status"] == "cancelled"
    wait_job(client, running, until=("running",), timeout=120)
    client.post(f"/api/v1/jobs/{running}/cancel")
    job = wait_job(client, running, timeout=60)
    assert job["status"] == "cancelled"
    assert client.get(f"/api/v1/jobs/{running}/result").status_code == 409
    deadline = time.monotonic() + 15  # the worker reaps its child right after the child records it
    while client.get("/api/v1/health").json()["busy"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get("/api/v1/health").json()["busy"] == 0


def test_batch_one_audio_many_faces_and_zip(client, media):
    files = [("audio", ("speech.wav", media["audio"].read_bytes())),
             ("faces", ("a.png", media["photo"].read_bytes())),
             ("faces", ("b.jpg", media["photo2"].read_bytes()))]
    r = client.post("/api/v1/batches", files=files)
    assert r.status_code == 202, r.text
    batch = r.json()
    assert len(batch["jobs"]) == 2
    for j in batch["jobs"]:
        assert wait_job(client, j["id"])["status"] == "done"
    view = client.get(f"/api/v1/batches/{batch['id']}").json()
    assert view["status"] == "finished" and view["counts"] == {"done": 2} and view["progress"] == 1.0
    z = client.get(f"/api/v1/batches/{batch['id']}/zip")
    names = zipfile.ZipFile(io.BytesIO(z.content)).namelist()
    assert len(names) == 2 and all(n.endswith(".mp4") for n in names)
    # Many audios x many faces is refused.
    bad = [("audios", ("1.wav", media["audio"].read_bytes())), ("audios", ("2.wav", media["audio"].read_bytes())),
           ("faces", ("a.png", media["photo"].read_bytes())), ("faces", ("b.jpg", media["photo2"].read_bytes()))]
    assert client.post("/api/v1/batches", files=bad).status_code == 422
