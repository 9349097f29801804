"""Run the independent lip-sync scorer (../shared/eval) over lipdub's output on every case.

    bash ../shared/eval/setup.sh
    /tmp/evalenv/bin/python ../shared/eval/make_cases.py --src ../shared/media --out /tmp/cases
    python bench/eval_suite.py [--cases /tmp/cases] [--work /tmp/eval_run] [--engine auto]
    python bench/eval_suite.py --heldout [--cases /tmp/cases_heldout] [--work /tmp/eval_heldout]

Renders each case with ``lipdub generate`` (an empty avatar cache, so the analysis runs too), lets
the scorer's own run_suite.py score it, and prints its per-case table followed by the issue's
checks on the means: open_r, its margin over the loudness baseline, best_lag, sharpness, face and
the cross cases' av_r and motion.

``--heldout`` scores cases the suite never shows (bench/heldout_cases.py: each video's halves the
other way round, and every template with the media folder's other speech, English and Mandarin),
built on first use. Run it on any change tuned against the suite: a change that only fits the suite
gains there and loses here. The issue's thresholds are printed for reference; they were set for the
suite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "eval"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=None, help="case folders (default /tmp/cases, or /tmp/cases_heldout)")
    ap.add_argument("--heldout", action="store_true", help="score the held-out cases, building them if missing")
    ap.add_argument("--work", default="/tmp/eval_run")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--evalpy", default="/tmp/evalenv/bin/python")
    a = ap.parse_args()
    a.cases = a.cases or ("/tmp/cases_heldout" if a.heldout else "/tmp/cases")
    if a.heldout and not Path(a.cases).is_dir():
        subprocess.run([a.evalpy, str(ROOT / "bench" / "heldout_cases.py"), "--out", a.cases], check=True)
    work = Path(a.work)
    cache = work / "avatar_cache"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cmd = (f"env LIPDUB_CACHE={cache} {sys.executable} -m lipdub generate --face {{template}} --audio {{audio}} "
           f"-o {{out}} --engine {a.engine}")
    subprocess.run([a.evalpy, str(EVAL / "run_suite.py"), "--cmd", cmd, "--cases", a.cases, "--work", str(work)],
                   check=True)
    results = json.loads((work / "results.json").read_text())
    rows = results if isinstance(results, list) else results.get("results", [])
    selfs = [r for r in rows if r["case"].startswith("self_")]
    crosses = [r for r in rows if r["case"].startswith("cross_")]

    def mean(key: str) -> float:
        return sum(r[key] for r in selfs) / max(len(selfs), 1)

    checks = [
        (f"mean open_r {mean('open_r'):.3f} >= 0.50", mean("open_r") >= 0.50),
        (f"open_r - env_r {mean('open_r') - mean('env_r'):+.3f} >= +0.10", mean("open_r") - mean("env_r") >= 0.10),
        (f"|mean best_lag| {abs(mean('best_lag')):.2f} <= 1", abs(mean("best_lag")) <= 1),
        (f"mean sharp {mean('sharp'):.2f} >= 0.90", mean("sharp") >= 0.90),
        (f"face on all frames (min {min(r['face'] for r in selfs + crosses):.3f})",
         all(r["face"] >= 1.0 for r in selfs + crosses)),
    ]
    for r in crosses:
        checks.append((f"{r['case']}: frozen {r['frozen']}, av_r {r['av_r']:.3f} >= 0.3, motion {r['motion']:.2f} >= 1.3",
                       not r["frozen"] and r["av_r"] >= 0.3 and r["motion"] >= 1.3))
    print()
    if a.heldout:
        motions = [r["motion"] for r in crosses if r["motion"] == r["motion"]]  # NaN: too little silence
        print(f"held-out ({len(selfs)} self, {len(crosses)} cross): mean open_r {mean('open_r'):.3f}, env_r "
              f"{mean('env_r'):.3f}, best_lag {mean('best_lag'):+.2f}; cross mean av_r "
              f"{sum(r['av_r'] for r in crosses) / max(len(crosses), 1):.3f}, motion min {min(motions, default=0):.2f}")
        print("The issue's thresholds, for reference (they were set on the suite's cases):")
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
