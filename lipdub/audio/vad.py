"""Voice activity on the shared 10 ms hop: WebRTC's packaged GMM VAD, gated by level above the noise
floor (WebRTC alone fires on steady hum and breaths), then cleaned so the mouth neither flickers on
clicks nor snaps shut inside words."""

from __future__ import annotations

import numpy as np
import webrtcvad

from lipdub.audio.features import HOP_S

MIN_SPEECH_S = 0.08  # shorter blips are clicks or breaths, not syllables
MIN_PAUSE_S = 0.15  # shorter gaps are stop closures inside a phrase; the mouth keeps talking
PAD_S = 0.03  # onsets are soft; keep their first hop


def _runs(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """(start, end, value) runs of a boolean array."""
    if len(mask) == 0:
        return []
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(mask)]])
    return [(int(s), int(e), bool(mask[s])) for s, e in zip(starts, ends, strict=True)]


def clean_mask(mask: np.ndarray, min_on: int, min_off: int) -> np.ndarray:
    """Fill short gaps first (so a word is not split), then drop short islands."""
    m = mask.copy()
    runs = _runs(m)
    for i, (s, e, v) in enumerate(runs):
        if not v and e - s < min_off and 0 < i < len(runs) - 1:
            m[s:e] = True
    for s, e, v in _runs(m):
        if v and e - s < min_on:
            m[s:e] = False
    return m


def webrtc_flags(x: np.ndarray, sr: int, aggressiveness: int = 2) -> np.ndarray:
    """One raw WebRTC decision per 10 ms hop (the signal must be 8/16/32/48 kHz)."""
    hop = round(HOP_S * sr)
    n = int(np.ceil(len(x) / hop))
    pcm = np.zeros(n * hop, np.int16)
    pcm[: len(x)] = (np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)
    vad = webrtcvad.Vad(aggressiveness)
    buf = pcm.tobytes()
    step = hop * 2
    return np.fromiter((vad.is_speech(buf[i * step:(i + 1) * step], sr) for i in range(n)), bool, n)


def level_gate(rms_db: np.ndarray, floor_db: float, peak_db: float) -> np.ndarray:
    """Hops loud enough above the noise floor to be speech rather than room tone."""
    # Threshold sits a third of the way from floor to speech level, at least 9 dB above the floor.
    thr = floor_db + max(9.0, 0.33 * (peak_db - floor_db))
    return rms_db > min(thr, peak_db - 6.0)


def speech_mask(raw: np.ndarray, rms_db: np.ndarray, floor_db: float, peak_db: float) -> np.ndarray:
    """Final per-hop voice activity from raw WebRTC flags and the level gate."""
    # A digitally silent or very quiet file has no speech whatever WebRTC says.
    if peak_db < -60.0 or peak_db - floor_db < 6.0:
        return np.zeros(len(raw), bool)
    m = raw & level_gate(rms_db, floor_db, peak_db)
    hops = 1.0 / HOP_S
    m = clean_mask(m, round(MIN_SPEECH_S * hops), round(MIN_PAUSE_S * hops))
    pad = round(PAD_S * hops)
    if pad and m.any():
        k = np.ones(2 * pad + 1)
        m = np.convolve(m.astype(float), k, mode="same") > 0
    return m
