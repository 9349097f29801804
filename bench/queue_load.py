"""Queue load and durability check: 20 jobs submitted at once through the REST API, the server killed
with SIGKILL while the fifth renders, restarted; every job must finish with a correct output.

    python bench/queue_load.py [--jobs 20] [--kill-at 5] [--workers N] [--face PATH] [--json out.json]

Each job gets its own speech clip (1.0-1.8 s, different lengths) so that a mixed-up output is caught:
every result must be an MP4 with video and sound lasting as long as its own clip.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import cut_audio  # noqa: E402  (the tests' helper for cutting real speech)

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
log = logging.getLogger("queue_load")


def clip(src: Path, dst: Path, seconds: float) -> Path:
    return cut_audio(src, dst, seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, port: int, workers: int, logf) -> tuple[subprocess.Popen, float]:  # noqa: ANN001
    t0 = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(REPO / "app.py"), "--port", str(port), "--device", "cpu", "--data-dir", str(data)]
    if workers:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200:
                return proc, time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--kill-at", type=int, default=5, help="kill -9 the server while this job (1-based) renders")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--face", type=Path, default=MEDIA / "portrait_474.png")
    ap.add_argument("--speech", type=Path, default=MEDIA / "en_radio_8s.wav")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="lipdub-bench-"))
    data = args.data_dir or tmp / "data"
    lengths = [1.0 + 0.2 * (i % 5) for i in range(args.jobs)]
    clips = [clip(args.speech, tmp / f"speech_{i:02d}.wav", s) for i, s in enumerate(lengths)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logf = open(tmp / "server.log", "ab")  # noqa: SIM115
    proc, startup = start_server(data, port, args.workers, logf)
    log.info("server up in %.1f s (%s), data in %s", startup, httpx.get(url + "/api/v1/health").json(), data)
    face_bytes = args.face.read_bytes()

    def submit(i: int) -> tuple[int, str, float]:
        t = time.monotonic()
        with httpx.Client(base_url=url, timeout=120) as c:
            r = c.post("/api/v1/jobs", files=[("audio", (clips[i].name, clips[i].read_bytes())),
                                              ("face", (args.face.name, face_bytes))])
        r.raise_for_status()
        return i, r.json()["id"], time.monotonic() - t

    t_submit = time.monotonic()
    with ThreadPoolExecutor(args.jobs) as pool:
        submitted = sorted(pool.map(submit, range(args.jobs)))
    submit_wall = time.monotonic() - t_submit
    ids = {i: jid for i, jid, _ in submitted}
    lat = sorted(s for _, _, s in submitted)
    log.info("%d jobs accepted in %.2f s (latency p50 %.2f s, max %.2f s)", args.jobs, submit_wall,
             lat[len(lat) // 2], lat[-1])

    client = httpx.Client(base_url=url, timeout=60)
    # The queue order is the order the server created the rows; find the kill-at'th job in it.
    order = [j["id"] for j in reversed(client.get("/api/v1/jobs", params={"page_size": 200}).json()["items"])]
    victim = order[args.kill_at - 1]
    while True:
        j = client.get(f"/api/v1/jobs/{victim}").json()
        if j["status"] == "running" and j["progress"] > 0.05:
            break
        if j["status"] in ("done", "failed", "cancelled"):
            raise SystemExit(f"job #{args.kill_at} finished before it could be caught running: {j}")
        time.sleep(0.2)
    done_before = client.get("/api/v1/jobs", params={"status": "done", "page_size": 200}).json()["total"]
    log.info("job #%d (%s) is %s at %.0f%%: kill -9 the server (pid %d); %d done so far",
             args.kill_at, victim, j["stage"], j["progress"] * 100, proc.pid, done_before)
    t_kill = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    client.close()
    proc, startup2 = start_server(data, port, args.workers, logf)
    downtime = time.monotonic() - t_kill
    log.info("restarted in %.1f s (API down %.1f s)", startup2, downtime)
    client = httpx.Client(base_url=url, timeout=60)
    t_resume = time.monotonic()
    while True:
        page = client.get("/api/v1/jobs", params={"page_size": 200}).json()
        statuses = {j["id"]: j["status"] for j in page["items"]}
        if all(statuses.get(jid) in ("done", "failed", "cancelled") for jid in ids.values()):
            break
        time.sleep(1)
    total_wall = time.monotonic() - t_submit
    jobs = {jid: client.get(f"/api/v1/jobs/{jid}").json() for jid in ids.values()}

    # Check every output against its own clip.
    problems: list[str] = []
    render_secs: list[float] = []
    for i, jid in ids.items():
        j = jobs[jid]
        if j["status"] != "done":
            problems.append(f"job {i} {jid}: {j['status']} {j['error']}")
            continue
        out = tmp / f"out_{i:02d}.mp4"
        out.write_bytes(client.get(f"/api/v1/jobs/{jid}/result").content)
        with av.open(str(out)) as c:
            dur = (c.duration or 0) / 1e6
            ok = len(c.streams.video) == 1 and len(c.streams.audio) == 1
            frames = sum(1 for _ in c.decode(video=0))
        if not ok or abs(dur - lengths[i]) > 0.25 or frames < 10:
            problems.append(f"job {i} {jid}: duration {dur:.2f} s for a {lengths[i]:.2f} s clip, {frames} frames")
        render_secs.append(j["result"]["seconds"])
    attempts = {jid: jobs[jid]["attempts"] for jid in ids.values()}
    report = {
        "jobs": args.jobs, "workers": client.get("/api/v1/health").json()["workers"],
        "submit_wall_s": round(submit_wall, 2), "submit_latency_p50_s": round(lat[len(lat) // 2], 2),
        "submit_latency_max_s": round(lat[-1], 2), "killed_during_job": args.kill_at,
        "done_before_kill": done_before, "restart_s": round(startup2, 1), "api_downtime_s": round(downtime, 1),
        "after_restart_s": round(time.monotonic() - t_resume, 1), "total_wall_s": round(total_wall, 1),
        "render_s_mean": round(sum(render_secs) / max(1, len(render_secs)), 2),
        "done": sum(1 for j in jobs.values() if j["status"] == "done"),
        "rerun_jobs": sorted(i for i, jid in ids.items() if attempts[jid] > 1),
        "lost": args.jobs - len(jobs), "problems": problems,
    }
    proc.terminate()
    proc.wait(30)
    print(json.dumps(report, indent=2))  # noqa: T201 - the bench's output
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if not problems and report["done"] == args.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
