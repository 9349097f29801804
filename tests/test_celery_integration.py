"""Scale-out end to end: the app sending to Celery over a real redis-server, two ``lipdub worker``s, a
real PostgreSQL job store. One worker is SIGKILLed mid-job; all 6 jobs of the batch must still finish,
each with its own correct output. A killed worker's job is found by its heartbeat and rendered again by
the other worker within a minute; killing an idle worker costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import psutil
import pytest
from celery_support import ScaleOut
from service_support import ServiceUnavailable, postgres_server, redis_server
from sqlalchemy import select
from studio_support import mp4_facts, need_media, short_audio, wait_job

from lipdub.studio.jobs.store import JobRow, JobStore

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(1800)]

# Different lengths, so a mixed-up output is caught; long enough that a job is still running when the
# worker is killed (a 1 s clip on a photo once finished in 0.7 s, before the kill landed).
CLIPS = [3.0, 3.4, 3.8, 4.2, 4.6, 5.0]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    try:
        with redis_server() as url:
            yield url
    except ServiceUnavailable as e:
        pytest.skip(f"scale-out test needs redis-server: {e}")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    try:
        with postgres_server() as url:
            yield url
    except ServiceUnavailable as e:
        pytest.skip(f"scale-out test needs PostgreSQL: {e}")


def _owner(store: JobStore, job_id: str) -> str | None:
    with store.session() as s:
        return s.scalar(select(JobRow.worker).where(JobRow.id == job_id))


def test_two_workers_one_killed_mid_job_all_six_complete(tmp_path, redis_url, pg_url):
    (photo,) = need_media("portrait_474.png")
    clips = [short_audio(tmp_path / f"speech_{i}.wav", s) for i, s in enumerate(CLIPS)]
    cluster = ScaleOut(tmp_path, redis_url, pg_url, visibility_timeout=45)
    store = JobStore(pg_url)
    try:
        cluster.start_app()
        w1, w2 = cluster.start_worker("w1"), cluster.start_worker("w2")
        cluster.wait_workers_ready()
        assert "Using device: cpu" in cluster.log("w1")
        with httpx.Client(base_url=cluster.url, timeout=60) as c:
            files = [("audios", (p.name, p.read_bytes())) for p in clips]
            files.append(("face", (photo.name, photo.read_bytes())))
            r = c.post("/api/v1/batches", files=files)
            assert r.status_code == 202, r.text
            batch_id = r.json()["id"]

            # Wait for a job to be rendering on some worker, then SIGKILL that worker.
            deadline = time.monotonic() + 600
            victim_job = victim = None
            while victim is None:
                assert time.monotonic() < deadline, cluster.log("w1") + cluster.log("w2")
                for j in c.get(f"/api/v1/batches/{batch_id}").json()["jobs"]:
                    # The render child is analysing the inputs: most of the job remains (frames are
                    # reported in chunks of 16, so "rendering" is first seen when a short clip is nearly
                    # done), so the kill lands mid-job.
                    if j["status"] == "running" and j["stage"] in ("analysing audio", "analysing template"):
                        owner = _owner(store, j["id"]) or ""
                        victim = next((n for n in ("w1", "w2") if owner.startswith(f"{n}@")), None)
                        victim_job = j["id"]
                        break
                time.sleep(0.1)
            proc = {"w1": w1, "w2": w2}[victim]
            renders = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
            assert renders, "the worker renders in a child process"
            killed_at = time.monotonic()
            cluster.kill9(victim)
            # Its render child dies with it (no orphan writing into the job's folder).
            while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in renders):
                assert time.monotonic() - killed_at < 15, "render child outlived its killed worker"
                time.sleep(0.2)
            after = c.get(f"/api/v1/jobs/{victim_job}").json()
            assert after["status"] == "running", f"the kill came too late to be mid-job: {after}"

            deadline = time.monotonic() + 1200
            while True:
                batch = c.get(f"/api/v1/batches/{batch_id}").json()
                if batch["status"] == "finished":
                    break
                assert time.monotonic() < deadline, (batch, cluster.log("w1"), cluster.log("w2"))
                time.sleep(1.0)

            jobs = {j["id"]: j for j in batch["jobs"]}
            assert [j["status"] for j in jobs.values()] == ["done"] * 6, (batch, cluster.log("w1"), cluster.log("w2"))
            assert jobs[victim_job]["attempts"] == 2
            survivor = "w2" if victim == "w1" else "w1"
            assert (_owner(store, victim_job) or "").startswith(f"{survivor}@")
            # Brought back by the app's heartbeat sweep or, should Redis hand its message back first (the
            # visibility timeout here is 45 s), by that delivery's take-over.
            assert "has not been heard from" in cluster.log("app") or "taking it over" in cluster.log(survivor)
            assert c.get(f"/api/v1/jobs/{victim_job}/log").text.count("attempt started") == 2
            for i, (jid, j) in enumerate(jobs.items()):
                assert j["attempts"] == (2 if jid == victim_job else 1), j
                out = tmp_path / f"out_{i}.mp4"
                out.write_bytes(c.get(f"/api/v1/jobs/{jid}/result").content)
                facts = mp4_facts(out)
                want = CLIPS[int(j["audio_name"].split("_")[1].split(".")[0])]
                assert facts["video"] and facts["audio"], j
                assert abs(facts["duration"] - want) < 0.2, (j["audio_name"], facts)
                assert facts["frames"] == pytest.approx(want * 25, abs=2), (j["audio_name"], facts)
            health = c.get("/api/v1/health").json()
            assert health["running"] == 0 and health["queued"] == 0 and health["workers"] >= 1, health
    finally:
        cluster.stop()
        store.dispose()


def _rendering_on(c: httpx.Client, store: JobStore, job_id: str, names: tuple[str, ...], timeout: float = 600) -> str:
    """Wait until ``job_id`` is analysing its inputs on one of the workers ``names``; return which."""
    deadline = time.monotonic() + timeout
    while True:
        j = c.get(f"/api/v1/jobs/{job_id}").json()
        assert time.monotonic() < deadline and j["status"] in ("queued", "running"), j
        if j["status"] == "running" and j["stage"] in ("analysing audio", "analysing template"):
            owner = _owner(store, job_id) or ""
            found = next((n for n in names if owner.startswith(f"{n}@")), None)
            if found:
                return found
        time.sleep(0.1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, redis_url, pg_url) -> Iterator[ScaleOut]:
    """The app and two workers, with a visibility timeout of an hour: nothing in these tests may wait for
    Redis to hand a message back, so whatever recovers a job here is the heartbeat."""
    cluster = ScaleOut(tmp_path_factory.mktemp("fleet"), redis_url, pg_url, visibility_timeout=3600)
    try:
        cluster.start_app()
        cluster.start_worker("w1")
        cluster.start_worker("w2")
        cluster.wait_workers_ready()
        yield cluster
    finally:
        cluster.stop()


def test_a_killed_workers_job_runs_on_the_other_within_a_minute(fleet, tmp_path, pg_url):
    (photo,) = need_media("portrait_474.png")
    clip = short_audio(tmp_path / "speech_4.wav", 4.0)
    store = JobStore(pg_url)
    names = tuple(n for n, p in fleet.workers.items() if p.poll() is None)
    try:
        with httpx.Client(base_url=fleet.url, timeout=60) as c:
            files = [("audio", (clip.name, clip.read_bytes())), ("face", (photo.name, photo.read_bytes()))]
            r = c.post("/api/v1/jobs", files=files)
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            victim = _rendering_on(c, store, job_id, names)
            survivor = next(n for n in names if n != victim)
            renders = [p.pid for p in psutil.Process(fleet.workers[victim].pid).children(recursive=True)]
            assert renders, "the worker renders in a child process"
            killed_at = time.monotonic()
            fleet.kill9(victim)
            while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in renders):
                assert time.monotonic() - killed_at < 15, "render child outlived its killed worker"
                time.sleep(0.2)
            dead_at = time.monotonic()

            # Who holds the job, sampled until it is done: the victim, then the survivor, never back.
            owners: list[str] = []
            taken_at = None
            while True:
                with store.session() as s:
                    row = s.get(JobRow, job_id)
                    status, worker = row.status, row.worker or ""
                if status == "running" and (not owners or owners[-1] != worker):
                    owners.append(worker)
                if taken_at is None and status == "running" and worker.startswith(f"{survivor}@"):
                    taken_at = time.monotonic()
                if status in ("done", "failed", "cancelled"):
                    break
                assert time.monotonic() - killed_at < 600, (status, fleet.log("app"), fleet.log(survivor))
                time.sleep(0.25)
            assert taken_at is not None, owners
            print(f"\nkilled {victim}; its render child gone after {dead_at - killed_at:.1f} s; the job running on "
                  f"{survivor} {taken_at - killed_at:.1f} s after the kill; done "
                  f"{time.monotonic() - killed_at:.1f} s after it")
            assert taken_at - killed_at < 60, taken_at - killed_at
            job = c.get(f"/api/v1/jobs/{job_id}").json()
            assert job["status"] == "done" and job["attempts"] == 2, (job, fleet.log(survivor))
            assert [o.split("@")[0] for o in owners] == [victim, survivor], owners
            # Two attempts in the log, the second begun only once the first's render process was dead.
            assert c.get(f"/api/v1/jobs/{job_id}/log").text.count("attempt started") == 2
            assert taken_at > dead_at
            assert "has not been heard from" in fleet.log("app")
            out = tmp_path / "out.mp4"
            out.write_bytes(c.get(f"/api/v1/jobs/{job_id}/result").content)
            facts = mp4_facts(out)
            assert facts["video"] and facts["audio"] and abs(facts["duration"] - 4.0) < 0.2, facts
    finally:
        store.dispose()
    fleet.start_worker(f"{victim}b")  # back to two workers for the next test
    fleet.wait_workers_ready()


def test_killing_an_idle_worker_loses_and_delays_nothing(fleet, tmp_path, pg_url):
    (photo,) = need_media("portrait_474.png")
    clips = [short_audio(tmp_path / f"speech_{i}.wav", s) for i, s in enumerate((3.0, 2.0))]
    store = JobStore(pg_url)
    names = tuple(n for n, p in fleet.workers.items() if p.poll() is None)
    try:
        with httpx.Client(base_url=fleet.url, timeout=60) as c:
            def submit(clip):
                files = [("audio", (clip.name, clip.read_bytes())), ("face", (photo.name, photo.read_bytes()))]
                r = c.post("/api/v1/jobs", files=files)
                assert r.status_code == 202, r.text
                return r.json()["id"]

            recoveries = fleet.log("app").count("has not been heard from")
            first = submit(clips[0])
            busy = _rendering_on(c, store, first, names)
            idle = next(n for n in names if n != busy)
            fleet.kill9(idle)
            second = submit(clips[1])  # sent after the kill: only the busy worker is left to take it
            for jid in (first, second):
                j = wait_job(c, jid, timeout=600)
                assert j["status"] == "done" and j["attempts"] == 1, (j, fleet.log(busy))
                assert (_owner(store, jid) or "").startswith(f"{busy}@")
            a, b = store.get(first), store.get(second)
            gap = (b.started_at - a.finished_at).total_seconds()
            print(f"\nkilled idle {idle}; the next job started {gap:.1f} s after the first finished on {busy}")
            assert gap < 10, gap  # picked up as soon as the worker was free, not after a timeout
            assert fleet.log("app").count("has not been heard from") == recoveries  # no job was re-queued
    finally:
        store.dispose()


def test_concurrent_deliveries_on_postgres_only_one_renders(pg_url):
    """Two workers receiving the same job at once (a redelivery race): exactly one gets to run it."""
    import threading

    from lipdub.studio.scaleout.takeover import take_over

    store = JobStore(pg_url)
    try:
        store.add_upload("a" * 64 + ".wav", "a.wav", 1)
        store.add_upload("f" * 64 + ".png", "f.png", 1)
        for _ in range(5):
            jid = store.create_job("a" * 64 + ".wav", "f" * 64 + ".png").id
            barrier = threading.Barrier(4)
            results: list = []

            def deliver(i: int, jid: str, barrier: threading.Barrier, results: list) -> None:
                barrier.wait()
                results.append(take_over(store, jid, f"w{i}"))

            threads = [threading.Thread(target=deliver, args=(i, jid, barrier, results)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            runs = [r for r in results if r.action == "run"]
            assert len(runs) == 1 and sum(r.action == "wait" for r in results) == 3, results
            assert store.get(jid).run_token == runs[0].token and store.get(jid).attempts == 1
    finally:
        store.dispose()
