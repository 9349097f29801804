"""What a photo's head motion costs: a 1080p photo with and without ``--still``, through the CLI.

    python bench/photo_speed.py [--minutes 0.5] [--repeat 2] [--quality balanced] [--device cpu]

Builds a 1920x1080 JPEG from a real portrait in ../shared/media (scaled to the full height, so the
face is about 700 px tall: the costly case) and that many minutes of real speech, then runs
``lipdub generate`` with head motion and with ``--still``, interleaved (the machine's speed drifts),
and prints wall time, frames per second, real-time factor and peak RSS of each run, and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from _common import long_speech, media, run_measured

from lipdub.device import cpu_count

W, H, FPS = 1920, 1080, 25


def build_photo(out: Path, source: str = "portrait_624.jpg") -> Path:
    """The portrait scaled to the full height of a 1080p picture, on a plain backdrop."""
    if out.exists():
        return out
    img = cv2.imread(str(media(source)))
    img = cv2.resize(img, (H * img.shape[1] // img.shape[0], H), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((H, W, 3), (180, 190, 200), np.uint8)
    x0 = (W - img.shape[1]) // 2
    canvas[:, x0 : x0 + img.shape[1]] = img
    cv2.imwrite(str(out), canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quality", default="balanced")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lipdub-bench-photo"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    photo = build_photo(work / "photo_1080p.jpg")
    speech = long_speech(a.minutes, work / f"speech_{a.minutes:g}min.wav")
    frames = int(np.ceil(a.minutes * 60 * FPS))
    print(f"machine: {cpu_count()} cores; device {a.device}; quality {a.quality}; {frames} frames of 1080p")
    env_cache = ["env", f"LIPDUB_CACHE={work / 'cache'}"]
    walls: dict[str, list[float]] = {"head motion": [], "--still": []}
    for run in range(a.repeat + 1):
        for label, extra in (("head motion", []), ("--still", ["--still"])):
            cmd = [*env_cache, sys.executable, "-m", "lipdub", "generate", "--audio", str(speech), "--face",
                   str(photo), "-o", str(work / "out.mp4"), "--device", a.device, "--quality", a.quality, *extra]
            wall, peak, done = run_measured(cmd)
            if done.returncode != 0:
                sys.exit(f"lipdub failed:\n{done.stderr[-2000:]}")
            if run == 0:
                continue  # the first pair warms the avatar cache and the disk
            walls[label].append(wall)
            print(f"{label:<12}: {wall:7.1f} s  {frames / wall:6.1f} fps  {frames / FPS / wall:5.2f}x real time  "
                  f"peak RSS {peak / 2**20:6.0f} MiB")
    moving, still = (statistics.median(walls[k]) for k in ("head motion", "--still"))
    print(f"median: head motion {moving:.1f} s ({frames / FPS / moving:.2f}x real time), --still {still:.1f} s "
          f"({frames / FPS / still:.2f}x); head motion costs {1000 * (moving - still) / frames:.1f} ms a frame")


if __name__ == "__main__":
    main()
