"""Choosing the main face and smoothing its landmarks over time without lag."""

from __future__ import annotations

import math

import numpy as np

from lipdub.face.landmarks import inter_ocular


def choose_main_face(faces: list[np.ndarray], frame_size: tuple[int, int],
                     previous: np.ndarray | None) -> np.ndarray | None:
    """The face to animate: the one nearest the previous main face, else the largest and most central."""
    if not faces:
        return None
    if previous is not None:
        prev_c = previous.mean(0)
        scale = max(float(inter_ocular(previous)), 1.0)
        best = min(faces, key=lambda f: float(np.linalg.norm(f.mean(0) - prev_c)))
        if np.linalg.norm(best.mean(0) - prev_c) < 1.5 * scale:
            return best
    w, h = frame_size
    centre = np.array([w / 2, h / 2])

    def score(f: np.ndarray) -> float:
        size = float(np.ptp(f[:, 0]) * np.ptp(f[:, 1]))
        off = float(np.linalg.norm(f.mean(0) - centre)) / max(w, h)
        return size * (1.0 - min(off, 0.9))

    return max(faces, key=score)


class OneEuroFilter:
    """One-Euro filter (Casiez et al. 2012) over whole landmark arrays.

    Slow motion is smoothed hard (no jitter), fast motion follows at once (no lag). Positions are
    normalised by the face size so the settings hold for any resolution.
    """

    def __init__(self, fps: float, min_cutoff: float = 1.7, beta: float = 0.3, d_cutoff: float = 1.0) -> None:
        self.fps = fps
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._scale = 1.0

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, fps: float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * fps)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._x is None:
            # The face size at the first frame fixes the unit, so a zoom does not jolt the state.
            self._scale = max(float(inter_ocular(x)), 1.0)
            self._x, self._dx = x / self._scale, np.zeros_like(x)
            return x.copy()
        scale = self._scale
        xn = x / scale
        dx = (xn - self._x) * self.fps
        a_d = self._alpha(self.d_cutoff, self.fps)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = self._alpha(cutoff, self.fps)
        self._x = a * xn + (1 - a) * self._x
        return (self._x * scale).astype(np.float32)
