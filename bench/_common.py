"""Helpers shared by the benchmarks: media lookup, long inputs made from real clips, peak RSS of a child."""

from __future__ import annotations

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
MEDIA = Path(os.environ.get("LIPDUB_SHARED", REPO.parent / "shared")) / "media"


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
