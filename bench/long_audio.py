"""Full-length benchmark: N minutes of real speech (../shared/media/en_speech_60s.wav tiled) through
``lipdub.audio.analyse`` (the fusion stage) with pocketsphinx, reporting the real-time factor, the peak RSS growth of
this process and the peak RSS of the largest phone-recognition worker process.

    python bench/long_audio.py [--minutes 30]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipdub.audio import analyse  # noqa: E402
from lipdub.media.audio import AudioClip, load_audio  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=30.0)
    a = ap.parse_args()
    src = load_audio(ROOT.parent / "shared" / "media" / "en_speech_60s.wav").samples
    reps = int(np.ceil(a.minutes * 60 * 16000 / len(src)))
    clip = AudioClip(np.tile(src, reps)[: int(a.minutes * 60 * 16000)])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    tr = analyse(clip, 25.0)
    dt = time.perf_counter() - t0
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest phone worker's peak
    print(f"{clip.duration / 60:.1f} min audio -> {len(tr)} frames in {dt:.1f} s "
          f"(RTF {dt / clip.duration:.4f}); peak RSS grew {grown:.0f} MiB, largest worker process "
          f"{worker:.0f} MiB; speech {tr.speech.mean():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
