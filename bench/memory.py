"""Peak memory against output length: a 5-second template looped for 1 and for 10 minutes.

    python bench/memory.py [--minutes 1 10] [--face map_talk_844.mp4]

Prints wall time, real-time factor and peak RSS for each length, and the growth between them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import long_speech, media, run_measured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10])
    ap.add_argument("--face", default="map_talk_844.mp4", help="template from the shared media (5 s)")
    ap.add_argument("--engine", default="auto")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in a.minutes:
            audio = long_speech(minutes, Path(tmp) / f"speech_{minutes:g}min.wav")
            out = Path(tmp) / f"out_{minutes:g}.mp4"
            cmd = [sys.executable, "-m", "lipdub", "generate", "--audio", str(audio), "--face", str(media(a.face)),
                   "-o", str(out), "--device", "cpu", "--engine", a.engine]
            wall, peak, proc = run_measured(cmd)
            if proc.returncode != 0:
                sys.exit(f"lipdub failed for {minutes} min:\n{proc.stderr[-2000:]}")
            rows.append((minutes, wall, peak))
            print(f"{minutes:6.1f} min  wall {wall:8.1f} s  real-time factor {minutes * 60 / wall:5.2f}x  "
                  f"peak RSS {peak / 2**20:7.0f} MiB", flush=True)
    if len(rows) >= 2:
        first, last = rows[0][2], rows[-1][2]
        print(f"peak RSS growth {rows[0][0]:g} -> {rows[-1][0]:g} min: {100 * (last - first) / first:+.1f}%")


if __name__ == "__main__":
    main()
