"""Held-out lip-sync cases, for checking that a change which helps the scorer's suite is not tuned to it.

Run with the scorer's Python (it uses ../shared/eval's own readers and writers, and dlib is not ours):

    /tmp/evalenv/bin/python bench/heldout_cases.py --out /tmp/cases_heldout

The scorer's make_cases.py builds its self cases from the FIRST half of each talking video (template)
and the second half (speech and truth). This builds the other way round, and pairs every template
with speech the suite never uses:

- ``self_<clip>``: template = the second half's frames (silent), drive.wav = the first half's speech,
  truth.mp4 = the first half's frames. Same cutting rules as make_cases.py (split at frame n//2,
  variable frame rates resampled to a constant rate).
- ``cross_<clip>__<speech>``: that template with the first ``--speech-s`` seconds of every speech-only
  recording in the media folder (English and Mandarin).

``python bench/eval_suite.py --heldout`` builds these when missing and scores lipdub on them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
from itertools import islice

import numpy as np

EVAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "eval")
sys.path.insert(0, EVAL)
import avio  # noqa: E402  (../shared/eval)
import make_cases  # noqa: E402
import soundfile  # noqa: E402  (in the scorer's environment)

VIDEO_EXT = (".mp4", ".mov", ".mkv", ".webm")
AUDIO_EXT = (".wav", ".flac", ".mp3", ".m4a")


def constant_rate_slots(info: dict) -> tuple[object, int, np.ndarray]:
    """(rate, frame count, source frame shown in each slot), as make_cases.make_self resamples."""
    t = info["times"]
    if info["vfr"]:
        rate = info["rate"]
        n = int(np.floor((t[-1] - t[0]) * rate + 1e-3)) + 1
        return rate, n, np.searchsorted(t, t[0] + np.arange(n) / float(rate) + 1e-6, "right") - 1
    return info["avg_rate"], info["n_frames"], np.arange(info["n_frames"])


def reversed_self(path: str, out_root: str, name: str) -> str:
    info = avio.probe(path)
    rate, n, src = constant_rate_slots(info)
    fps, split = float(rate), n // 2
    x, sr, a_t0 = avio.read_audio(path)
    i0 = int(round((info["times"][0] - a_t0) * sr))
    na = int(round(split / fps * sr))
    drive = np.zeros(na, np.float32)
    seg = x[max(0, i0): i0 + na]
    drive[: len(seg)] = seg
    d = os.path.join(out_root, "self_" + name)
    os.makedirs(d, exist_ok=True)
    frames = make_cases.slot_frames(path, src)
    # The first half is truth, the second the template: the truth is written first, as decoded.
    avio.write_video(os.path.join(d, "truth.mp4"), islice(frames, split), rate, audio=drive, sr=sr)
    avio.write_video(os.path.join(d, "template.mp4"), islice(frames, n - split), rate)
    avio.write_wav(os.path.join(d, "drive.wav"), drive, sr)
    meta = dict(kind="self", source=os.path.abspath(path), fps=fps, rate=str(rate), frames=n, split_frame=split,
                template_frames=n - split, truth_frames=split, sample_rate=sr, drive_duration=na / sr,
                reversed=True)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return d


def cross(self_dir: str, speech: str, out_root: str, seconds: float) -> str:
    y, sr = soundfile.read(speech, dtype="float32", always_2d=True)
    y = y.mean(1)[: int(seconds * sr)]
    meta = json.load(open(os.path.join(self_dir, "case.json")))
    name = f"cross_{os.path.basename(self_dir)[5:]}__{os.path.splitext(os.path.basename(speech))[0]}"
    d = os.path.join(out_root, name)
    os.makedirs(d, exist_ok=True)
    shutil.copyfile(os.path.join(self_dir, "template.mp4"), os.path.join(d, "template.mp4"))
    avio.write_wav(os.path.join(d, "drive.wav"), y, sr)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(kind="cross", template_source=meta["source"], audio_source=os.path.abspath(speech),
                       fps=meta["fps"], rate=meta["rate"], template_frames=meta["template_frames"],
                       sample_rate=sr, drive_duration=len(y) / sr), f, indent=1)
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=os.path.join(EVAL, "..", "media"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--speech-s", type=float, default=10.0, help="seconds of each speech recording to use")
    a = ap.parse_args()
    if os.path.exists(a.out) and os.listdir(a.out):
        print(f"{a.out} is not empty; remove it to build the cases again.", file=sys.stderr)
        return 1
    os.makedirs(a.out, exist_ok=True)
    files = sorted(glob.glob(os.path.join(a.src, "*")))
    videos = [p for p in files if p.lower().endswith(VIDEO_EXT)]
    speech = [p for p in files if p.lower().endswith(AUDIO_EXT)]
    selfs = []
    for p in videos:
        info = avio.probe(p)
        if not (info["has_video"] and info["has_audio"]):
            continue
        selfs.append(reversed_self(p, a.out, os.path.splitext(os.path.basename(p))[0]))
        print("self ", selfs[-1])
    for s in selfs:
        for w in speech:
            print("cross", cross(s, w, a.out, a.speech_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
