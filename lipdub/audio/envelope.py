"""A loudness-driven mouth track: the simplest honest mapping from speech to mouth opening.

Used where no richer analysis is available, and as the baseline the real analysis must beat.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import uniform_filter1d

from lipdub.audio.track import MouthTrack
from lipdub.media.audio import AudioClip


def envelope_track(clip: AudioClip, fps: float, n_frames: int | None = None) -> MouthTrack:
    n = n_frames if n_frames is not None else max(1, math.ceil(clip.duration * fps - 1e-6))
    sr = clip.sample_rate
    hop = sr / fps
    x = clip.samples.astype(np.float32)
    rms = np.zeros(n, np.float32)
    win = int(hop)
    for i in range(n):
        a = int(i * hop)
        seg = x[a : a + win]
        if len(seg):
            rms[i] = float(np.sqrt(np.mean(seg * seg)))
    db = 20 * np.log10(rms + 1e-6)
    floor = np.percentile(db, 10) if n > 3 else db.min()
    peak = np.percentile(db, 97) if n > 3 else db.max()
    speech = db > floor + 0.35 * max(peak - floor, 6.0)
    open_ = np.clip((db - floor - 6.0) / max(peak - floor - 6.0, 1e-3), 0, 1)
    open_ = uniform_filter1d(open_, 2) * speech
    z = np.zeros(n, np.float32)
    return MouthTrack(fps, open_.astype(np.float32), z.copy(), z.copy(), (1 - speech).astype(np.float32) * 0.0,
                      speech.astype(bool))
