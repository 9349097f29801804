"""End-to-end speed at 1080p against the codec floor, on this machine.

    python bench/speed.py [--minutes 2] [--quality balanced] [--device cpu] [--engine auto]
                          [--template-minutes M] [--runs cold,warm]

Builds a 1080p25 template from a real talking clip in ../shared/media (scaled into a 1920x1080
frame and looped ping-pong to the requested length) and the same length of real speech, then:
1. codec floor: decode the template and encode it again with the same encoder settings and audio
   (no face work at all): the least any tool that writes full frames must spend;
2. lipdub generate through the CLI, cold (empty avatar cache), then warm (cache filled).
Prints wall time, frames per second, real-time factor and peak RSS for each, and the ratios.

``--template-minutes`` makes the template shorter than the speech (it is looped ping-pong), so a long
run can reuse the avatar cache of a shorter one: ``--minutes 10 --template-minutes 2 --runs warm``
after ``--minutes 2`` shows whether peak memory grows with the length of the output.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from _common import long_speech, media, run_measured

from lipdub.device import cpu_count

W, H, FPS = 1920, 1080, 25


def build_template(minutes: float, out: Path, source: str = "katie_talk_512.mp4") -> Path:
    """A 1080p25 talking template: the clip scaled to full height on a soft backdrop, looped ping-pong."""
    if out.exists():
        return out
    with av.open(str(media(source))) as c:
        clip = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    side = H
    frames = [cv2.resize(f, (side, side), interpolation=cv2.INTER_CUBIC) for f in clip]
    backdrop = cv2.GaussianBlur(cv2.resize(frames[0], (W, H)), (0, 0), 25)
    n = int(minutes * 60 * FPS)
    period = 2 * len(frames) - 2
    tmp = out.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as o:
        st = o.add_stream("libx264", rate=FPS)
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        st.options = {"preset": "veryfast", "crf": "18"}
        for i in range(n):
            r = i % period
            img = backdrop.copy()
            x0 = (W - side) // 2
            img[:, x0 : x0 + side] = frames[r if r < len(frames) else period - r]
            for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                o.mux(p)
        for p in st.encode(None):
            o.mux(p)
    os.replace(tmp, out)
    return out


def codec_floor(template: Path, audio: Path, out: Path, quality: str) -> tuple[float, int]:
    """Decode + encode only, with lipdub's own decoder and writer: (seconds, frames)."""
    from lipdub.media.audio import load_audio
    from lipdub.media.decode import TemplateFrames, pingpong_indices
    from lipdub.media.encode import VideoWriter
    from lipdub.media.probe import probe

    start = time.monotonic()
    t_info, a_info = probe(template), probe(audio)
    fps = Fraction(t_info.fps)
    n_out = int(np.ceil(load_audio(audio, info=a_info).duration * float(fps) - 1e-6))
    n_tpl = t_info.frames_estimate
    writer = VideoWriter(out, t_info.width, t_info.height, fps, a_info, quality)
    for frame in TemplateFrames(t_info, fps, n_tpl).frames_for(pingpong_indices(n_out, n_tpl)):
        writer.write(frame)
    writer.close()
    return time.monotonic() - start, n_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--quality", default="balanced")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--template-minutes", type=float, default=None, help="template length (default: --minutes)")
    ap.add_argument("--runs", default="cold,warm", help="which lipdub runs: cold (empty avatar cache), warm, or both")
    ap.add_argument("--no-floor", action="store_true", help="skip the codec floor (when only memory is compared)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lipdub-bench"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {cpu_count()} cores, {os.uname().machine}; device {a.device}; quality {a.quality}", flush=True)
    t_minutes = a.template_minutes or a.minutes
    template = build_template(t_minutes, work / f"template_1080p_{t_minutes:g}min.mp4")
    audio = long_speech(a.minutes, work / f"speech_{a.minutes:g}min.wav")
    seconds = a.minutes * 60

    frames = round(seconds * FPS)
    floor_fps = float("nan")
    if not a.no_floor:
        wall, frames = codec_floor(template, audio, work / "floor.mp4", a.quality)
        floor_fps = frames / wall
        print(f"codec floor      : {wall:7.1f} s  {floor_fps:6.1f} fps  {seconds / wall:5.2f}x real time", flush=True)

    cache = work / "cache"
    import shutil

    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    if "cold" in runs:
        shutil.rmtree(cache, ignore_errors=True)
    env_cmd = [sys.executable, "-m", "lipdub", "generate", "--audio", str(audio), "--face", str(template),
               "-o", str(work / "out.mp4"), "--device", a.device, "--quality", a.quality, "--engine", a.engine,
               "--cache-dir", str(cache)]
    for label in (f"lipdub ({r})" for r in runs):
        wall, peak, proc = run_measured(env_cmd)
        if proc.returncode != 0:
            sys.exit(f"lipdub failed:\n{proc.stderr[-3000:]}")
        fps = frames / wall
        print(f"{label:<17}: {wall:7.1f} s  {fps:6.1f} fps  {seconds / wall:5.2f}x real time  "
              f"peak RSS {peak / 2**20:6.0f} MiB  {100 * fps / floor_fps:5.1f}% of codec floor", flush=True)


if __name__ == "__main__":
    main()
