"""Shared fixtures: real media from ../shared/media, trimmed copies, an isolated avatar cache."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIPDUB_SHARED", REPO.parent / "shared"))
MEDIA = SHARED / "media"

VIDEOS = ["katie_talk_512.mp4", "suit_talk_700_vfr.mp4", "map_talk_844.mp4", "blue_talk_700.mp4"]
PHOTOS = ["portrait_474.png", "closeup_256.png", "portrait_624.jpg"]
AUDIOS = ["en_radio_8s.wav", "en_speech_12s.wav", "en_speech_60s.wav", "zh_news_8s.wav", "zh_speech_15s.wav"]

needs_media = pytest.mark.skipif(not MEDIA.is_dir(), reason=f"shared test media not found at {MEDIA} "
                                 "(clone lipdub beside the shared/ folder, or set LIPDUB_SHARED)")


def media(name: str) -> Path:
    path = MEDIA / name
    if not path.exists():
        pytest.skip(f"shared test media not found: {path}")
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # One avatar cache per test session: later tests reuse analyses, but never the user's ~/.cache.
    # Session-wide, so it is in place before module fixtures start servers whose job processes inherit it.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIPDUB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


def cut_audio(src: Path, dst: Path, seconds: float, codec: str | None = None) -> Path:
    """Copy the first ``seconds`` of ``src``'s audio into ``dst`` (format from its extension)."""
    with av.open(str(src)) as inp:
        ins = inp.streams.audio[0]
        rate = ins.codec_context.sample_rate
        layout = "mono" if ins.codec_context.channels == 1 else "stereo"
        with av.open(str(dst), "w") as out:
            name = codec or {".wav": "pcm_s16le", ".mp3": "libmp3lame", ".m4a": "aac", ".flac": "flac",
                             ".ogg": "libopus", ".opus": "libopus"}.get(dst.suffix, "aac")
            out_rate = 48000 if name == "libopus" else rate
            fmt = {"pcm_s16le": "s16", "libmp3lame": "s16p", "flac": "s16"}.get(name, "fltp")
            st = out.add_stream(name, rate=out_rate, layout=layout)
            res = av.AudioResampler(format=fmt, layout=layout, rate=out_rate)
            done = 0
            limit = int(seconds * out_rate)
            for frame in inp.decode(ins):
                frame.pts = None
                for f in res.resample(frame):
                    if done >= limit:
                        break
                    f.pts = None  # whole frames only: the cut lands within one codec frame (<0.1 s)
                    done += f.samples
                    for p in st.encode(f):
                        out.mux(p)
            for p in st.encode(None):
                out.mux(p)
    return dst


def cut_video(src: Path, dst: Path, frames: int) -> Path:
    """Re-encode the first ``frames`` frames of ``src`` (no sound, 25 fps, near-lossless) into ``dst``."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        ins = inp.streams.video[0]
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = ins.codec_context.width, ins.codec_context.height, "yuv420p"
        st.options = {"crf": "10"}
        for k, frame in enumerate(inp.decode(ins)):
            if k >= frames:
                break
            for p in st.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return dst


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m lipdub ARGS`` the way a user would, capturing output."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "lipdub", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def video_facts(path: Path) -> dict:
    """Codecs, frame count and durations of an output file, read back with PyAV."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0]
        frames = sum(1 for _ in c.decode(v))
        return dict(video_codec=v.codec_context.name, audio_codec=a.codec_context.name, frames=frames,
                    fps=float(v.average_rate), width=v.codec_context.width, height=v.codec_context.height,
                    pix_fmt=v.codec_context.pix_fmt, duration=c.duration / 1e6,
                    audio_duration=float(a.duration * a.time_base) if a.duration else None)


def audio_duration(path: Path) -> float:
    from lipdub.media.audio import load_audio

    return load_audio(path).duration


def wide_shot(dst: Path, frames: int = 50, scale: float = 0.5, at: tuple[int, int] = (700, 300)) -> Path:
    """Katie's talking clip shrunk to ``scale`` (her face about 128 px wide, a tenth of the width) inside a
    1280x720 frame of patterned wall: a presenter in a wide shot."""
    from fractions import Fraction

    import cv2
    import numpy as np

    from lipdub.media.decode import VideoDecoder
    from lipdub.media.frames import to_rgb
    from lipdub.media.probe import probe

    src = probe(media("katie_talk_512.mp4"))
    yy, xx = np.mgrid[0:720, 0:1280].astype(np.float32)
    wall = 70 + 40 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + 30 * (xx / 1280)
    background = np.dstack([wall, wall * 0.9, wall * 0.8]).astype(np.uint8)
    with av.open(str(dst), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 1280, 720, "yuv420p"
        st.options = {"crf": "14"}
        for _, frame in VideoDecoder(src, Fraction(25)).frames(0, frames):
            small = cv2.resize(to_rgb(frame)[0], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            canvas = background.copy()
            canvas[at[1]:at[1] + small.shape[0], at[0]:at[0] + small.shape[1]] = small
            for p in st.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return dst

