"""Score ``lipdub analyse-audio`` on the self cases of ../shared/eval (per-clip table and mean).

    bash ../shared/eval/setup.sh
    /tmp/evalenv/bin/python ../shared/eval/make_cases.py --src ../shared/media --out /tmp/cases
    python bench/score_audio.py [--cases /tmp/cases] [--work /tmp/score_audio]

The track comes from each case's drive.wav alone (truth is only read by the scorer).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "eval"
sys.path.insert(0, str(ROOT))

from lipdub.commands.analyse_audio import run  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="/tmp/cases")
    ap.add_argument("--work", default="/tmp/score_audio")
    ap.add_argument("--evalpy", default="/tmp/evalenv/bin/python")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in sorted(Path(a.cases).glob("self_*")):
        fps = json.loads((case / "case.json").read_text())["fps"]
        out = work / f"{case.name}.json"
        run(case / "drive.wav", fps, json_out=out)  # same code path as `lipdub analyse-audio`
        res = subprocess.run([a.evalpy, str(EVAL / "score_track.py"), "--track", str(out), "--case", str(case),
                              "--json"], check=True, capture_output=True, text=True)
        rows.append(json.loads(res.stdout))
    if not rows:
        print(f"no self_* cases under {a.cases}", file=sys.stderr)
        return 1
    print(f"{'case':28s} {'r_best':>7s} {'lag':>4s} {'env_r':>6s} {'frames':>6s}")
    for r in rows:
        print(f"{r['case']:28s} {r['r_best']:7.3f} {r['best_lag']:+4d} {r['env_r']:6.3f} {r['frames']:6d}")
    mr = sum(r["r_best"] for r in rows) / len(rows)
    me = sum(r["env_r"] for r in rows) / len(rows)
    print(f"{'mean':28s} {mr:7.3f} {'':4s} {me:6.3f}   (margin over loudness {mr - me:+.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
