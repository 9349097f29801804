"""Compositing a retrieved lower face onto a template frame: the mask, and colour matching."""

from __future__ import annotations

import cv2
import numpy as np

from lipdub.face.landmarks import JAW
from lipdub.media.frames import planes
from lipdub.render.masks import LowerFace, feather, lower_face, polygon_distance

FEATHER = 0.20  # x inter-ocular distance
# The mask ends on the frame's own jaw line, never past it: a source pasted beyond it brings its own jaw
# contour, neck, collar or background where the frame has others (ghost jaw lines, skin over a wall).
# At the chin it reaches CHIN_MARGIN (x iod) past the jaw, room for the chin to drop as far
# (fitted_shape; less room cost lip-sync on the eval's self cases); towards the ears it stays
# SIDE_MARGIN inside, where a turned head's far jaw points may lie just off the cheek.
CHIN_MARGIN = 0.10
SIDE_MARGIN = -0.04
# The resampling map covers the frame's lower face out to this far past the jaw (x iod).
REACH = 0.45
# Feather ramps at least this wide (pixels) are computed at half resolution, at least twice as wide at a
# quarter: the ramp keeps 8 or more steps, which bilinear interpolation smooths back.
HALF_RES_FEATHER = 16.0


def composite_margins(n: int) -> np.ndarray:
    """Margins past the jaw (x iod) for its ``n`` points: CHIN_MARGIN at the chin, SIDE_MARGIN at the ears."""
    k = np.abs(np.arange(n) - (n - 1) / 2) / ((n - 1) / 2)  # 0 at the chin, 1 at the ears
    return (SIDE_MARGIN + (CHIN_MARGIN - SIDE_MARGIN) * (1 - k) ** 1.5).astype(np.float32)


_MARGINS = composite_margins(len(JAW))


def composite_polygon(lm: np.ndarray | LowerFace) -> np.ndarray:
    """The lower-face polygon the mask fills: the frame's own, ending at its jaw line."""
    return (lm if isinstance(lm, LowerFace) else lower_face(lm)).polygon(_MARGINS)


def composite_alpha(lm_template: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Feathered mask over the template frame's lower face, inside its jaw line (:func:`composite_polygon`)."""
    alpha = np.zeros(shape, np.float32)
    part, (x0, y0, x1, y1) = composite_alpha_box(lm_template, shape)
    alpha[y0:y1, x0:x1] = part
    return alpha


def composite_alpha_box(lm_template: np.ndarray | LowerFace, shape: tuple[int, int],
                        even: bool = True) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """:func:`composite_alpha` over only its box (x0, y0, x1, y1) in ``shape``: (alpha of the box, box).

    Alpha is 0 outside the box, which holds the polygon (even-aligned with ``even``, for I420). The face
    may be given as its :class:`LowerFace`, when the caller has it already.
    """
    face_t = lm_template if isinstance(lm_template, LowerFace) else lower_face(lm_template)
    iod = face_t.iod
    poly = composite_polygon(face_t)
    h, w = shape
    x0, y0 = np.clip(np.floor(poly.min(0)).astype(int) - 1, 0, [w, h])
    x1, y1 = np.clip(np.ceil(poly.max(0)).astype(int) + 2, 0, [w, h])
    if even:
        x0, y0, x1, y1 = x0 & ~1, y0 & ~1, min(x1 + 1, w) & ~1, min(y1 + 1, h) & ~1
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.float32), (0, 0, 0, 0)
    box = (int(x0), int(y0), int(x1), int(y1))
    bw, bh = int(x1 - x0), int(y1 - y0)
    ramp = FEATHER * iod
    # A wide ramp (a large face) is computed at reduced resolution and interpolated back: the distances
    # are then off by a pixel or two, invisible in a ramp tens of pixels wide, at a fraction of the cost.
    scale = 0.25 if ramp >= 2 * HALF_RES_FEATHER else 0.5 if ramp >= HALF_RES_FEATHER else 1.0
    shape = (int(np.ceil(bh * scale)), int(np.ceil(bw * scale)))
    off = np.array([x0, y0], np.float32)
    alpha = feather(polygon_distance((poly - off + 0.5) * scale - 0.5, shape), ramp * scale)
    if scale != 1.0:
        alpha = cv2.resize(alpha, (bw, bh), interpolation=cv2.INTER_LINEAR)
    return alpha, box


MIN_RING = 50  # fewer shared pixels than this: no colour correction


def _ring_rows(alpha: np.ndarray, lm: np.ndarray) -> slice:
    # Above the mouth line, every other row: plenty for a mean and a spread, at a fraction of the cost.
    return slice(0, int(np.clip(float(lm[[61, 291], 1].mean()), 0, len(alpha))), 2)


def colour_ring(alpha: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """bool (h, w): the pixels :func:`match_colour_i420` takes its luma statistics from."""
    ring = np.zeros(alpha.shape, bool)
    rows = _ring_rows(alpha, lm)
    ring[rows] = (alpha[rows] >= 0.05) & (alpha[rows] <= 0.95)
    return ring


def match_colour_i420(patch: np.ndarray, target: np.ndarray, alpha: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Shift each plane's mean and scale its spread to ``target``'s where the two meet, in place on
    ``patch`` (both packed I420 of ``alpha``'s size).

    Statistics come from the feathered ring above the mouth line (cheeks, under the nose), where
    both show the same skin; below it the two chins may differ in place, not in light. Source and
    target are frames of one video, so the correction is small, and a shift and gain per Y, U and V
    plane does what one in Lab would, on the planes the frame is made of. The chroma ring is every
    other column of the luma ring's rows (which are every other row).
    """
    rows = _ring_rows(alpha, lm)
    if rows.stop < 2:
        return patch
    ring = cv2.inRange(alpha[rows], 0.05, 0.95)
    if cv2.countNonZero(ring) < MIN_RING:
        return patch
    ring_c = np.ascontiguousarray(ring[:, ::2])
    rows_c = slice(0, len(ring_c))  # luma row 2k is chroma row k
    for p, t, r, m in zip(planes(patch), planes(target), (rows, rows_c, rows_c), (ring, ring_c, ring_c), strict=True):
        (mp,), (sp,) = (v.ravel()[:1] for v in cv2.meanStdDev(p[r], mask=m))
        (mt,), (st,) = (v.ravel()[:1] for v in cv2.meanStdDev(t[r], mask=m))
        gain = min(max((st + 1.0) / (sp + 1.0), 0.85), 1.18)
        lut = np.clip((np.arange(256, dtype=np.float32) - mp) * gain + mt + 0.5, 0, 255).astype(np.uint8)
        cv2.LUT(p, lut, dst=p)
    return patch
