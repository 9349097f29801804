"""Running jobs: :func:`run_job` renders one job; :class:`LocalDispatcher` feeds a pool of render
processes from the store.

Each render runs in its own child process (``python -m lipdub.studio.jobs.child``), never in the server: a
crash, an out-of-memory kill or a hung model only fails that job, cancelling it terminates the
child, and the server keeps serving. The child reports progress straight into the job store, which
is also how a Celery worker on another machine will report (it calls :func:`run_job` the same way).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import lipdub
from lipdub.media.encode import partial_path
from lipdub.media.limits import Limits
from lipdub.studio.jobs.recovery import HEARTBEAT_S, STALE_AFTER_S, HeartbeatWatch, requeue_stale
from lipdub.studio.jobs.storage import Storage, as_named_by_user
from lipdub.studio.jobs.store import CANCELLED, DONE, FAILED, RUNNING, JobStore

log = logging.getLogger(__name__)

# Progress is written to the database at most this often (plus on every stage change).
PROGRESS_INTERVAL_S = 0.5
# How long a cancelled child gets to stop on SIGTERM before it is killed.
TERMINATE_GRACE_S = 5.0
# Size, length and resolution limits switched off (0): a job's inputs passed the server's at upload.
ACCEPTED_AT_UPLOAD = Limits(max_bytes=0, max_audio_s=0.0, max_video_s=0.0, max_side=0)
PARTIAL_NAME = "result.partial.mp4"  # the render's output until the job is done


def run_job(job_id: str, store: JobStore, storage: Storage, *, token: str, device: str = "auto",
            cancel: threading.Event | None = None) -> str:
    """Render one claimed job and record its outcome; returns the final status.

    ``token`` is the run token handed out by :meth:`JobStore.claim_next`; every write is guarded by
    it, so an attempt that lost the job (the server restarted and re-queued it) cannot overwrite
    the attempt that owns it now.
    """
    import lipdub
    from lipdub.errors import LipdubError

    job = store.get(job_id)
    if job is None:
        log.error("Job %s does not exist.", job_id)
        return FAILED
    cancel = cancel or threading.Event()
    opts = job.options or {}
    audio = storage.upload_path(job.audio_key)
    face = storage.upload_path(job.face_key)
    out_dir = storage.job_dir(job_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / PARTIAL_NAME
    log.info("Job %s (attempt %d): audio %s, face %s, options %s", job_id, job.attempts, job.audio_name,
             job.face_name, opts)

    last = {"t": 0.0, "stage": "", "check": 0.0}

    def on_progress(p: Any) -> None:
        now = time.monotonic()
        if p.stage == last["stage"] and now - last["t"] < PROGRESS_INTERVAL_S:
            return
        last["t"], last["stage"] = now, p.stage
        if not store.report_progress(job_id, token, p.stage, float(p.fraction), p.message or ""):
            log.warning("Job %s is no longer owned by this attempt; stopping.", job_id)
            cancel.set()
        elif now - last["check"] > 1.0:
            last["check"] = now
            if store.is_cancel_requested(job_id):
                log.info("Cancel requested.")
                cancel.set()

    store.report_progress(job_id, token, "starting", 0.0, "loading models")
    ok = False
    try:
        # The server checked both files against its own limits when they were uploaded (stored by content,
        # so unchanged since); the library's default limits must not refuse them again here.
        result = lipdub.generate(audio, face, partial, device=device, engine=opts.get("engine") or "auto",
                                 quality=opts.get("quality") or "balanced", fps=opts.get("fps"),
                                 text=opts.get("text"), head_motion=opts.get("head_motion", True),
                                 progress=on_progress, cancel=cancel, limits=ACCEPTED_AT_UPLOAD)
        ok = True
    except Exception as e:
        from lipdub.pipeline import Cancelled

        if isinstance(e, Cancelled) or cancel.is_set():
            log.info("Cancelled.")
            store.finish(job_id, token, CANCELLED)
            return CANCELLED
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            log.error("Disk full: %s", e)
            store.finish(job_id, token, FAILED, error="The server's disk is full; the partial output was "
                         "removed. Free some space (or delete old jobs) and retry.")
            return FAILED
        if isinstance(e, LipdubError):
            # Stored uploads are named by their hash; the user knows them by the names they gave.
            error = str(e)
            for stored, name in ((audio, job.audio_name), (face, job.face_name)):
                error = as_named_by_user(error, stored, name)
            log.error("%s", error)
            store.finish(job_id, token, FAILED, error=error)
            return FAILED
        log.exception("The render failed")
        store.finish(job_id, token, FAILED, error=f"Internal error while rendering: {type(e).__name__}: {e}")
        return FAILED
    finally:
        if not ok:
            partial.unlink(missing_ok=True)
    final = storage.result_path(job_id)
    os.replace(result.output if Path(result.output).exists() else partial, final)
    _thumbnail(final, storage.thumbnail_path(job_id))
    info = {"frames": int(result.frames), "fps": float(result.fps), "duration": float(result.duration),
            "device": str(result.device), "engine": str(result.engine), "seconds": float(result.seconds),
            "faces_missing": int(result.faces_missing), "bytes": final.stat().st_size,
            "devices": {str(k): int(v) for k, v in result.devices.items()}, "encoder": str(result.encoder)}
    if store.finish(job_id, token, DONE, result=info):
        log.info("Done: %d frames, %.2f s of video in %.1f s on %s.", info["frames"], info["duration"],
                 info["seconds"], info["device"])
        return DONE
    log.warning("Job %s finished, but another attempt owns it now.", job_id)
    now = store.get(job_id)
    return now.status if now else FAILED


def _with_retries(call: Callable[[], Any], what: str, waits: tuple[float, ...] = (0.5, 1, 2, 4, 8, 15, 30)) -> Any:
    """``call()``, retried for about a minute: the database may be restarting (docs/deploy.md)."""
    for wait in waits:
        try:
            return call()
        except Exception:
            log.warning("Could not %s; trying again in %g s.", what, wait, exc_info=True)
            time.sleep(wait)
    return call()


def _thumbnail(video: Path, out: Path, size: int = 256) -> None:
    """First frame as a small JPEG for the history; a missing thumbnail is not an error."""
    try:
        import av

        with av.open(str(video)) as c:
            frame = next(c.decode(video=0))
            img = frame.to_image()
        img.thumbnail((size, size))
        img.save(out, "JPEG", quality=85)
    except Exception as e:  # noqa: BLE001 - cosmetic
        log.warning("No thumbnail for %s: %s", video, e)


class Dispatcher(Protocol):
    """Gets queued jobs rendered. The local one runs child processes; a Celery one sends tasks."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def notify(self) -> None: ...
    def busy(self) -> int: ...


def gpu_count() -> int:
    """CUDA GPUs torch sees (without creating a CUDA context); 1 if it cannot say."""
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:  # noqa: BLE001
        return 1


def default_workers(device: Any) -> int:
    """One render process per GPU; on the CPU one per two cores (a render uses several threads)."""
    if getattr(device, "kind", "cpu") == "cuda":
        return gpu_count()
    from lipdub.device import cpu_count

    return max(1, cpu_count() // 2)


class LocalDispatcher:
    """A pool of worker threads in the server, each running one render child at a time."""

    def __init__(self, store: JobStore, storage: Storage, *, workers: int = 1, device: str = "auto",
                 devices: list[str] | None = None, poll_s: float = 1.0,
                 child_cmd: Callable[[str, str, str], list[str]] | None = None, prewarm: bool = True,
                 timeout_s: float = 4 * 3600.0, memory_mb: float = 8192.0, stale_after_s: float = STALE_AFTER_S,
                 sweep_s: float = 5.0) -> None:
        self.store = store
        # Each watched render touches its job this often; a running job that nobody has touched for
        # stale_after_s (its watcher failed, or the server sharing this database that ran it died) is
        # re-queued by this pool's recovery sweep, every sweep_s.
        self.heartbeat_s = min(HEARTBEAT_S, stale_after_s / 4)
        self.sweep_s = sweep_s
        self._watch = HeartbeatWatch(store, stale_after_s)
        self._alive: set[str] = set()  # run tokens of the jobs this pool's threads hold
        # A render child that runs longer or grows larger than this is killed and its job failed: a
        # pathological file costs one job, never the server (0 switches a limit off).
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.storage = storage
        self.workers = max(1, workers)
        # Worker i renders on devices[i % len(devices)] (one GPU each); else all on `device`.
        self.devices = devices or [device]
        self.poll_s = poll_s
        self._child_cmd = child_cmd or self._default_cmd
        # Each worker keeps one render process started ahead of time, its imports (torch, mediapipe,
        # ~7 s on a small CPU) done while the previous job renders; it still renders exactly one job.
        self.prewarm = prewarm and child_cmd is None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def _default_cmd(self, job_id: str, token: str, device: str) -> list[str]:
        return [sys.executable, "-m", "lipdub.studio.jobs.child", "--job", job_id, "--token", token, "--db",
                self.store.url, "--storage", str(self.storage.root), "--device", device]

    def _child_env(self) -> dict[str, str]:
        # The child must import this very lipdub, even when it is not installed (a plain checkout).
        pkg_root = str(Path(lipdub.__file__).resolve().parents[1])
        return dict(os.environ, PYTHONUNBUFFERED="1",
                    PYTHONPATH=os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH", "")) if p))

    def _spawn_standby(self, device: str) -> subprocess.Popen | None:
        """A child that imports everything, then waits on stdin for the one job it will render."""
        cmd = [sys.executable, "-m", "lipdub.studio.jobs.child", "--standby", "--db", self.store.url, "--storage",
               str(self.storage.root), "--device", device]
        try:
            return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=self._child_env(), start_new_session=True)
        except OSError:
            log.exception("Could not start a standby render process")
            return None

    @staticmethod
    def _hand_over(spare: subprocess.Popen | None, job_id: str, token: str, log_path: Path) -> bool:
        if spare is None or spare.poll() is not None or spare.stdin is None:
            return False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as logf:
            _log_header(logf, warm=True)
        try:
            spare.stdin.write((json.dumps({"job": job_id, "token": token, "log": str(log_path)}) + "\n").encode())
            spare.stdin.close()
            return True
        except OSError:  # it died meanwhile
            _terminate(spare, grace=0.5)
            return False

    def start(self) -> None:
        requeued = self.store.requeue_interrupted()
        if requeued:
            log.info("Re-queued %d job(s) interrupted by the last shutdown: %s", len(requeued), ", ".join(requeued))
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, args=(i,), name=f"lipdub-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._recovery_loop, name="lipdub-recovery", daemon=True)
        t.start()
        self._threads.append(t)
        log.info("Started %d render worker(s).", self.workers)

    def _recovery_loop(self) -> None:
        while not self._stopping.wait(self.sweep_s):
            try:
                self.recover_stale()
            except Exception:  # the database may be briefly away; look again next sweep
                log.warning("Could not look for abandoned jobs", exc_info=True)

    def recover_stale(self) -> list[str]:
        """Re-queue running jobs whose heartbeat stopped and that no thread of this pool holds."""
        with self._lock:
            alive = set(self._alive)
        requeued = requeue_stale(self.store, self._watch, alive)
        if requeued:
            self.notify()
        return requeued

    def notify(self) -> None:
        self._wake.set()

    def busy(self) -> int:
        with self._lock:
            return len(self._procs)

    def run_claimed(self, job_id: str, token: str, device: str) -> None:
        """Render one job already claimed under ``token`` in a child and record its outcome (the
        Celery worker's entry point: it claims through the broker, not :meth:`JobStore.claim_next`)."""
        self._run_child(job_id, token, device)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop taking jobs; running renders are terminated and go back to the queue."""
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))

    def _loop(self, index: int) -> None:
        name = f"{os.uname().nodename}:{os.getpid()}:w{index}"
        device = self.devices[index % len(self.devices)]
        spare: subprocess.Popen | None = None
        prewarm, deaths = self.prewarm, 0
        try:
            while not self._stopping.is_set():
                if spare is not None and spare.poll() is not None:
                    deaths += 1  # died before it was used: do not respawn it in a tight loop
                    spare = None
                    if deaths >= 3:
                        prewarm = False
                        log.warning("Standby render processes keep dying; starting one per job instead.")
                if prewarm and spare is None:
                    spare = self._spawn_standby(device)
                try:
                    job = self.store.claim_next(name)
                except Exception:  # the database may be briefly unavailable; never let the worker die
                    log.exception("Could not claim a job")
                    job = None
                if job is None:
                    self._wake.wait(self.poll_s)
                    self._wake.clear()
                    continue
                with self._lock:
                    self._alive.add(job.run_token or "")
                try:
                    proc = None
                    if self._hand_over(spare, job.id, job.run_token or "", self.storage.log_path(job.id)):
                        proc, spare = spare, None
                        if prewarm:
                            spare = self._spawn_standby(device)  # warms up while this job renders
                    self._run_child(job.id, job.run_token or "", device, proc)
                except Exception:
                    # A full disk (the job's log) or a database hiccup: fail this job, keep the worker.
                    log.exception("Worker %d failed to run job %s", index, job.id)
                    self._fail_unstarted(job.id, job.run_token or "")
                finally:
                    # Should the outcome be unrecorded (the database away for minutes), the recovery
                    # sweep now sees a job nobody holds and re-queues it.
                    with self._lock:
                        self._alive.discard(job.run_token or "")
        finally:
            if spare is not None and spare.poll() is None:
                _terminate(spare, grace=1.0)

    def _fail_unstarted(self, job_id: str, token: str) -> None:
        """Record that a claimed job could not be run (retried: the database may be what failed). If it
        still cannot be recorded, the next start re-queues the job."""
        try:
            _with_retries(lambda: self.store.finish(job_id, token, FAILED, error="The job could not be started; "
                                                    "see the server log."), f"record that job {job_id} failed")
        except Exception:
            log.exception("Job %s stays 'running' until the next start re-queues it", job_id)

    def _run_child(self, job_id: str, token: str, device: str, proc: subprocess.Popen | None = None) -> None:
        """Run (or, given a standby ``proc`` already handed the job, watch) the render of one job."""
        log_path = self.storage.log_path(job_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.storage.result_path(job_id).unlink(missing_ok=True)  # a retried job starts clean
        if proc is None:
            with open(log_path, "ab") as logf:
                _log_header(logf, warm=False)
                # A new session: Ctrl-C in the server's terminal must not kill renders behind its back.
                proc = subprocess.Popen(self._child_cmd(job_id, token, device), stdout=logf,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._child_env(),
                                        start_new_session=True)
        with self._lock:
            self._procs[job_id] = proc
        log.info("Job %s started (pid %d).", job_id, proc.pid)
        cancelled = stopping = lost = False
        over: str | None = None
        started = last_beat = time.monotonic()
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                if time.monotonic() - last_beat >= self.heartbeat_s:
                    last_beat = time.monotonic()
                    try:  # the render's heartbeat, whatever its stage reports (a long analysis reports little)
                        self.store.heartbeat(job_id, token)
                    except Exception:
                        log.warning("Could not record job %s's heartbeat; the render goes on.", job_id, exc_info=True)
                if over is None and (over := self._over_limits(proc, started)):
                    log.warning("Job %s: %s; killing its render process.", job_id, over)
                    _kill_group(proc)
                    continue
                if self._stopping.is_set():
                    # Shutting down is not cancelling: put the job back first (which also voids
                    # this attempt's token, so the child cannot record "cancelled"), then stop it.
                    stopping = True
                    with contextlib.suppress(Exception):  # if the database is away, the next start re-queues it
                        if self.store.requeue(job_id, token, "re-queued: the server was shut down"):
                            log.info("Job %s re-queued for the next start.", job_id)
                    _terminate(proc, grace=2.0)
                    break
                try:
                    now = self.store.get(job_id)
                except Exception:  # the database is briefly away: keep watching the render, ask again later
                    log.warning("Could not read job %s; the render goes on.", job_id, exc_info=True)
                    continue
                if not cancelled and (now is None or now.cancel_requested):
                    cancelled = True  # cancelled, or deleted while running
                    log.info("Cancelling job %s.", job_id)
                    _terminate(proc, grace=TERMINATE_GRACE_S)
                elif not lost and now is not None and now.run_token != token:
                    # Re-queued or taken over while this render was thought dead (its heartbeat could not
                    # reach the database): stop it, so that one job never renders twice at a time.
                    lost = True
                    log.warning("Job %s was given to another attempt; stopping this render.", job_id)
                    _terminate(proc, grace=TERMINATE_GRACE_S)
        finally:
            with self._lock:
                self._procs.pop(job_id, None)
        code = proc.wait()
        # A child killed mid-render (timeout, memory, a cancel past its grace) leaves its writer's hidden
        # file, or a finished but unclaimed output, behind; one that ended normally has renamed both.
        partial = self.storage.job_dir(job_id) / PARTIAL_NAME
        for stray in (partial_path(partial, proc.pid), partial):
            stray.unlink(missing_ok=True)
        job = _with_retries(lambda: self.store.get(job_id), f"read job {job_id}")
        if job is None:
            self.storage.delete_job(job_id)  # deleted while it ran: drop what the child left behind
            return
        if job.status != RUNNING or job.run_token != token:
            log.info("Job %s: %s.", job_id, job.status)
            return  # the child recorded the outcome (or the job was deleted meanwhile)
        if stopping:
            _with_retries(lambda: self.store.requeue(job_id, token, "re-queued: the server was shut down"),
                          f"re-queue job {job_id}")
        elif cancelled or job.cancel_requested:
            _with_retries(lambda: self.store.finish(job_id, token, CANCELLED), f"record job {job_id} as cancelled")
            log.info("Job %s cancelled.", job_id)
        else:
            why = (f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}")
            # SIGKILL: what the kernel's out-of-memory killer sends (Windows has no such signal).
            hint = " (perhaps it ran out of memory)" if code == -getattr(signal, "SIGKILL", 9) else ""
            error = f"The render process stopped unexpectedly ({why}){hint}; see the job log."
            if over:
                error = f"The render was stopped: {over}."
            _with_retries(lambda: self.store.finish(job_id, token, FAILED, error=error), f"record job {job_id} as failed")
            with open(log_path, "a") as f:
                f.write(f"[ERROR] {error}\n")
            log.warning("Job %s failed: %s", job_id, error)


    def _over_limits(self, proc: subprocess.Popen, started: float) -> str | None:
        """Why the child must be stopped now, or None."""
        elapsed = time.monotonic() - started
        if self.timeout_s > 0 and elapsed > self.timeout_s:
            return f"it ran longer than the {self.timeout_s:g} s limit for one job"
        if self.memory_mb > 0:
            rss = _tree_rss(proc.pid)
            if rss > self.memory_mb * 1024 * 1024:
                return (f"it used {rss / 2**20:.0f} MB of memory, over the {self.memory_mb:g} MB limit for one "
                        "job (a very large or malformed input?)")
        return None


def _tree_rss(pid: int) -> int:
    """Resident memory of a process and its children, in bytes (0 if it is gone)."""
    try:
        import psutil

        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except Exception:  # noqa: BLE001 - gone, or psutil missing: no watchdog rather than no render
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except Exception:  # noqa: BLE001
            pass
    return total


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill a render child and what it started (its phone workers): its process group where there are
    process groups (it was started in a session of its own), else its process tree (Windows)."""
    if hasattr(os, "killpg"):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            pass
    else:
        import psutil

        try:
            descendants = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        for p in descendants:
            try:
                p.kill()
            except psutil.Error:
                pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def _log_header(logf, warm: bool) -> None:  # noqa: ANN001 - binary file
    extra = " (warm process)" if warm else ""
    logf.write(f"---- attempt started {time.strftime('%Y-%m-%d %H:%M:%S')}{extra} ----\n".encode())
    logf.flush()


def _terminate(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM (the child cancels cleanly), then, after ``grace``, kill it and what it started."""
    try:
        proc.terminate()
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
    except ProcessLookupError:
        pass
