"""Soft masks that follow the face, never a box."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lipdub.face.landmarks import CHEEKS, JAW, NOSE_BASE, inter_ocular


@dataclass
class LowerFace:
    """A face's lower-face outline, to be pushed past the jaw by any margin: several polygons of one
    face (the mask, its reach, the warp's region) share this work."""

    jaw: np.ndarray  # (n, 2) float32: the jaw line
    out: np.ndarray  # (n, 2) float32: unit directions from the nose base through each jaw point
    top: np.ndarray  # (5, 2) float32: cheeks and nose base
    iod: float

    def polygon(self, margin: float | np.ndarray) -> np.ndarray:
        """The outline with the jaw pushed out by ``margin`` x iod (a number, or one per jaw point)."""
        m = np.asarray(margin, np.float32) * np.float32(self.iod)
        jaw = self.jaw + self.out * (m[:, None] if m.ndim else m)
        return np.concatenate([jaw, self.top]).astype(np.float32)


def lower_face(landmarks: np.ndarray) -> LowerFace:
    """Region that moves when speaking: from below the nose, across the cheeks, down the jaw line."""
    lm = landmarks.astype(np.float32)
    iod = float(inter_ocular(lm))
    centre = lm[NOSE_BASE].mean(0)
    jaw = lm[JAW]
    out = jaw - centre
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
    top = lm[[CHEEKS[1], NOSE_BASE[2], NOSE_BASE[1], NOSE_BASE[0], CHEEKS[0]]]
    # Lift the nose base slightly so the mask edge sits in the groove under the nose, not on the lip.
    up = centre - jaw.mean(0)
    top = top + up / max(float(np.linalg.norm(up)), 1e-6) * 0.05 * iod
    return LowerFace(jaw, out, top.astype(np.float32), iod)


def lower_face_polygon(landmarks: np.ndarray, chin_margin: float = 0.12) -> np.ndarray:
    """:func:`lower_face`'s outline with the chin and jaw line pushed outwards by ``chin_margin`` x
    inter-ocular distance, so a lowered jaw stays inside."""
    return lower_face(landmarks).polygon(chin_margin)


def polygon_alpha(polygon: np.ndarray, shape: tuple[int, int], feather_px: float) -> np.ndarray:
    """Alpha 1 deep inside ``polygon``, falling to exactly 0 at its edge over ``feather_px`` pixels."""
    h, w = shape
    alpha = np.zeros((h, w), np.float32)
    pts = np.round(polygon).astype(np.int32)
    # Work on the polygon's bounding box only: at 1080p the face crop is several times larger.
    x0, y0 = np.clip(pts.min(0) - 1, 0, [w, h])
    x1, y1 = np.clip(pts.max(0) + 2, 0, [w, h])
    if x1 <= x0 or y1 <= y0:
        return alpha
    if feather_px <= 0:
        hard = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(hard, [pts - [x0, y0]], 255, lineType=cv2.LINE_8)
        alpha[y0:y1, x0:x1] = hard > 0
        return alpha
    alpha[y0:y1, x0:x1] = feather(polygon_distance(polygon - [x0, y0], (y1 - y0, x1 - x0)), feather_px)
    return alpha


def polygon_distance(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float32 (h, w): distance in pixels from each pixel inside ``polygon`` to its edge (or to the
    edge of ``shape``, whichever is nearer); 0 outside."""
    hard = np.zeros(shape, np.uint8)
    cv2.fillPoly(hard, [np.round(polygon).astype(np.int32)], 255, lineType=cv2.LINE_8)
    # Distances count from the box edge too, which is the polygon's edge or the crop's: both fade to 0.
    padded = cv2.copyMakeBorder(hard, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]


# smoothstep(t) for t = k / 255: no visible edge in the ramp, and a table lookup instead of float
# arithmetic over the whole box (the step of 1/255 in t changes alpha by at most 0.006).
_RAMP = np.linspace(0.0, 1.0, 256, dtype=np.float32)
_SMOOTHSTEP = (_RAMP * _RAMP * (3 - 2 * _RAMP)).astype(np.float32)


def feather(dist: np.ndarray, feather_px: float) -> np.ndarray:
    """Alpha from a distance map: 0 at distance 0, 1 from ``feather_px`` on, smoothstep between."""
    t = cv2.convertScaleAbs(dist, alpha=255.0 / max(feather_px, 1e-6))  # rounded, saturated at 255
    return cv2.LUT(t, _SMOOTHSTEP)


def lower_face_mask(landmarks: np.ndarray, shape: tuple[int, int], feather: float = 0.18,
                    chin_margin: float = 0.12) -> np.ndarray:
    """Feathered mask of mouth, cheeks below the nose, and jaw; ``feather`` is x inter-ocular distance."""
    iod = float(inter_ocular(landmarks))
    return polygon_alpha(lower_face_polygon(landmarks, chin_margin), shape, feather * iod)
