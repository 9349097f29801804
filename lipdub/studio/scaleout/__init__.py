"""Scale-out mode: the studio submits jobs to Celery over Redis; ``lipdub worker`` processes render them.

The job store (any SQLAlchemy URL; PostgreSQL across machines) stays the source of truth for a job's
state, progress and result; the broker only carries "render job <id>" messages. So:

* The server keeps an *outbox* table of the jobs it has sent: a sweep thread sends every queued job
  not in it yet (a job created while Redis was down is sent later, and two servers never send one twice).
* A worker takes a job over with one guarded UPDATE (a new run token), then renders it exactly as the
  embedded mode does: :meth:`LocalDispatcher.run_claimed` runs ``python -m lipdub.studio.jobs.child`` (which
  calls :func:`~lipdub.studio.jobs.runner.run_job`), so progress, logs, cancel and crash handling are shared.
* A worker touches its job row every 5 s while it renders. The server's sweep watches those heartbeats:
  a running job whose heartbeat has not moved for 30 s (its worker was killed) is put back in the queue
  under a void run token, in the same transaction as its outbox row is dropped, so the sweep sends it
  again at once and any live worker renders it (attempts + 1). The dead attempt's writes are refused.
* Messages are also acknowledged late, the last resort when no server is running: Redis hands a dead
  worker's message to another worker after ``visibility_timeout``, and that delivery takes the job over
  if its heartbeat went stale. A delivery of a job whose owner is alive (a late redelivery, or one the
  sweep already re-sent) is retried later instead of dropped, and a finished job is never rendered again.
"""
