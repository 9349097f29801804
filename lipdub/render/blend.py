"""Compositing a retrieved lower face onto a template frame: the mask, and colour matching."""

from __future__ import annotations

import cv2
import numpy as np

from lipdub.face.landmarks import JAW, NOSE_BASE, inter_ocular
from lipdub.render.masks import lower_face_polygon, polygon_alpha

FEATHER = 0.20  # x inter-ocular distance
# The mask reaches this far past the chin (x iod), so both chins lie where alpha is 1: no ghost chin.
# Towards the ears the margin shrinks to SIDE_MARGIN, keeping hair and background beside the face.
CHIN_MARGIN = 0.32
SIDE_MARGIN = 0.08
# The source's own outline only ever widens the mask within this far past the frame's jaw (x iod):
# a source turned further than the frame would otherwise bring its hair or ear over the cheek.
REACH = 0.45


def composite_polygon(lm: np.ndarray) -> np.ndarray:
    """The lower-face polygon with a margin past the jaw that is widest at the chin."""
    poly = lower_face_polygon(lm, chin_margin=0.0)
    n = len(JAW)
    iod = float(inter_ocular(lm))
    centre = lm[NOSE_BASE].mean(0)
    out = poly[:n] - centre
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
    k = np.abs(np.arange(n) - (n - 1) / 2) / ((n - 1) / 2)  # 0 at the chin, 1 at the ears
    margin = SIDE_MARGIN + (CHIN_MARGIN - SIDE_MARGIN) * (1 - k) ** 1.5
    poly[:n] += out * (margin * iod)[:, None]
    return poly


def composite_alpha(lm_template: np.ndarray, lm_source: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Feathered mask over the lower face of both the template frame and the aligned source.

    The union matters when the source's chin is lower (or higher) than the frame's: both chins
    must lie inside, or one would show twice.
    """
    iod = float(inter_ocular(lm_template))
    a = polygon_alpha(composite_polygon(lm_template), shape, FEATHER * iod)
    b = polygon_alpha(composite_polygon(lm_source), shape, FEATHER * iod)
    reach = polygon_alpha(lower_face_polygon(lm_template, chin_margin=REACH), shape, 0.5 * FEATHER * iod)
    return np.maximum(a, np.minimum(b, reach))


def match_colour(patch: np.ndarray, target: np.ndarray, alpha: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Shift ``patch``'s per-channel mean and scale its spread to ``target``'s where the two meet.

    Statistics come from the feathered ring above the mouth line (cheeks, under the nose), where
    both show the same skin; below it the two chins may differ in place, not in light. Source and
    target are frames of one video, so the correction is small and a per-channel BGR match does
    what a Lab one would, without two colour conversions per frame.
    """
    ring = (alpha > 0.05) & (alpha < 0.95)
    mouth_y = float(lm[[61, 291], 1].mean())
    ring[int(max(mouth_y, 0)) :] = False
    ring[1::2] = False  # every other row is plenty for a mean and a spread, at half the cost
    if ring.sum() < 50:
        return patch
    ps, ts = patch[ring].astype(np.float32), target[ring].astype(np.float32)
    mp, mt = ps.mean(0), ts.mean(0)
    gain = np.clip((ts.std(0) + 1.0) / (ps.std(0) + 1.0), 0.85, 1.18)
    lut = np.clip((np.arange(256, dtype=np.float32)[:, None] - mp) * gain + mt + 0.5, 0, 255).astype(np.uint8)
    return cv2.merge([cv2.LUT(c, lut[:, k]) for k, c in enumerate(cv2.split(patch))])
