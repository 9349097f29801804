"""The Celery app both sides build: the server only sends, the workers also register the task."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lipdub.errors import ConfigError
from lipdub.studio.scaleout.urls import SCALE_EXTRA

if TYPE_CHECKING:
    from celery import Celery

TASK_NAME = "lipdub.render"
DEFAULT_QUEUE = "lipdub"
# Redis re-delivers a message its consumer has not acknowledged after this long. It must exceed the
# longest render: a live job older than this gets a second delivery (which then waits, see takeover.py).
DEFAULT_VISIBILITY_TIMEOUT_S = 2 * 3600


def make_celery(broker: str, *, visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT_S,
                queue: str = DEFAULT_QUEUE) -> Celery:
    """The Celery app used by both sides (the server only sends; workers also register the task)."""
    try:
        from celery import Celery
    except ImportError:
        raise ConfigError("Scale-out (--broker, `lipdub worker`) needs Celery, which is not installed; install "
                          f"it with: pip install '{SCALE_EXTRA}'") from None

    app = Celery("lipdub", broker=broker, set_as_current=False)
    vt = float(visibility_timeout)
    app.conf.update(
        task_acks_late=True,  # a job is acknowledged only once rendered: a dead worker's job comes back
        task_reject_on_worker_lost=True,  # ... also when a pool child dies (prefork), not only the node
        worker_prefetch_multiplier=1,  # a busy worker holds no second job that an idle one could take
        task_ignore_result=True,  # results live in the job store, not in a result backend
        task_default_queue=queue,
        task_routes={TASK_NAME: {"queue": queue}},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,  # keep lipdub's ``[INFO] ...`` log format
        worker_send_task_events=False,
        broker_transport_options={
            "visibility_timeout": vt,
            # Kombu sweeps for abandoned messages every interval*throttle seconds (100 s by default);
            # make it a fraction of the visibility timeout so recovery is not dominated by the sweep.
            "unacked_restore_interval": max(1.0, min(10.0, vt / 4)),
            "unacked_restore_throttle": 1,
        },
    )
    return app
