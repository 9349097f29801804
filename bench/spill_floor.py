"""How much of ../shared/eval/outside_face.py's spill count a renderer can be blamed for.

    bash ../shared/eval/setup.sh
    python bench/spill_floor.py --template T.mp4 --audio A.wav [--runs 3] [--work DIR]

Renders the template with the speech (``lipdub generate``), writes a do-nothing output that plays the
template's own frames, untouched, in the same forward-backward order as lipdub
(``pingpong_indices``), and runs outside_face.py on both, ``--runs`` times each. Prints the share of
frames with more than 2% of the ring spilled for every run, and the means.

Why the do-nothing output: outside_face.py finds the template frame each output frame was drawn on by
a luma match, among the frames where dlib found a face. On a template whose head turns, frames dlib
misses are matched to other frames, which differ around the face; and dlib's landmarks on the same
frames can differ from one run to the next. Both count as spills that no renderer made. A renderer
that changes nothing outside the face scores what the do-nothing output scores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "eval"
sys.path.insert(0, str(ROOT))

from lipdub.media.audio import load_audio  # noqa: E402
from lipdub.media.decode import pingpong_indices  # noqa: E402


def do_nothing(template: Path, audio: Path, out: Path) -> int:
    """The template's frames in lipdub's order for the speech's length, re-encoded as they are."""
    with av.open(str(template)) as inp:
        stream = inp.streams.video[0]
        rate = Fraction(stream.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in inp.decode(stream)]
    n = max(1, int(np.ceil(load_audio(audio).duration * rate - 1e-6)))
    with av.open(str(out), "w") as dst:
        vs = dst.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        vs.options = {"crf": "16"}
        for k in pingpong_indices(n, len(frames)):
            dst.mux(vs.encode(av.VideoFrame.from_ndarray(frames[int(k)], format="rgb24")))
        dst.mux(vs.encode(None))
    return n


def spilled(evalpy: str, out: Path, template: Path) -> float:
    """outside_face.py's share of frames over 2% spilled, in %."""
    res = subprocess.run([evalpy, str(EVAL / "outside_face.py"), "--out", str(out), "--template", str(template),
                          "--json"], check=True, capture_output=True, text=True)
    return 100.0 * json.loads(res.stdout.splitlines()[0])["frames_over"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--template", type=Path, required=True)
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "spill_floor")
    ap.add_argument("--evalpy", default="/tmp/evalenv/bin/python")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    rendered, still = a.work / "lipdub.mp4", a.work / "do_nothing.mp4"
    env = dict(os.environ, LIPDUB_CACHE=str(a.work / "avatar_cache"))
    subprocess.run([sys.executable, "-m", "lipdub", "generate", "--face", str(a.template), "--audio", str(a.audio),
                    "-o", str(rendered)], check=True, env=env)
    n = do_nothing(a.template, a.audio, still)
    rows = [(spilled(a.evalpy, rendered, a.template), spilled(a.evalpy, still, a.template)) for _ in range(a.runs)]
    print(f"{a.template}: {n} frames; % of frames over 2% spilled (outside_face.py)")
    print(f"{'run':>4s} {'lipdub':>8s} {'do-nothing':>11s}")
    for k, (x, y) in enumerate(rows, 1):
        print(f"{k:4d} {x:8.1f} {y:11.1f}")
    m = np.array(rows).mean(0)
    print(f"{'mean':>4s} {m[0]:8.1f} {m[1]:11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
