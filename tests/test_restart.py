"""kill -9 the server in the middle of a render, start it again: the job is re-queued and completes."""

from __future__ import annotations

import time

import httpx
import pytest
from studio_support import Server, mp4_facts, need_media, short_audio, wait_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _child_pids_of(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_kill_9_mid_job_then_restart_completes_it(tmp_path):
    import psutil

    (photo,) = need_media("portrait_474.png")
    audio = short_audio(tmp_path / "speech.wav", 3.0)
    data = tmp_path / "data"
    server = Server(data).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            files = [("audio", ("speech.wav", audio.read_bytes())), ("face", ("p.png", photo.read_bytes()))]
            job_id = c.post("/api/v1/jobs", files=files).json()["id"]
            queued_id = c.post("/api/v1/jobs", files=files).json()["id"]  # waits behind it
            wait_job(c, job_id, until=(), timeout=300,
                     check=lambda j: j["status"] == "running" and j["progress"] > 0)
            children = _child_pids_of(server.proc.pid)
            assert children, "the render should run in a child process"
            server.kill9()
    finally:
        server.stop()
    # The orphaned render dies with its server (it would otherwise race the re-queued attempt).
    deadline = time.monotonic() + 15
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in children):
        assert time.monotonic() < deadline, "render child outlived the killed server"
        time.sleep(0.2)

    server = Server(data).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for jid in (job_id, queued_id):
                job = wait_job(c, jid, timeout=600)
                assert job["status"] == "done", (job, server.log())
            assert c.get(f"/api/v1/jobs/{job_id}").json()["attempts"] == 2
            assert c.get(f"/api/v1/jobs/{queued_id}").json()["attempts"] == 1
            out = tmp_path / "result.mp4"
            out.write_bytes(c.get(f"/api/v1/jobs/{job_id}/result").content)
            facts = mp4_facts(out)
            assert facts["video"] and facts["audio"] and abs(facts["duration"] - 3.0) < 0.3
            assert "re-queued" in server.log().lower() or "Re-queued" in server.log()
    finally:
        server.stop()


def test_graceful_stop_requeues_instead_of_cancelling(tmp_path):
    from lipdub.studio.jobs.store import QUEUED, JobStore, sqlite_url

    (photo,) = need_media("portrait_474.png")
    audio = short_audio(tmp_path / "speech.wav", 3.0)
    data = tmp_path / "data"
    server = Server(data).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            files = [("audio", ("speech.wav", audio.read_bytes())), ("face", ("p.png", photo.read_bytes()))]
            job_id = c.post("/api/v1/jobs", files=files).json()["id"]
            wait_job(c, job_id, until=("running",), timeout=300)
    finally:
        server.stop()  # SIGTERM: what Ctrl-C or a service manager does
    store = JobStore(sqlite_url(data / "lipdub.db"))
    try:
        job = store.get(job_id)
        assert job.status == QUEUED and not job.cancel_requested, job
        # A shutdown is not the job's fault: it does not count towards MAX_ATTEMPTS (five maintenance
        # restarts once failed a job at its first real crash).
        assert job.attempts == 0, job
    finally:
        store.dispose()
