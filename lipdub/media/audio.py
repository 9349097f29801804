"""Audio loading: 16 kHz mono float32 for analysis; the user's own track for the output."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from lipdub.errors import InputError
from lipdub.media.probe import MediaInfo, probe

log = logging.getLogger(__name__)

ANALYSIS_RATE = 16_000


@dataclass
class AudioClip:
    """Mono float32 samples in [-1, 1] at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int = ANALYSIS_RATE

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def iter_audio(path: str | os.PathLike, sample_rate: int = ANALYSIS_RATE,
               chunk_seconds: float = 30.0) -> Iterator[np.ndarray]:
    """Stream the first audio track of ``path`` as mono float32 chunks at ``sample_rate``.

    Memory stays bounded by ``chunk_seconds`` whatever the length of the file.
    """
    p = Path(path)
    chunk = int(chunk_seconds * sample_rate)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    buf: list[np.ndarray] = []
    held = 0
    try:
        with av.open(str(p), metadata_errors="ignore") as c:
            if not c.streams.audio:
                raise InputError(f"{p.name} has no sound track; give a file with speech in it.")
            stream = c.streams.audio[0]
            stream.thread_type = "AUTO"
            for packet in c.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as e:  # skip a damaged packet, as players do
                    log.warning("Skipping an undecodable audio packet in %s: %s", p.name, e)
                    continue
                for frame in frames:
                    frame.pts = None  # let the resampler run on sample counts, robust to broken timestamps
                    for out in resampler.resample(frame):
                        a = out.to_ndarray().reshape(-1)
                        buf.append(a)
                        held += len(a)
                        while held >= chunk:
                            joined = np.concatenate(buf)
                            yield joined[:chunk]
                            rest = joined[chunk:]
                            buf, held = [rest], len(rest)
            for out in resampler.resample(None):
                buf.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as e:
        raise InputError(f"Could not decode the audio of {p.name}; the file may be damaged ({e}).") from e
    if buf:
        tail = np.concatenate(buf)
        if len(tail):
            yield tail


def load_audio(path: str | os.PathLike, sample_rate: int = ANALYSIS_RATE,
               info: MediaInfo | None = None) -> AudioClip:
    """Decode the whole first audio track of ``path`` to mono float32 at ``sample_rate``."""
    info = info or probe(path)
    if not info.has_audio:
        raise InputError(f"{info.path.name} has no sound track; give a file with speech in it.")
    chunks = list(iter_audio(path, sample_rate))
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if len(samples) < sample_rate * 0.04:
        raise InputError(f"The audio in {info.path.name} is empty or shorter than one video frame.")
    np.clip(samples, -1.0, 1.0, out=samples)
    return AudioClip(samples, sample_rate)
