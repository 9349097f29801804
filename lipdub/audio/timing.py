"""Timing like a real speaker: dominance-blended coarticulation with anticipation, minimum shape
durations, and smoothing that never rounds off a lip closure. Works on the shared 10 ms hop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d

from lipdub.audio.features import HOP_S
from lipdub.audio.phones import Phone
from lipdub.audio.visemes import BILABIALS, shape

ANTICIPATION_S = 0.08  # lips/jaw lead the sound by 50-120 ms (Schwartz & Savariaux 2014)
CLOSURE_LEAD_S = 0.03  # lips are shut a little before the plosive's acoustic segment starts
MIN_SHAPE_S = 0.06  # a visible shape lasts at least ~1.5 video frames
SPREAD_BEFORE_S = 0.12  # dominance reaches further ahead (anticipatory) ...
SPREAD_AFTER_S = 0.06  # ... than behind (carry-over)


@dataclass
class Targets:
    """Per-hop mouth targets from phones (before acoustic fusion)."""

    open: np.ndarray
    width: np.ndarray
    round: np.ndarray
    closed: np.ndarray


def enforce_min_duration(phones: list[Phone], min_s: float = MIN_SHAPE_S) -> list[Phone]:
    """Widen phones shorter than ``min_s`` symmetrically, borrowing from their neighbours."""
    out = list(phones)
    for i, p in enumerate(out):
        dur = p.end - p.start
        if dur >= min_s or p.label == "SIL":
            continue
        grow = (min_s - dur) / 2
        lo = out[i - 1].start + 0.5 * (out[i - 1].end - out[i - 1].start) if i > 0 else 0.0
        hi = out[i + 1].end - 0.5 * (out[i + 1].end - out[i + 1].start) if i + 1 < len(out) else p.end + grow
        start, end = max(lo, p.start - grow), min(hi, p.end + grow)
        out[i] = Phone(p.label, start, end)
        if i > 0 and out[i - 1].end > start:
            q = out[i - 1]
            out[i - 1] = Phone(q.label, q.start, max(q.start, start))
        if i + 1 < len(out) and out[i + 1].start < end:
            q = out[i + 1]
            out[i + 1] = Phone(q.label, min(q.end, end), q.end)
    return out


def phone_targets(phones: list[Phone], n_hops: int) -> Targets:
    """Blend phone shapes with Cohen-Massaro dominance functions shifted earlier by the anticipation."""
    t = np.arange(n_hops) * HOP_S
    num = np.zeros((3, n_hops))
    den = np.full(n_hops, 1e-3)  # a faint rest dominance so gaps fall back to a resting mouth
    closed = np.zeros(n_hops)
    reach = int(np.ceil(4 * SPREAD_BEFORE_S / HOP_S)) + 2
    for p in enforce_min_duration(phones):
        s = shape(p.label)
        a, b = p.start - ANTICIPATION_S, p.end - ANTICIPATION_S
        i0 = max(0, int(a / HOP_S) - reach)
        i1 = min(n_hops, int(b / HOP_S) + reach + 1)
        if i1 <= i0:
            continue
        tt = t[i0:i1]
        # Plateau over the (shifted) phone, exponential skirts: longer ahead than behind.
        d = np.where(tt < a, np.exp(-(a - tt) / SPREAD_BEFORE_S),
                     np.where(tt > b, np.exp(-(tt - b) / SPREAD_AFTER_S), 1.0)) * s.dominance
        num[0, i0:i1] += d * s.open
        num[1, i0:i1] += d * s.width
        num[2, i0:i1] += d * s.round
        den[i0:i1] += d
        if p.label in BILABIALS:
            # Closure: from slightly before the plosive until its release (end of the phone).
            c0 = max(0, int(round((p.start - CLOSURE_LEAD_S) / HOP_S)))
            c1 = min(n_hops, max(c0 + 1, int(round(p.end / HOP_S)) - 1))
            closed[c0:c1] = 1.0
    vals = num / den
    return Targets(vals[0], vals[1], vals[2], closed)


def smooth_keep_closures(x: np.ndarray, closed: np.ndarray, sigma_s: float = 0.02) -> np.ndarray:
    """Gaussian smoothing, then closures re-imposed so they stay crisp (the lips really shut)."""
    y = gaussian_filter1d(x, sigma_s / HOP_S, mode="nearest") if len(x) > 1 and sigma_s > 0 else x.copy()
    return y * (1.0 - closed)


def closure_mask(closed: np.ndarray, min_s: float = 0.04) -> np.ndarray:
    """Closures widened to a minimum visible duration (a 1-hop closure would vanish between frames)."""
    k = max(1, int(round(min_s / HOP_S)))
    return maximum_filter1d(closed, size=k, mode="nearest") if len(closed) else closed
