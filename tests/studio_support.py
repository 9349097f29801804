"""Helpers for the studio tests: real media, short clips, a server in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("LIPDUB_SHARED", REPO.parent / "shared")) / "media"

# Renders are slow on a CPU: every test render uses a short clip.
TERMINAL = ("done", "failed", "cancelled")
# In-process test clients name the studio as a browser on this machine does (the server answers only for
# the Host names it is set to).
LOCAL = "http://localhost"


def need_media(*names: str) -> list[Path]:
    paths = [MEDIA / n for n in names]
    missing = [p for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"shared test media not found: {missing[0]} (clone lipdub beside the shared/ folder)")
    return paths


def short_audio(dst: Path, seconds: float = 2.0, src: str = "en_radio_8s.wav") -> Path:
    """The first ``seconds`` of a shared speech file, as a file of ``dst``'s format."""
    from conftest import cut_audio

    (path,) = need_media(src)
    return cut_audio(path, dst, seconds)


def mp4_facts(path: Path) -> dict:
    import av

    with av.open(str(path)) as c:
        return {"video": len(c.streams.video) == 1, "audio": len(c.streams.audio) == 1,
                "duration": (c.duration or 0) / 1e6, "frames": sum(1 for _ in c.decode(video=0))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python app.py`` in a subprocess on a free port (a real server, killable with SIGKILL)."""

    def __init__(self, data_dir: Path, *, workers: int = 1, log_path: Path | None = None,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.data_dir, self.workers, self.args, self.env = data_dir, workers, args, env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or data_dir.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> Server:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **self.env)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(self.port),
                                      "--device", "cpu", "--workers", str(self.workers),
                                      "--data-dir", str(self.data_dir), *self.args],
                                     stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_job(client: httpx.Client, job_id: str, *, until=TERMINAL, timeout: float = 600,
             check=None) -> dict:
    """Poll a job until its status is in ``until`` (or ``check(job)`` is true)."""
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in until or (check and check(job)):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout} s: {job}")


class NoRender:
    """A dispatcher that renders nothing: for tests about answers at the door (validation, auth, limits)."""

    workers = 0

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def notify(self) -> None: ...
    def busy(self) -> int:
        return 0
