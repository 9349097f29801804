"""Render children: a crash of one job fails only that job, with its error and log; the server goes on."""

from __future__ import annotations

import os
import signal
import time

import pytest
from fastapi.testclient import TestClient
from studio_support import LOCAL, need_media, short_audio, wait_job

from lipdub.studio.jobs.runner import default_workers
from lipdub.studio.jobs.service import Settings
from lipdub.studio.web.app import create_app

pytestmark = pytest.mark.timeout(900)


def test_default_workers_follow_the_device():
    from lipdub.device import Device, cpu_count

    assert default_workers(Device("cpu", None, "n cores", False)) == max(1, cpu_count() // 2)


def test_a_crashing_render_fails_only_its_job(tmp_path):
    (photo,) = need_media("portrait_474.png")
    audio = short_audio(tmp_path / "speech.wav", 6.0)
    app = create_app(Settings(data_dir=tmp_path / "data", device="cpu", workers=1))
    with TestClient(app, base_url=LOCAL) as client:
        files = [("audio", ("speech.wav", audio.read_bytes())), ("face", ("p.png", photo.read_bytes()))]
        job_id = client.post("/api/v1/jobs", files=files).json()["id"]
        wait_job(client, job_id, until=("running",), timeout=120)
        dispatcher = app.state.studio.dispatcher
        deadline = time.monotonic() + 120
        # Killed while it writes its output: the writer's hidden partial file must not outlive it.
        while client.get(f"/api/v1/jobs/{job_id}").json()["stage"] != "rendering":
            assert time.monotonic() < deadline, "the render never started writing"
            time.sleep(0.05)
        job_dir = app.state.studio.storage.job_dir(job_id)
        assert list(job_dir.glob(".result.partial*"))
        pid = dispatcher._procs[job_id].pid
        os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does
        job = wait_job(client, job_id, timeout=60)
        assert job["status"] == "failed"
        assert not [p for p in job_dir.iterdir() if "partial" in p.name]
        assert "stopped unexpectedly" in job["error"] and "SIGKILL" in job["error"]
        assert "SIGKILL" in client.get(f"/api/v1/jobs/{job_id}/log").text
        assert client.get("/api/v1/health").json()["status"] == "ok"
        # The same inputs are kept and a new job on them is accepted and queued.
        again = client.post("/api/v1/jobs", files=files)
        assert again.status_code == 202
        client.post(f"/api/v1/jobs/{again.json()['id']}/cancel")


@pytest.mark.parametrize("process_groups", [True, False])
def test_killing_a_render_kills_what_it_started(monkeypatch, process_groups: bool) -> None:
    """A killed render child takes its own children (the phone workers) with it: by its process group,
    or, where there are no process groups (Windows), by its process tree."""
    import subprocess
    import sys

    import psutil

    from lipdub.studio.jobs import runner

    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(p.pid, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    grandchild = int(proc.stdout.readline())
    if not process_groups:
        monkeypatch.delattr(runner.os, "killpg")
    runner._kill_group(proc)
    proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        os.kill(grandchild, signal.SIGKILL)
        pytest.fail("the render's own child outlived it")


def _run_next(studio) -> str:
    """Claim the next queued job and render it in this process, as a render child does."""
    from lipdub.studio.jobs.runner import run_job

    job = studio.store.claim_next("test")
    return run_job(job.id, studio.store, studio.storage, token=job.run_token, device="cpu")


def test_a_render_keeps_the_servers_limits_and_the_users_file_names(tmp_path, monkeypatch):
    """The render child once re-checked a job's inputs against the library's default limits (a server
    started with longer ones accepted files its renders then refused), and its errors named the stored
    files by their hash instead of the names the user gave."""
    import cv2
    import numpy as np
    from studio_support import NoRender

    import lipdub.pipeline
    from lipdub.media.limits import Limits
    from lipdub.studio.jobs.service import AUDIO, FACE, Studio

    (photo,) = need_media("portrait_474.png")
    audio = short_audio(tmp_path / "speech.wav", 3.0)
    settings = Settings(data_dir=tmp_path / "data", device="cpu", workers=1)
    studio = Studio(settings, dispatcher=NoRender())
    # The library's default for speech stands in at 1 s; the server's own limit is its 30 minutes.
    monkeypatch.setattr(lipdub.pipeline, "Limits", lambda: Limits(max_audio_s=1.0))
    a = studio.add_upload_path(audio, AUDIO, "my speech.wav")
    studio.submit(a, studio.add_upload_path(photo, FACE, "me.png"))
    assert _run_next(studio) == "done"

    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.tile(np.linspace(60, 200, 320, dtype=np.uint8), (240, 1)))
    job = studio.submit(a, studio.add_upload_path(wall, FACE, "my wall.png"))
    assert _run_next(studio) == "failed"
    error = studio.store.get(job.id).error
    assert "no face" in error.lower() and "my wall.png" in error, error
    assert job.face_key not in error and str(settings.data_dir) not in error


def test_a_job_that_cannot_be_started_fails_and_the_worker_goes_on(tmp_path, monkeypatch):
    """Writing the job's log header (a full disk) once raised out of the worker's loop: the thread died
    with its job claimed, so that job stayed "running" and every later one "queued" until a restart."""
    import errno

    from lipdub.studio.jobs.runner import LocalDispatcher
    from lipdub.studio.jobs.service import AUDIO, FACE, Studio

    (photo,) = need_media("portrait_474.png")
    audio = short_audio(tmp_path / "speech.wav", 1.0)
    calls = []

    def disk_full_once(spare, job_id, token, log_path):  # noqa: ANN001
        calls.append(job_id)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return False  # no standby: the render starts a child of its own

    monkeypatch.setattr(LocalDispatcher, "_hand_over", staticmethod(disk_full_once))
    settings = Settings(data_dir=tmp_path / "data", device="cpu", workers=1)
    studio = Studio(settings)
    studio.dispatcher = LocalDispatcher(studio.store, studio.storage, workers=1, device="cpu", poll_s=0.2,
                                        prewarm=False)
    a, f = studio.add_upload_path(audio, AUDIO), studio.add_upload_path(photo, FACE)
    first, second = studio.submit(a, f), studio.submit(a, f)
    studio.start()
    try:
        deadline = time.monotonic() + 300
        while studio.store.get(second.id).status not in ("done", "failed"):
            assert time.monotonic() < deadline, studio.store.get(second.id)
            time.sleep(0.2)
        assert studio.store.get(first.id).status == "failed"
        assert "could not be started" in studio.store.get(first.id).error
        assert studio.store.get(second.id).status == "done"
    finally:
        studio.stop()


def test_a_database_hiccup_does_not_orphan_a_running_render(tmp_path, monkeypatch):
    """The loop that watches a render read the job from the database every half second and let an error
    escape: one restart of PostgreSQL left the render running unwatched and its job failed (embedded)
    or acknowledged and stuck (Celery)."""
    from sqlalchemy.exc import OperationalError

    from lipdub.studio.jobs.service import AUDIO, FACE, Studio

    (photo,) = need_media("portrait_474.png")
    audio = short_audio(tmp_path / "speech.wav", 2.0)
    studio = Studio(Settings(data_dir=tmp_path / "data", device="cpu", workers=1))
    a, f = studio.add_upload_path(audio, AUDIO), studio.add_upload_path(photo, FACE)
    job = studio.submit(a, f)
    claimed = studio.store.claim_next("test")
    real_get, failures = studio.store.get, []

    def flaky_get(job_id: str):
        if len(failures) < 4:  # the database is away for the first two seconds of the render
            failures.append(job_id)
            raise OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))
        return real_get(job_id)

    monkeypatch.setattr(studio.store, "get", flaky_get)
    studio.dispatcher.run_claimed(job.id, claimed.run_token, "cpu")
    assert len(failures) == 4
    assert real_get(job.id).status == "done", real_get(job.id)


def test_a_running_job_that_nobody_renders_is_taken_back(tmp_path):
    """A job left "running" by a render nobody watches any more (the server sharing this database that ran
    it was killed; or a watcher that could not record its outcome for minutes) stayed running until this
    server restarted. Its heartbeat stands still, so the pool's sweep re-queues it and renders it; the
    pool's own live render, which is quiet for longer than the stale time, is never taken for dead."""
    from sqlalchemy import update

    from lipdub.studio.jobs.runner import LocalDispatcher
    from lipdub.studio.jobs.service import AUDIO, FACE, Studio
    from lipdub.studio.jobs.store import RUNNING, JobRow

    (photo,) = need_media("portrait_474.png")
    audio = short_audio(tmp_path / "speech.wav", 2.0)
    studio = Studio(Settings(data_dir=tmp_path / "data", device="cpu", workers=1))
    studio.dispatcher = LocalDispatcher(studio.store, studio.storage, workers=1, device="cpu", poll_s=0.2,
                                        prewarm=False, stale_after_s=2.0, sweep_s=0.5)
    a, f = studio.add_upload_path(audio, AUDIO), studio.add_upload_path(photo, FACE)
    studio.start()
    try:
        with studio.store.session() as s:  # claimed by a process that then died, in one transaction
            orphan = studio.store.create_job(a.key, f.key, audio_name=a.name, face_name=f.name, session=s)
            s.execute(update(JobRow).where(JobRow.id == orphan.id).values(
                status=RUNNING, stage="analysing audio", run_token="0" * 16, worker="gone:1:w0", attempts=1))
        deadline = time.monotonic() + 300
        while (job := studio.store.get(orphan.id)).status not in ("done", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job.status == "done" and job.attempts == 2, job
        assert studio.storage.result_path(orphan.id).exists()
    finally:
        studio.stop()
