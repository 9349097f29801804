"""How widely each engine opens the mouth, against how widely the person really does, under the scorer.

    /tmp/evalenv/bin/python ../shared/eval/make_cases.py --src ../shared/corpus --out /tmp/ccases --min-frames 200
    python bench/engine_amplitude.py [--cases /tmp/ccases] [--engine retrieval --engine warp] [--work DIR]

For every self case of ../shared/eval, renders the case with each engine and measures, with the
eval's dlib tracker (run in its own venv, ``--evalpy``):
- ``amp``: the output's opening spread (std) over the template's. The real second half (``truth``)
  shows what the person does: a renderer that opens the mouth twice as wide as the person ever does
  over-articulates, and its open_r rises for it, because the tracker's noise weighs less against a
  larger movement.
- ``open_r``: the scorer's r with the real mouth at lag 0.
- ``mesh~dlib``: on the template, r between lipdub's face-mesh lip gap and dlib's opening. The two
  instruments disagree this much on the same frames; a renderer that picks real frames by the mesh's
  reading inherits the disagreement.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
from _common import in_eval_venv, mesh_opening

import lipdub

# Run by the eval venv's python: dlib's openings of the template, the truth and each output.
_DLIB_MEASURE = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import score
spec = json.load(open(sys.argv[2]))
def opening(p):
    return np.asarray(score.cached_track(p)['openness'], float)
def r(a, b):
    n = min(len(a), len(b)); a, b = a[:n], b[:n]; ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 10 else float('nan')
out = {}
for case, item in spec.items():
    tpl, truth = opening(item['template']), opening(item['truth'])
    mesh = np.load(item['mesh'])
    row = {'truth_amp': float(np.nanstd(truth) / np.nanstd(tpl)), 'mesh_dlib': r(mesh, tpl)}
    for engine, path in item['outputs'].items():
        o = opening(path)
        row[engine] = {'amp': float(np.nanstd(o) / np.nanstd(tpl)), 'open_r': r(o, truth)}
    out[case] = row
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=Path, default=Path("/tmp/ccases"))
    ap.add_argument("--engine", action="append", default=None)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "engine_amplitude")
    ap.add_argument("--evalpy", default="/tmp/evalenv/bin/python")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    engines = a.engine or ["retrieval", "warp"]
    a.work.mkdir(parents=True, exist_ok=True)
    spec: dict[str, dict] = {}
    for case in sorted(a.cases.glob("self_*")):
        template, drive = case / "template.mp4", case / "drive.wav"
        mesh = a.work / f"{case.name}_mesh.npy"
        gap, found = mesh_opening(template, a.work / "measure_cache")
        np.save(mesh, np.where(found, gap, np.nan))
        outputs = {}
        for engine in engines:
            out = a.work / f"{case.name}_{engine}.mp4"
            lipdub.generate(drive, template, out, engine=engine, device="cpu", cache_dir=a.work / "cache")
            outputs[engine] = str(out)
        spec[case.name] = {"template": str(template), "truth": str(case / "truth.mp4"), "mesh": str(mesh),
                           "outputs": outputs}
    rows = in_eval_venv(a.evalpy, _DLIB_MEASURE, spec, a.work)
    head = f"{'case':40s} {'mesh~dlib':>9s} {'truth amp':>9s}" + "".join(
        f" {e + ' amp':>14s} {e + ' open_r':>16s}" for e in engines)
    print(head)
    for name, row in rows.items():
        print(f"{name[:40]:40s} {row['mesh_dlib']:9.3f} {row['truth_amp']:9.2f}" + "".join(
            f" {row[e]['amp']:14.2f} {row[e]['open_r']:16.3f}" for e in engines))
    mean = {k: float(np.nanmean([r[k] for r in rows.values()])) for k in ("mesh_dlib", "truth_amp")}
    print(f"{'MEAN':40s} {mean['mesh_dlib']:9.3f} {mean['truth_amp']:9.2f}" + "".join(
        f" {np.nanmean([r[e]['amp'] for r in rows.values()]):14.2f}"
        f" {np.nanmean([r[e]['open_r'] for r in rows.values()]):16.3f}" for e in engines))


if __name__ == "__main__":
    main()
