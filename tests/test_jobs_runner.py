"""Render children: a crash of one job fails only that job, with its error and log; the server goes on."""

from __future__ import annotations

import os
import signal
import time

import pytest
from fastapi.testclient import TestClient
from studio_support import need_media, short_audio, wait_job

from lipdub.jobs.runner import default_workers
from lipdub.jobs.service import Settings
from lipdub.web.app import create_app

pytestmark = pytest.mark.timeout(900)


def test_default_workers_follow_the_device():
    from lipdub.device import Device, cpu_count

    assert default_workers(Device("cpu", None, "n cores", False)) == max(1, cpu_count() // 2)


def test_a_crashing_render_fails_only_its_job(tmp_path):
    (photo,) = need_media("portrait_474.png")
    audio = short_audio(tmp_path / "speech.wav", 6.0)
    app = create_app(Settings(data_dir=tmp_path / "data", device="cpu", workers=1))
    with TestClient(app) as client:
        files = [("audio", ("speech.wav", audio.read_bytes())), ("face", ("p.png", photo.read_bytes()))]
        job_id = client.post("/api/v1/jobs", files=files).json()["id"]
        wait_job(client, job_id, until=("running",), timeout=120)
        dispatcher = app.state.studio.dispatcher
        deadline = time.monotonic() + 30
        while job_id not in dispatcher._procs and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = dispatcher._procs[job_id].pid
        os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does
        job = wait_job(client, job_id, timeout=60)
        assert job["status"] == "failed"
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

    from lipdub.jobs import runner

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
