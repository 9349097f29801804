"""Entry point of a render child: ``python -m lipdub.jobs.child --job ID --token T --db URL --storage DIR``.

Its stdout/stderr go to the job's log file (the parent redirects them), so the log holds this
process's logging and anything a crashing native library prints.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("lipdub.jobs.child")


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lipdub.jobs.child")
    ap.add_argument("--job", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--parent", type=int, default=os.getppid())
    args = ap.parse_args(argv)
    _die_with_parent(args.parent)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    for noisy in ("matplotlib", "PIL", "urllib3", "httpx", "absl", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from lipdub.jobs.runner import run_job
    from lipdub.jobs.storage import LocalStorage
    from lipdub.jobs.store import DONE, JobStore

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
