"""Slight head motion for photos: a slow sway and small nods on stressed syllables, so a still picture
that speaks does not look frozen. Video templates keep their own motion and never get this.

The head moves rigidly (shift and roll about the face's centre); the displacement fades to nothing at
the edge of the face crop, so the background and the crop's border stay exactly as in the photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lipdub.audio.track import MouthTrack
from lipdub.face.landmarks import LEFT_EYE, LIPS_OUTER_LOWER, LIPS_OUTER_UPPER, RIGHT_EYE

BROWS = [70, 63, 105, 66, 107, 336, 296, 334, 293, 300]  # the mesh's upper brow line, both sides
EYES_AND_BROWS = LEFT_EYE + RIGHT_EYE + BROWS
LIPS = LIPS_OUTER_UPPER + LIPS_OUTER_LOWER

# Standard deviations of the idle sway: sideways and up-down (inter-ocular distances) and roll (radians).
SWAY_X = 0.012
SWAY_Y = 0.007
SWAY_ROLL = 0.007  # about 0.4 degrees
SWAY_S = 1.2  # time scale of the sway (Gaussian smoothing of white noise, seconds)
NOD = 0.02  # downward dip on a stressed syllable (inter-ocular distances)
RAMP_S = 0.5  # motion grows from nothing over the first half second: the first frame is the photo


@dataclass
class HeadMotion:
    """Per output frame: head shift (x right, y down; inter-ocular distances) and roll (radians)."""

    shift: np.ndarray  # (T, 2) float32
    roll: np.ndarray  # (T,) float32

    def transform(self, i: int, centre: np.ndarray, iod: float) -> np.ndarray:
        """2x3 matrix moving a point of the photo's face to where it is on output frame ``i``."""
        i = min(max(i, 0), len(self.roll) - 1)
        a = float(self.roll[i])
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        m = np.zeros((2, 3))
        m[:, :2] = r
        m[:, 2] = centre - r @ centre + self.shift[i].astype(np.float64) * iod
        return m


def _smoothed(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a 1-D signal (edges reflected)."""
    if sigma <= 0 or len(x) < 2:
        return x.astype(np.float64)
    radius = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    padded = np.pad(x.astype(np.float64), radius, mode="reflect" if len(x) > radius else "edge")
    return np.convolve(padded, k / k.sum(), mode="valid")


def head_motion(track: MouthTrack, fps: float, seed: int = 11) -> HeadMotion:
    """A head trajectory for the whole output: smooth random sway, plus a small dip wherever the mouth
    opens more than it has over the last second or so (stress), which people nod on."""
    n = len(track)
    rng = np.random.default_rng(seed)

    def sway(std: float) -> np.ndarray:
        # Scaled by the smoothed noise's theoretical spread (white noise through a unit-sum Gaussian of
        # sigma s samples: 1 / sqrt(2 sqrt(pi) s)), not the clip's own, so short clips sway no more than
        # long ones; the rare swings beyond 2.5 spreads are clipped.
        sigma = SWAY_S * fps
        noise = _smoothed(rng.standard_normal(n), sigma) * np.sqrt(2 * np.sqrt(np.pi) * sigma)
        return np.clip(noise, -2.5, 2.5) * std

    dx, dy, roll = sway(SWAY_X), sway(SWAY_Y), sway(SWAY_ROLL)
    opening = np.clip(track.open.astype(np.float64), 0, 1) * (1 - np.clip(track.closed.astype(np.float64), 0, 1))
    stress = np.clip(_smoothed(opening, 0.12 * fps) - _smoothed(opening, 1.0 * fps), 0, None)
    if n and stress.max() > 1e-6:
        stress = _smoothed(stress / max(float(np.quantile(stress, 0.98)), 1e-6), 0.08 * fps).clip(0, 1)
    dy = dy + NOD * stress
    ramp = np.clip(np.arange(n) / max(RAMP_S * fps, 1.0), 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)
    shift = np.stack([dx * ramp, dy * ramp], 1).astype(np.float32).reshape(n, 2)
    return HeadMotion(shift, (roll * ramp).astype(np.float32))


class HeadWarp:
    """The pixel side of the motion for one photo's face crop: how much each pixel follows the head
    (1 on the face, the mesh's hull, falling smoothly to 0 at the crop's edge, so hair, ears and neck
    follow part of the way), and the resampling that moves it."""

    GRID = 4  # the motion's maps are smooth: computed every GRID pixels and interpolated

    def __init__(self, landmarks: np.ndarray, shape: tuple[int, int]) -> None:
        h, w = shape
        self.shape = shape
        hull = np.zeros((h, w), np.uint8)
        points = np.round(cv2.convexHull(landmarks.astype(np.float32))).astype(np.int32).reshape(-1, 2)
        cv2.fillConvexPoly(hull, points, 255)
        from_face = cv2.distanceTransform(255 - hull, cv2.DIST_L2, 5)
        inside = np.full((h, w), 255, np.uint8)
        inside[[0, -1], :] = 0
        inside[:, [0, -1]] = 0
        from_edge = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
        t = from_edge / np.maximum(from_edge + from_face, 1e-6)
        t[hull > 0] = 1.0
        t[inside == 0] = 0.0
        self.weight = (t * t * (3 - 2 * t)).astype(np.float32)
        # A face cut by the frame (or very near its edge) has no room for the motion to fade out in:
        # it moves at most half the gap between the face and the crop's edge, so not at all when cut.
        x, y, bw, bh = cv2.boundingRect(points)
        self.room = 0.5 * max(0.0, float(min(x, y, w - (x + bw), h - (y + bh))))
        self.face_corners = np.array([[x, y], [x + bw, y], [x, y + bh], [x + bw, y + bh]], np.float64)
        self.gx, self.gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        # The displacement is smooth: computed on a grid GRID times coarser whose samples sit where
        # cv2.resize by GRID puts them (coarse sample k at fine (k + 0.5) * GRID - 0.5), then resized.
        hc, wc = -(-h // self.GRID), -(-w // self.GRID)
        xs = (np.arange(wc, dtype=np.float32) + 0.5) * self.GRID - 0.5
        ys = (np.arange(hc, dtype=np.float32) + 0.5) * self.GRID - 0.5
        self._cx, self._cy = np.meshgrid(xs, ys)
        self._cw = cv2.resize(self.weight, (wc, hc), interpolation=cv2.INTER_AREA)

    def limited(self, m: np.ndarray) -> np.ndarray:
        """``m`` (2x3), or less of it where the face's corners would travel further than there is room
        for the motion to fade out in (a face cut by the frame does not move at all)."""
        d = m[:, :2] - np.eye(2)
        travel = float(np.linalg.norm(self.face_corners @ d.T + m[:, 2], axis=1).max())
        if travel <= self.room:
            return m
        scale = self.room / travel
        out = m.astype(np.float64).copy()
        out[:, :2] = np.eye(2) + scale * d
        out[:, 2] = scale * m[:, 2]
        return out

    def maps(self, m: np.ndarray, warp: tuple[np.ndarray, tuple[int, int, int, int]] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """cv2.remap maps (x, y) showing the head moved by ``m`` (2x3), each pixel by its share of the
        motion: pixel p pulls from q = p + weight(p) * (m^-1(p) - p).

        ``warp`` (a cv2.remap map over a box (x0, y0, x1, y1), identity elsewhere and on the box's
        edge) is done first, composed into the same maps: p pulls from warp(q) when q is in the box.
        Both are computed on the coarse grid and resized; the warp's own map is no finer than that.
        """
        h, w = self.shape
        # The pull of the moved face is the inverse transform: exact where the weight is 1 (the face),
        # a blend towards the identity where the motion fades out.
        inv = cv2.invertAffineTransform(m)
        a, t = inv[:, :2] - np.eye(2), inv[:, 2]
        qx = self._cx + self._cw * (a[0, 0] * self._cx + a[0, 1] * self._cy + t[0])
        qy = self._cy + self._cw * (a[1, 0] * self._cx + a[1, 1] * self._cy + t[1])
        qx, qy = qx.astype(np.float32), qy.astype(np.float32)
        if warp is not None:
            grid, (x0, y0, x1, y1) = warp
            inside = (qx >= x0) & (qx <= x1 - 1) & (qy >= y0) & (qy <= y1 - 1)
            pulled = cv2.remap(grid, qx - x0, qy - y0, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            qx = np.where(inside, pulled[..., 0], qx)
            qy = np.where(inside, pulled[..., 1], qy)
        out = []
        for q, coarse, fine in ((qx, self._cx, self.gx), (qy, self._cy, self.gy)):
            # The displacement is resized, not the position: resizing replicates the outermost samples,
            # which is right for a displacement (zero at the edge) and wrong for a position.
            d = cv2.resize(coarse - q, (q.shape[1] * self.GRID, q.shape[0] * self.GRID), interpolation=cv2.INTER_LINEAR)
            out.append(np.subtract(fine, d[:h, :w]))
        return out[0], out[1]

    @staticmethod
    def resample(img: np.ndarray, maps: tuple[np.ndarray, np.ndarray], sharp: list[tuple[int, int, int, int]]
                 ) -> np.ndarray:
        """``img`` through ``maps``: bicubic in the ``sharp`` boxes (x0, y0, x1, y1: eyes, brows, lips),
        bilinear on the skin, hair and background. A face moved by fractions of a pixel comes out
        visibly softer bilinear (the eyes' Laplacian variance fell by 40%); smooth skin does not."""
        out = cv2.remap(img, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        h, w = img.shape[:2]
        for x0, y0, x1, y1 in sharp:
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if x1 > x0 and y1 > y0:
                out[y0:y1, x0:x1] = cv2.remap(img, maps[0][y0:y1, x0:x1], maps[1][y0:y1, x0:x1], cv2.INTER_CUBIC,
                                              borderMode=cv2.BORDER_REPLICATE)
        return out


def feature_boxes(lm: np.ndarray, iod: float, margin: float = 0.15) -> list[tuple[int, int, int, int]]:
    """Boxes around the eyes with their brows, and around the lips, ``margin`` x iod wider."""
    boxes = []
    for group in (EYES_AND_BROWS, LIPS):
        pts = lm[group]
        (x0, y0), (x1, y1) = pts.min(0) - margin * iod, pts.max(0) + margin * iod
        boxes.append((int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))))
    return boxes
