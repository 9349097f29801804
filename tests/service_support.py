"""Throw-away redis-server and PostgreSQL instances on loopback, on free ports, in temp dirs.

Used by the scale-out tests and ``bench/celery_throughput.py``. Debian's packages (redis-server,
postgresql) provide the binaries; nothing is started as a system service. PostgreSQL refuses to run
as root, so as root its data dir belongs to the ``postgres`` user and its tools run through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ServiceUnavailable(RuntimeError):
    """The binaries are not installed (the caller skips with this message)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen | None, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


@contextmanager
def redis_server() -> Iterator[str]:
    """Yield ``redis://127.0.0.1:PORT/0`` of a fresh, non-persistent redis-server."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server not installed (apt-get install redis-server)")
    tmp = Path(tempfile.mkdtemp(prefix="lipdub-redis-"))
    port = free_port()
    log = tmp / "redis.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(tmp), "--protected-mode", "yes"],
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, 30, "redis-server", log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _pg_bin() -> Path:
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool):
            return Path(shutil.which(tool)).parent  # type: ignore[arg-type]
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise ServiceUnavailable("PostgreSQL not installed (apt-get install postgresql)")
    return Path(found[-1]).parent


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield ``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres`` of a fresh cluster (trust auth)."""
    try:
        import psycopg  # noqa: F401
    except ImportError as e:
        raise ServiceUnavailable("psycopg not installed (pip install 'psycopg[binary]')") from e
    bindir = _pg_bin()
    as_root = os.geteuid() == 0
    tmp = Path(tempfile.mkdtemp(prefix="lipdub-pg-"))  # directly in /tmp: the postgres user can reach it
    if as_root:
        shutil.chown(tmp, "postgres", "postgres")
    data, log, port = tmp / "data", tmp / "pg.log", free_port()

    def run(*cmd: str, timeout: float = 120) -> None:
        full = (["runuser", "-u", "postgres", "--"] if as_root else []) + list(cmd)
        res = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}\n{tail}")

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {tmp} -c fsync=off -c full_page_writes=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start")
    try:
        _wait_port(port, None, 30, "postgres", log)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        try:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
