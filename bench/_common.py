"""Helpers shared by the benchmarks: media lookup, long inputs made from real clips, peak RSS of a child,
measurements run in the eval's own venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIPDUB_SHARED", REPO.parent / "shared"))
MEDIA = SHARED / "media"
EVAL = SHARED / "eval"


def media(name: str) -> Path:
    p = MEDIA / name
    if not p.exists():
        sys.exit(f"shared media not found: {p}")
    return p


def long_speech(minutes: float, out: Path, source: str = "en_speech_60s.wav") -> Path:
    """``minutes`` of real speech: the source clip repeated (16 kHz mono wav)."""
    from lipdub.media.audio import load_audio

    clip = load_audio(media(source))
    n = int(minutes * 60 * clip.sample_rate)
    reps = int(np.ceil(n / len(clip.samples)))
    with sf.SoundFile(out, "w", samplerate=clip.sample_rate, channels=1, subtype="PCM_16") as f:
        for _ in range(reps):
            take = min(len(clip.samples), n)
            f.write(clip.samples[:take])
            n -= take
    return out


def mesh_opening(video: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """lipdub's face-mesh inner-lip gap over the eye distance for every frame of ``video``, and where a
    face was found."""
    from lipdub.face.analyse import analyse_template
    from lipdub.face.landmarks import inter_ocular, lip_gap
    from lipdub.media.limits import Limits
    from lipdub.media.probe import probe

    info = probe(video, Limits(max_video_s=3600))
    av = analyse_template(info, info.fps, cache)
    return (lip_gap(av.landmarks) / inter_ocular(av.landmarks)).astype(np.float64), av.found


def in_eval_venv(evalpy: str, code: str, spec: dict, work: Path) -> dict:
    """Run ``code`` with the eval venv's python (dlib lives there, never in lipdub's): it gets the eval
    folder and a JSON file holding ``spec`` as its two arguments and prints one JSON object last."""
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps(spec))
    done = subprocess.run([evalpy, "-c", code, str(EVAL), str(spec_file)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_measured(cmd: list[str]) -> tuple[float, int, subprocess.CompletedProcess]:
    """Run ``cmd``; return (wall seconds, peak RSS in bytes of it and its children, completed process)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    stop.set()
    t.join()
    return time.monotonic() - start, peak, subprocess.CompletedProcess(cmd, proc.returncode, out, err)
