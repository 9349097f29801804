"""Scale-out throughput: the same 6-job batch through the app and Celery with 1 worker, then 2.

    python bench/celery_throughput.py [--workers 1 2] [--face portrait_474.png] [--json out.json]

Starts its own redis-server and PostgreSQL on loopback (Debian's packages), the app with ``--broker``
and N ``lipdub worker --device cpu`` processes. A warm-up job fills the avatar cache first, so every
timed run starts equally warm. Prints the wall time from submitting the batch to its last result, and
jobs per minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test helpers that start services and the cluster

from celery_support import ScaleOut  # noqa: E402
from service_support import postgres_server, redis_server  # noqa: E402
from studio_support import need_media, short_audio  # noqa: E402

log = logging.getLogger("celery_throughput")
CLIPS = [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]


def _wait_batch(c: httpx.Client, batch_id: str, timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = c.get(f"/api/v1/batches/{batch_id}").json()
        if b["status"] == "finished":
            return b
        time.sleep(0.25)
    raise SystemExit(f"batch {batch_id} did not finish in {timeout} s")


def run(n_workers: int, work: Path, broker: str, db: str, clips: list[Path], face: Path, warm_up: bool) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    cluster = ScaleOut(work, broker, db, visibility_timeout=3600)
    try:
        cluster.start_app()
        for i in range(n_workers):
            cluster.start_worker(f"w{i + 1}")
        cluster.wait_workers_ready()
        with httpx.Client(base_url=cluster.url, timeout=120) as c:
            if warm_up:
                files = [("audios", (clips[0].name, clips[0].read_bytes())), ("face", (face.name, face.read_bytes()))]
                t = time.monotonic()
                _wait_batch(c, c.post("/api/v1/batches", files=files).json()["id"])
                log.info("warm-up job: %.1f s", time.monotonic() - t)
            files = [("audios", (p.name, p.read_bytes())) for p in clips] + [("face", (face.name, face.read_bytes()))]
            t0 = time.monotonic()
            r = c.post("/api/v1/batches", files=files)
            r.raise_for_status()
            batch = _wait_batch(c, r.json()["id"])
            wall = time.monotonic() - t0
        statuses = [j["status"] for j in batch["jobs"]]
        if statuses != ["done"] * len(clips):
            raise SystemExit(f"not all done: {statuses}")
        render_s = [j["result"]["seconds"] for j in batch["jobs"]]
        out = {"workers": n_workers, "jobs": len(clips), "wall_s": round(wall, 1),
               "jobs_per_min": round(len(clips) * 60 / wall, 2),
               "mean_render_s": round(sum(render_s) / len(render_s), 1)}
        log.info("%s", out)
        return out
    finally:
        cluster.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--face", default="portrait_474.png", help="a file in ../shared/media")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    (face,) = need_media(args.face)
    results = []
    with tempfile.TemporaryDirectory(prefix="lipdub-celery-bench-") as tmp, redis_server() as broker, \
            postgres_server() as db:
        clips = [short_audio(Path(tmp) / f"speech_{i}.wav", s) for i, s in enumerate(CLIPS)]
        for k, n in enumerate(args.workers):
            results.append(run(n, Path(tmp) / f"run{k}_{n}w", broker, db, clips, face, warm_up=k == 0))
    print(f"{'workers':>8} {'jobs':>5} {'wall s':>8} {'jobs/min':>9} {'mean render s':>14}")
    for r in results:
        print(f"{r['workers']:>8} {r['jobs']:>5} {r['wall_s']:>8} {r['jobs_per_min']:>9} {r['mean_render_s']:>14}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
