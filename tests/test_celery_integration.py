"""Scale-out end to end: the app sending to Celery over a real redis-server, two ``lipdub worker``s, a
real PostgreSQL job store. One worker is SIGKILLed mid-job; all 6 jobs of the batch must still finish,
each with its own correct output.
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
from studio_support import mp4_facts, need_media, short_audio

from lipdub.jobs.store import JobRow, JobStore

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
            assert "taking it over" in cluster.log(survivor)
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


def test_concurrent_deliveries_on_postgres_only_one_renders(pg_url):
    """Two workers receiving the same job at once (a redelivery race): exactly one gets to run it."""
    import threading

    from lipdub.jobs.celery_dispatch import take_over

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
