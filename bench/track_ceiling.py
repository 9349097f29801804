"""How far the speech track alone follows the real mouth, before any rendering: the ceiling a renderer works under.

    /tmp/evalenv/bin/python ../shared/eval/make_cases.py --src ../shared/media --out /tmp/cases
    python bench/track_ceiling.py [--cases /tmp/cases] [--cases /tmp/ccases ...]

For every self case of ../shared/eval, analyses ``drive.wav`` as a job does for a silent template (the
generic mouth model, no speaker fit) and compares the track's opening, ``open x (1 - closed)``, the
quantity retrieval maps onto the template's mouths, with the real second half's mouth as the eval's
dlib tracker reads it (run in its own venv, ``--evalpy``):
- ``r0``: Pearson r at lag 0, what the scorer's open_r asks of the output;
- ``r_best`` and ``lag``: the best r over lags -8..+8 frames (positive: the real mouth moves before the
  sound that the track follows, so an output on time with the sound looks late).

A render follows its track at r 0.9 and lag 0 (bench/render_fidelity.py), so an output cannot do much
better than its track: where the track is late or early against a clip's real mouth, that is the
recording's own timing between mouth and sound, which a silent template cannot show.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
from _common import in_eval_venv

from lipdub.audio.fusion import analyse
from lipdub.media.audio import load_audio
from lipdub.media.probe import probe

# Run by the eval venv's python: the track's r with dlib's reading of the real mouth, at every lag.
_DLIB_MEASURE = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import score
spec = json.load(open(sys.argv[2]))
def r_at(a, b, lag):  # a late by lag frames: a[t + lag] against b[t]
    if lag > 0:
        a = a[lag:]
    elif lag < 0:
        b = b[-lag:]
    n = min(len(a), len(b)); a, b = a[:n], b[:n]; ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 20 else float('nan')
out = {}
for case, item in spec.items():
    truth = np.asarray(score.cached_track(item['truth'])['openness'], float)
    track = np.load(item['track'])
    out[case] = {str(lag): r_at(track, truth, lag) for lag in range(-8, 9)}
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=Path, action="append", default=None, help="case folders (default /tmp/cases)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "track_ceiling")
    ap.add_argument("--evalpy", default="/tmp/evalenv/bin/python")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    a.work.mkdir(parents=True, exist_ok=True)
    for folder in a.cases or [Path("/tmp/cases")]:
        spec: dict[str, dict] = {}
        for case in sorted(folder.glob("self_*")):
            truth = probe(case / "truth.mp4")
            fps = float(truth.fps)
            clip = load_audio(case / "drive.wav")
            track = analyse(clip, fps, max(1, math.ceil(clip.duration * fps - 1e-6)))  # as a job counts its frames
            opening = np.clip(track.open, 0, 1) * (1 - np.clip(track.closed, 0, 1))
            saved = a.work / f"{folder.name}_{case.name}.npy"
            np.save(saved, opening.astype(np.float64))
            spec[case.name] = {"truth": str(case / "truth.mp4"), "track": str(saved)}
        if not spec:
            print(f"{folder}: no self cases")
            continue
        rows = in_eval_venv(a.evalpy, _DLIB_MEASURE, spec, a.work)
        print(f"{folder}\n{'case':40s} {'r0':>6s} {'r_best':>7s} {'lag':>4s}")
        table = []
        for name, by_lag in rows.items():
            r = {int(k): v for k, v in by_lag.items()}
            best = max((lag for lag in r if np.isfinite(r[lag])), key=r.__getitem__, default=0)
            table.append((r[0], r[best], best))
            print(f"{name[:40]:40s} {r[0]:6.3f} {r[best]:7.3f} {best:+4d}")
        m = np.array(table)
        print(f"{'MEAN':40s} {np.nanmean(m[:, 0]):6.3f} {np.nanmean(m[:, 1]):7.3f} {m[:, 2].mean():+4.1f}\n")


if __name__ == "__main__":
    main()
