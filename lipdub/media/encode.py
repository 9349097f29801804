"""Output: H.264 (libx264, or NVENC on a GPU) in yuv420p with the user's audio as AAC, +faststart."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import numpy as np

from lipdub.errors import InputError, LipdubError
from lipdub.media.frames import OutputFrame
from lipdub.media.probe import UNSPECIFIED, MediaInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quality:
    name: str
    x264_preset: str
    crf: int
    nvenc_preset: str
    nvenc_cq: int


# fast and balanced share x264's fastest preset (speed is the point of both); the CRF sets quality.
QUALITIES = {
    "fast": Quality("fast", "ultrafast", 23, "p1", 26),
    "balanced": Quality("balanced", "ultrafast", 18, "p4", 21),
    "best": Quality("best", "medium", 16, "p7", 18),
}


def quality(name: str) -> Quality:
    try:
        return QUALITIES[name]
    except KeyError:
        raise LipdubError(f"Unknown quality '{name}'; use one of: {', '.join(QUALITIES)}.") from None


def nvenc_available() -> bool:
    """Whether this FFmpeg has the NVENC encoder compiled in (not whether it opens: :func:`nvenc_opens`)."""
    try:
        av.codec.Codec("h264_nvenc", "w")
    except Exception:  # noqa: BLE001 - PyAV raises several kinds for a missing encoder
        return False
    return True


def ffmpeg_reason(error: BaseException) -> str:
    """FFmpeg's own words for a failed call (the log line PyAV attaches), else the error itself."""
    logged = getattr(error, "log", None)
    if isinstance(logged, tuple) and len(logged) == 3 and str(logged[2]).strip():
        return str(logged[2]).strip()
    return str(error)


@contextmanager
def ffmpeg_errors_attached() -> Iterator[None]:
    """FFmpeg's error log on, kept off stderr: a failing call's exception then carries FFmpeg's reason
    (``error.log``) instead of a bare errno ("[Errno 1] Operation not permitted" for NVENC)."""
    before = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture():
            yield
    finally:
        av.logging.set_level(before)


def nvenc_opens(gpu: int | None = None) -> tuple[bool, str]:
    """Whether NVENC opens an encoder on GPU ``gpu`` (None: FFmpeg's default, the first), with FFmpeg's
    reason when it does not. Compiled in is not enough: the driver, its libnvidia-encode, and a GPU
    with an encoder (data-centre GPUs such as the A100 and H100 have none) must all be there."""
    if not nvenc_available():
        return False, "this FFmpeg has no NVENC encoder compiled in"
    cc = av.codec.CodecContext.create("h264_nvenc", "w")
    cc.width, cc.height, cc.pix_fmt = 256, 256, "yuv420p"
    cc.time_base = Fraction(1, 25)
    if gpu is not None:
        cc.options = {"gpu": str(gpu)}
    try:
        with ffmpeg_errors_attached():
            cc.open()
    except Exception as e:  # noqa: BLE001 - PyAV raises several kinds; the reason is what matters
        return False, ffmpeg_reason(e)
    return True, "opens" + (f" on GPU {gpu}" if gpu is not None else "")


# The rates AAC can carry (up to 48 kHz: more only costs bits for speech).
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def aac_rate(source_rate: int) -> int:
    """The AAC rate to resample speech at ``source_rate`` to: the lowest that loses nothing of it."""
    return next((r for r in AAC_RATES if r >= source_rate), AAC_RATES[-1])


def check_writable(out: str | os.PathLike) -> None:
    """Refuse an output that cannot be written, before minutes of analysis instead of after them."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out} is a folder; give the output a file name, such as {out / 'out.mp4'}.")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InputError(f"Cannot write {out}: {blocker} is a file, not a folder; choose another output path.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".check")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"Cannot write {out} ({e.strerror or e}); choose another output path.") from e


def partial_path(out: Path, pid: int) -> Path:
    """Where process ``pid``'s :class:`VideoWriter` writes ``out`` until it is complete (hidden, beside it)."""
    return out.with_name(f".{out.stem}.partial{pid}.mp4")


class VideoWriter:
    """Writes I420 frames and the user's full-quality audio into an MP4, atomically.

    Audio is interleaved while frames arrive, so the muxer never buffers a whole track.
    """

    def __init__(self, out: str | os.PathLike, width: int, height: int, fps: Fraction, audio: MediaInfo,
                 quality_name: str = "balanced", use_nvenc: bool = False, nvenc_gpu: int | None = None,
                 colour: tuple[int, int, int] = (2, 2, 2)) -> None:
        self.out = Path(out)
        self.colour = colour
        self.tmp = partial_path(self.out, os.getpid())
        self.fps = fps
        self.width, self.height = width, height
        q = quality(quality_name)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.tmp), "w", format="mp4", options={"movflags": "+faststart"})
        self.nvenc_gpu = nvenc_gpu  # the render's GPU: a cuda:1 job encodes on GPU 1, not on FFmpeg's default 0
        self.fallback_reason = ""  # why NVENC was asked for and not used
        self.video = self._video_stream(q, use_nvenc)
        self.frames_written = 0
        self._audio_in = av.open(str(audio.path), metadata_errors="ignore")
        src = self._audio_in.streams.audio[0]
        rate = aac_rate(src.codec_context.sample_rate or 44100)
        layout = "mono" if (src.codec_context.channels or 2) == 1 else "stereo"
        self.audio = self.container.add_stream("aac", rate=rate, layout=layout)
        self.audio.bit_rate = 192_000 if layout == "stereo" else 128_000
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        self._audio_frames = self._audio_source()
        self._audio_rate = rate
        self._audio_samples = 0  # encoded so far: the next frame's timestamp
        self._audio_done = False

    def _video_stream(self, q: Quality, use_nvenc: bool) -> av.video.stream.VideoStream:
        if use_nvenc:
            try:
                s = self.container.add_stream("h264_nvenc", rate=self.fps)
                s.options = {"preset": q.nvenc_preset, "rc": "vbr", "cq": str(q.nvenc_cq)}
                if self.nvenc_gpu is not None:
                    s.options = {**s.options, "gpu": str(self.nvenc_gpu)}
                self._setup(s)
                with ffmpeg_errors_attached():
                    s.codec_context.open()  # fail here, not mid-job, when the GPU has no free encoder
                self.codec = "h264_nvenc"
                return s
            except Exception as e:  # noqa: BLE001
                self.fallback_reason = ffmpeg_reason(e)
                log.warning("NVENC does not open (%s); encoding with libx264 on the CPU.", self.fallback_reason)
                self.container.close()
                self.container = av.open(str(self.tmp), "w", format="mp4", options={"movflags": "+faststart"})
        s = self.container.add_stream("libx264", rate=self.fps)
        s.options = {"preset": q.x264_preset, "crf": str(q.crf)}
        s.thread_type = "AUTO"
        self._setup(s)
        self.codec = "libx264"
        return s

    def _setup(self, s: av.video.stream.VideoStream) -> None:
        s.width, s.height = self.width, self.height
        s.pix_fmt = "yuv420p"
        cc = s.codec_context
        cc.color_range = 1  # AVCOL_RANGE_MPEG: frames are decoded into the video range
        # The frames' YUV is the template's own (or, for a photo, BT.601's): tagged as such, a player
        # does not guess the matrix from the picture size (BT.709 for HD) and shift the colours.
        for name, value in zip(("colorspace", "color_primaries", "color_trc"), self.colour, strict=True):
            if value != UNSPECIFIED:
                setattr(cc, name, value)
        cc.time_base = Fraction(1, 1) / self.fps

    def _audio_source(self) -> Iterator[av.AudioFrame]:
        src = self._audio_in.streams.audio[0]
        for packet in self._audio_in.demux(src):
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                continue
            for frame in decoded:
                frame.pts = None
                yield from self._resampler.resample(frame)
        yield from self._resampler.resample(None)

    def _pump_audio(self, until: float | None) -> None:
        """Encode audio up to ``until`` seconds (all of it when None)."""
        while not self._audio_done and (until is None or self._audio_samples < until * self._audio_rate):
            frame = next(self._audio_frames, None)
            if frame is None:
                self._audio_done = True
                break
            # Counted timestamps, not None: the AAC encoder then shifts its first packet back by its
            # priming delay (1024 samples) and the muxer writes an edit list that hides it. Without
            # them the priming plays, and the speech comes 21 ms (48 kHz) to 64 ms (16 kHz) late.
            frame.pts = self._audio_samples
            frame.time_base = Fraction(1, self._audio_rate)
            self._audio_samples += frame.samples
            for packet in self.audio.encode(frame):
                self.container.mux(packet)

    def write(self, frame: np.ndarray | OutputFrame) -> None:
        """Encode one packed I420 frame, or a template frame with overlays (blended into the encoder's copy)."""
        if isinstance(frame, OutputFrame):
            vf = av.VideoFrame.from_ndarray(frame.frame, format="yuv420p")
            if frame.overlays:
                frame.blend_into(tuple(  # type: ignore[arg-type]
                    np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in vf.planes))
        else:
            vf = av.VideoFrame.from_ndarray(frame, format="yuv420p")
        vf.pts = self.frames_written
        vf.time_base = self.video.codec_context.time_base
        for packet in self.video.encode(vf):
            self.container.mux(packet)
        self.frames_written += 1
        self._pump_audio(self.frames_written / float(self.fps) + 0.5)

    def close(self) -> Path:
        """Flush, close and move the finished file into place."""
        try:
            for packet in self.video.encode(None):
                self.container.mux(packet)
            self._pump_audio(None)
            for packet in self.audio.encode(None):
                self.container.mux(packet)
            self.container.close()
            self._audio_in.close()
            os.replace(self.tmp, self.out)
        except OSError as e:
            self.abort()
            raise LipdubError(f"Could not write {self.out} ({e.strerror or e}); check free disk space and permissions.") from e
        except av.FFmpegError as e:
            self.abort()
            raise InputError(f"Could not encode the output ({e}).") from e
        return self.out

    def abort(self) -> None:
        """Drop a partial output."""
        for closable in (self.container, self._audio_in):
            try:
                closable.close()
            except Exception:  # noqa: BLE001 - already failing; the cleanup must not mask the cause
                pass
        self.tmp.unlink(missing_ok=True)
