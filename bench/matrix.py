"""Every template in ../shared/media with every speech file (and an mp3 and an m4a made from one).

    python bench/matrix.py [--work DIR]

Renders each pair through the library call and checks the output: H.264 + AAC, ceil(duration x fps)
frames, duration within one frame of the audio. Prints one line per pair and a summary.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import av
from _common import REPO, media

sys.path.insert(0, str(REPO / "tests"))
from conftest import AUDIOS, PHOTOS, VIDEOS, cut_audio  # noqa: E402

import lipdub  # noqa: E402
from lipdub.media.audio import load_audio  # noqa: E402


def check(out: Path, audio: Path) -> str:
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = sum(1 for _ in c.decode(v))
        fps = float(v.average_rate)
        ok = v.codec_context.name == "h264" and a.codec_context.name == "aac"
    dur = load_audio(audio).duration
    ok = ok and frames == math.ceil(dur * fps - 1e-6) and abs(frames / fps - dur) <= 1 / fps + 1e-6
    return ("ok" if ok else "BAD") + f" {frames} frames @ {fps:.3g} fps, audio {dur:.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lipdub-matrix"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    audios = [media(x) for x in AUDIOS]
    audios += [cut_audio(media("en_speech_12s.wav"), work / "speech.mp3", 12.0),
               cut_audio(media("zh_speech_15s.wav"), work / "speech.m4a", 15.0)]
    bad = 0
    for face in VIDEOS + PHOTOS:
        for audio in audios:
            out = work / f"{Path(face).stem}__{audio.stem}{audio.suffix.replace('.', '_')}.mp4"
            t = time.monotonic()
            try:
                lipdub.generate(audio, media(face), out, device="cpu")
                verdict = check(out, audio)
            except Exception as e:  # noqa: BLE001 - report every pair
                verdict = f"FAILED {type(e).__name__}: {e}"
            bad += not verdict.startswith("ok")
            print(f"{face:<24} {audio.name:<18} {time.monotonic() - t:6.1f} s  {verdict}", flush=True)
    print(f"{bad} of {len(VIDEOS + PHOTOS) * len(audios)} pairs failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
