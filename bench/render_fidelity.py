"""Does the rendered mouth do what the track asked, on time? Measured with the product's own landmarks.

    python bench/render_fidelity.py [--cases /tmp/cases] [--engine retrieval --engine warp] [--work DIR]

For every self case of ../shared/eval (template.mp4 + drive.wav), renders the case with each engine,
measures the output's inner-lip gap per frame with lipdub's face mesh, and correlates it with the
MouthTrack's opening that the render was given (the same analysis, run again: it is deterministic).
Prints r at lag 0, the best lag in -4..+4 (positive: the rendered mouth is late) and r there.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
from _common import mesh_opening

import lipdub
from lipdub.audio import analyse
from lipdub.media.audio import load_audio


def lagged_r(a: np.ndarray, b: np.ndarray, lag: int) -> float:
    """r of a[i] with b[i + lag]."""
    x, y = (a[: len(a) - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: len(b) + lag])
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 10 or x[ok].std() < 1e-9 or y[ok].std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=Path, default=Path("/tmp/cases"))
    ap.add_argument("--engine", action="append", default=None)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "render_fidelity")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    engines = a.engine or ["retrieval", "warp"]
    a.work.mkdir(parents=True, exist_ok=True)
    print(f"{'case':28s} {'engine':10s} {'r@0':>6s} {'lag':>4s} {'r@lag':>6s}")
    for case in sorted(a.cases.glob("self_*")):
        template, drive = case / "template.mp4", case / "drive.wav"
        for engine in engines:
            out = a.work / f"{case.name}_{engine}.mp4"
            result = lipdub.generate(drive, template, out, engine=engine, device="cpu",
                                     cache_dir=a.work / "cache")
            track = analyse(load_audio(drive), result.fps, result.frames)
            got, _ = mesh_opening(out, a.work / "measure_cache")
            n = min(len(got), len(track))
            asked = track.open[:n].astype(np.float64)
            rs = {lag: lagged_r(asked, got[:n], lag) for lag in range(-4, 5)}
            best = max(rs, key=lambda k: -1 if np.isnan(rs[k]) else rs[k])
            print(f"{case.name:28s} {engine:10s} {rs[0]:6.3f} {best:+4d} {rs[best]:6.3f}", flush=True)


if __name__ == "__main__":
    main()
