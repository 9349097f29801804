"""Entry point of a render child: ``python -m lipdub.studio.jobs.child --job ID --token T --db URL --storage DIR``.

Its stdout/stderr go to the job's log file (the parent redirects them), so the log holds this
process's logging and anything a crashing native library prints.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("lipdub.studio.jobs.child")


def _die_with_parent(parent_pid: int) -> None:
    """A render must not outlive its server (after kill -9 the job is re-queued and rendered again)."""
    try:  # Linux: the kernel kills us when the parent goes away
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # portable fallback
        while True:
            if os.getppid() != parent_pid:
                os._exit(137)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _warm_up(device: str) -> None:
    """Import the heavy modules a render needs before there is a job to render."""
    import importlib

    for name in ("lipdub.pipeline", "lipdub.studio.jobs.runner", "torch", "cv2", "mediapipe", "av"):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the render itself will report a real problem
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lipdub.studio.jobs.child")
    ap.add_argument("--job")
    ap.add_argument("--token")
    ap.add_argument("--standby", action="store_true",
                    help="import everything now, then read {job, token, log} as one JSON line on stdin")
    ap.add_argument("--db", required=True)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--parent", type=int, default=os.getppid())
    args = ap.parse_args(argv)
    _die_with_parent(args.parent)
    if args.standby:
        _warm_up(args.device)
        line = sys.stdin.readline()
        if not line.strip():
            return 0  # the server stopped before it had a job for us
        order = json.loads(line)
        args.job, args.token = order["job"], order["token"]
        # From here on everything this process prints goes to the job's log, as for a cold child.
        fd = os.open(order["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    if not args.job or not args.token:
        ap.error("--job and --token are required (or --standby)")
    from lipdub.studio.jobs.native_log import filter_native_noise

    sys.stderr.flush()
    restore_stderr = filter_native_noise()
    try:
        return _render(args)
    finally:
        sys.stderr.flush()
        restore_stderr()


def _render(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    for noisy in ("matplotlib", "PIL", "urllib3", "httpx", "absl", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from lipdub.studio.jobs.runner import run_job
    from lipdub.studio.jobs.storage import LocalStorage
    from lipdub.studio.jobs.store import DONE, JobStore

    cancel = threading.Event()
    # SIGTERM from the dispatcher means "cancel": stop at the next frame and record it.
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    store = JobStore(args.db)
    try:
        status = run_job(args.job, store, LocalStorage(args.storage), token=args.token, device=args.device,
                         cancel=cancel)
    finally:
        store.dispose()
    return 0 if status == DONE else 1


if __name__ == "__main__":
    sys.exit(main())
