"""A scale-out studio in subprocesses: ``python app.py --broker ... --db ...`` and N ``lipdub worker``s.

Shared by tests/test_celery_integration.py and bench/celery_throughput.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from service_support import free_port

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
                PYTHONUNBUFFERED="1")


class ScaleOut:
    """The app (sending to Celery) and workers, each a real process that can be SIGKILLed."""

    def __init__(self, workdir: Path, broker: str, db: str, *, visibility_timeout: float = 45.0) -> None:
        self.workdir, self.broker, self.db = workdir, broker, db
        self.storage = workdir / "storage"
        self.visibility_timeout = visibility_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self._logs: list = []

    def _spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        logf = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(logf)
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(),
                                cwd=REPO)

    def start_app(self, timeout: float = 120) -> None:
        self.app = self._spawn([sys.executable, str(REPO / "app.py"), "--port", str(self.port), "--broker", self.broker,
                                "--db", self.db, "--storage", str(self.storage)], self.workdir / "app.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.app.poll() is not None:
                raise RuntimeError(f"app exited early:\n{self.log('app')}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"app did not come up:\n{self.log('app')}")

    def start_worker(self, name: str) -> subprocess.Popen:
        proc = self._spawn([sys.executable, "-m", "lipdub", "worker", "--broker", self.broker, "--db", self.db,
                            "--storage", str(self.storage), "--device", "cpu", "--name", f"{name}@test",
                            "--visibility-timeout", str(self.visibility_timeout)], self.workdir / f"{name}.log")
        self.workers[name] = proc
        return proc

    def wait_workers_ready(self, timeout: float = 180) -> None:
        """Until every worker's log says Celery is consuming (``... ready.``)."""
        deadline = time.monotonic() + timeout
        for name, proc in self.workers.items():
            while "ready." not in self.log(name):
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {name} exited:\n{self.log(name)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {name} not ready:\n{self.log(name)}")
                time.sleep(0.5)

    def log(self, name: str) -> str:
        p = self.workdir / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def kill9(self, name: str) -> None:
        proc = self.workers[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def stop(self) -> None:
        procs = [p for p in [*self.workers.values(), self.app] if p is not None and p.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGINT if p is self.app else signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self._logs:
            f.close()
