"""Scale-out mode without services: job take-over on redelivery, the outbox, the worker's Celery config."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from lipdub.studio.jobs.store import MAX_ATTEMPTS, JobRow, JobStore, sqlite_url, utcnow
from lipdub.studio.scaleout.celery_app import TASK_NAME, make_celery
from lipdub.studio.scaleout.dispatcher import CeleryDispatcher
from lipdub.studio.scaleout.outbox import OutboxRow
from lipdub.studio.scaleout.takeover import heartbeat, take_over
from lipdub.studio.scaleout.urls import normalize_db_url, redact


@pytest.fixture
def store(tmp_path):
    s = JobStore(sqlite_url(tmp_path / "jobs.db"))
    s.add_upload("a" * 64 + ".wav", "a.wav", 1)
    s.add_upload("f" * 64 + ".png", "f.png", 1)
    yield s
    s.dispose()


def _job(store: JobStore) -> str:
    return store.create_job("a" * 64 + ".wav", "f" * 64 + ".png", audio_name="a.wav", face_name="f.png").id


def _age(store: JobStore, job_id: str, seconds: float) -> None:
    with store.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(updated_at=utcnow() - timedelta(seconds=seconds)))


def test_first_delivery_claims_a_queued_job(store):
    jid = _job(store)
    t = take_over(store, jid, "w1")
    assert t.action == "run" and t.token
    job = store.get(jid)
    assert job.status == "running" and job.run_token == t.token and job.attempts == 1


def test_second_delivery_waits_while_the_owner_is_alive(store):
    jid = _job(store)
    first = take_over(store, jid, "w1")
    again = take_over(store, jid, "w2", stale_after=30)
    assert again.action == "wait" and 1 <= again.retry_in <= 30
    assert store.get(jid).run_token == first.token  # untouched


def test_redelivery_takes_over_a_dead_workers_job(store):
    jid = _job(store)
    dead = take_over(store, jid, "w1")
    assert store.report_progress(jid, dead.token, "rendering", 0.5)
    _age(store, jid, 60)  # its worker was SIGKILLed: no heartbeat for a minute
    new = take_over(store, jid, "w2", stale_after=30)
    assert new.action == "run" and new.token != dead.token
    job = store.get(jid)
    assert job.status == "running" and job.attempts == 2 and job.progress == 0.0
    # The dead attempt can no longer write; the new one can.
    assert not store.report_progress(jid, dead.token, "rendering", 0.9)
    assert not store.finish(jid, dead.token, "done", result={})
    assert not heartbeat(store, jid, dead.token) and heartbeat(store, jid, new.token)


def test_a_finished_job_is_not_rendered_again(store):
    jid = _job(store)
    t = take_over(store, jid, "w1")
    store.finish(jid, t.token, "done", result={"frames": 1})
    again = take_over(store, jid, "w2")
    assert again.action == "skip" and again.reason == "done"
    assert store.get(jid).attempts == 1


def test_cancelled_while_its_worker_was_dead(store):
    jid = _job(store)
    take_over(store, jid, "w1")
    store.request_cancel(jid)
    _age(store, jid, 60)
    assert take_over(store, jid, "w2").action == "skip"
    assert store.get(jid).status == "cancelled"


def test_a_job_that_keeps_killing_workers_fails(store):
    jid = _job(store)
    for _ in range(MAX_ATTEMPTS):
        assert take_over(store, jid, "w").action == "run"
        _age(store, jid, 600)
    t = take_over(store, jid, "w")
    assert t.action == "skip" and store.get(jid).status == "failed"
    assert "interrupted" in store.get(jid).error


def test_deleted_job_is_skipped(store):
    jid = _job(store)
    store.delete(jid)
    assert take_over(store, jid, "w").reason == "deleted"


class _FakeCelery:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[str] = []
        self.fail = fail

    def send_task(self, name: str, args: list, queue: str) -> None:
        assert name == TASK_NAME and queue == "lipdub"
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append(args[0])


def test_outbox_sends_each_queued_job_once(store):
    app = _FakeCelery()
    d = CeleryDispatcher(store, "redis://x", app=app)
    ids = [_job(store) for _ in range(3)]
    assert d.send_pending() == ids and app.sent == ids
    assert d.send_pending() == []  # already sent
    # A second server on the same store does not send them again either.
    other = _FakeCelery()
    assert CeleryDispatcher(store, "redis://x", app=other).send_pending() == [] and other.sent == []
    # Finished jobs leave the outbox.
    t = take_over(store, ids[0], "w")
    store.finish(ids[0], t.token, "done", result={})
    d.send_pending()
    with store.session() as s:
        assert sorted(r.job_id for r in s.query(OutboxRow)) == sorted(ids[1:])


def test_outbox_retries_when_the_broker_is_down(store):
    jid = _job(store)
    down = CeleryDispatcher(store, "redis://x", app=_FakeCelery(fail=True))
    with pytest.raises(ConnectionError):
        down.send_pending()
    up = _FakeCelery()
    assert CeleryDispatcher(store, "redis://x", app=up).send_pending() == [jid]


def test_worker_config_acks_late_and_visibility_timeout():
    app = make_celery("redis://127.0.0.1:1/0", visibility_timeout=40)
    c = app.conf
    assert c.task_acks_late and c.task_reject_on_worker_lost and c.worker_prefetch_multiplier == 1
    assert c.broker_transport_options["visibility_timeout"] == 40
    assert c.broker_transport_options["unacked_restore_interval"] == 10
    assert c.broker_transport_options["unacked_restore_throttle"] == 1


def test_urls():
    assert redact("redis://:secret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
    assert normalize_db_url("sqlite:///x.db") == "sqlite:///x.db"
    assert normalize_db_url("postgresql://u@h/db").startswith("postgresql")


def test_render_task_retries_while_owned_and_skips_when_finished(store, tmp_path):
    from celery.exceptions import Retry

    from lipdub.studio.jobs.storage import LocalStorage
    from lipdub.studio.scaleout.worker import WorkerContext, register_task

    app = make_celery("memory://")
    task = register_task(app, WorkerContext(store, LocalStorage(tmp_path / "s"), "cpu", "w2"))
    jid = _job(store)
    owner = take_over(store, jid, "w1")
    with pytest.raises(Retry):  # a live worker owns it: look again later, do not drop the message
        task.run(jid)
    store.finish(jid, owner.token, "done", result={})
    assert task.run(jid) == "done"  # a finished job is not rendered again
    assert store.get(jid).attempts == 1


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_server_resends_a_job_whose_worker_stopped_beating(store):
    """A worker killed mid-job: the server sees its heartbeat stand still for 30 s, puts the job back and
    sends it again; a live worker renders it as attempt 2, and the dead attempt's writes are refused."""
    app = _FakeCelery()
    d = CeleryDispatcher(store, "redis://x", app=app)
    d._watch.clock = clock = _Clock()
    jid = _job(store)
    assert d.send_pending() == [jid]
    dead = take_over(store, jid, "w1")
    assert d.recover_stale() == []  # first sight of its heartbeat
    clock.t += 25
    assert heartbeat(store, jid, dead.token)  # alive: the heartbeat moved
    clock.t += 25
    assert d.recover_stale() == []  # the heartbeat moved: silent for 0 s, not 50
    clock.t += 29  # ... then the worker was killed: nothing moves
    assert d.recover_stale() == []
    clock.t += 2
    assert d.recover_stale() == [jid]
    job = store.get(jid)
    assert job.status == "queued" and job.run_token is None and job.attempts == 1
    assert d.send_pending() == [jid] and app.sent == [jid, jid]
    assert not heartbeat(store, jid, dead.token)  # the dead attempt cannot write any more
    new = take_over(store, jid, "w2")
    assert new.action == "run" and store.get(jid).attempts == 2
    # The dead worker's own message, handed back by Redis at last, finds the job owned and waits.
    assert take_over(store, jid, "w3").action == "wait"
    store.finish(jid, new.token, "done", result={})
    clock.t += 3600
    assert d.recover_stale() == [] and d.send_pending() == [] and app.sent == [jid, jid]  # done stays done


def test_a_worker_with_a_wrong_clock_is_not_taken_for_dead(store):
    """Staleness is judged on the server's clock, by whether the heartbeat moves: a worker whose clock is an
    hour behind writes heartbeats that look an hour old, and is alive all the same."""
    d = CeleryDispatcher(store, "redis://x", app=_FakeCelery())
    d._watch.clock = clock = _Clock()
    jid = _job(store)
    take_over(store, jid, "w1")
    for k in range(12):
        _age(store, jid, 3600 - k)  # a heartbeat every 5 s, stamped an hour in the past
        assert d.recover_stale() == []
        clock.t += 5
    assert store.get(jid).status == "running"


def test_a_late_heartbeat_keeps_the_job_where_it_is(store):
    """The re-queue is guarded by the exact heartbeat seen: one that lands in between wins."""
    jid = _job(store)
    owner = take_over(store, jid, "w1")
    seen = store.get(jid).updated_at
    _age(store, jid, -1)  # the owner beats once more
    assert store.requeue_stale(jid, owner.token, seen) is None
    assert store.get(jid).run_token == owner.token
    now = store.get(jid).updated_at
    assert store.requeue_stale(jid, owner.token, now) == "queued"


def test_a_dead_workers_cancelled_or_exhausted_job_is_not_sent_again(store):
    app = _FakeCelery()
    d = CeleryDispatcher(store, "redis://x", app=app)
    d._watch.clock = clock = _Clock()
    cancelled, exhausted = _job(store), _job(store)
    d.send_pending()
    take_over(store, cancelled, "w1")
    store.request_cancel(cancelled)
    with store.session() as s:
        s.execute(update(JobRow).where(JobRow.id == exhausted).values(attempts=MAX_ATTEMPTS - 1))
    take_over(store, exhausted, "w1")
    d.recover_stale()
    clock.t += 31
    assert d.recover_stale() == []
    assert store.get(cancelled).status == "cancelled"
    assert store.get(exhausted).status == "failed" and "interrupted" in store.get(exhausted).error
    assert d.send_pending() == [] and len(app.sent) == 2
