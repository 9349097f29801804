"""The inside of an opened mouth, painted between the inner lips: cavity, teeth and tongue, in the face's
own light and grain. Used by the warp engine and by the retrieval engine where it opens a mouth further."""

from __future__ import annotations

import cv2
import numpy as np
from scipy.interpolate import PchipInterpolator

from lipdub.face.landmarks import LIPS_INNER_LOWER, LIPS_INNER_UPPER


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _lip_curve(points: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The inner lip's height at columns ``xs``: a monotone cubic through its landmarks, so the
    opening has round corners instead of the landmark polygon's straight segments."""
    order = np.argsort(points[:, 0])
    px, py = points[order, 0], points[order, 1]
    keep = np.concatenate([[True], np.diff(px) > 1e-3])
    px, py = px[keep], py[keep]
    if len(px) < 3:
        return np.interp(xs, px, py)
    return PchipInterpolator(px, py, extrapolate=False)(np.clip(xs, px[0], px[-1]))


# Widths of the upper teeth from the middle outwards (x iod): central and lateral incisors, canine, premolars.
_TOOTH_WIDTHS = (0.085, 0.066, 0.06, 0.055, 0.05, 0.05)
_IVORY = np.array([196, 214, 226], np.float32)  # BGR, lit like the skin; never paper-white


def draw_mouth_interior(img: np.ndarray, lm: np.ndarray, iod: float, strength: float) -> None:
    """Paint the inside of an opened mouth between the inner lips, in place: a dark cavity lit from the
    front, upper teeth hanging from the upper lip (arched, separated, shadowed by the lip and turning
    away towards the corners), and in a wide opening the lower teeth and the tongue. Colours come
    from the face's own lips and skin, and the camera's own grain is added, so it does not look drawn.
    """
    upper = lm[LIPS_INNER_UPPER].astype(np.float64)
    lower = lm[LIPS_INNER_LOWER].astype(np.float64)
    pts = np.concatenate([upper, lower])
    h, w = img.shape[:2]
    pad = int(np.ceil(0.05 * iod)) + 2
    x0, y0 = np.floor(pts.min(0)).astype(int) - pad
    x1, y1 = np.ceil(pts.max(0)).astype(int) + pad
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 4 or y1 - y0 < 3:
        return
    roi = img[y0:y1, x0:x1].astype(np.float32)
    rh, rw = roi.shape[:2]
    # A column and a row that broadcast: what depends on x alone (the teeth's spacing, the light
    # across the mouth) is then computed once per column, not once per pixel.
    yy = np.arange(rh, dtype=np.float32)[:, None]
    xx = np.arange(rw, dtype=np.float32)[None, :]
    cols = xx[0] + x0
    # float32 like the grid: float64 curves would turn every image-sized step below into float64.
    up_y = (_lip_curve(upper, cols) - y0).astype(np.float32)
    lo_y = (_lip_curve(lower, cols) - y0).astype(np.float32)
    left, right = float(min(upper[:, 0].min(), lower[:, 0].min())), float(max(upper[:, 0].max(), lower[:, 0].max()))
    cx = (left + right) / 2 - x0
    half = max((right - left) / 2, 1.0)
    u = np.clip((xx - cx) / half, -1.0, 1.0)  # -1 .. 1 across the mouth
    gap = np.maximum(lo_y - up_y, 0.0)
    centre_gap = float(np.interp(cx, xx[0], gap))

    # Soft-edged opening: the lips overhang it by a pixel or so, they never cut it with a hard line.
    soft = max(0.8, 0.006 * iod)
    inside = smoothstep((yy - up_y) / soft) * smoothstep((lo_y - yy) / soft) * (np.abs(u) < 1)
    inside *= smoothstep((1.0 - np.abs(u)) * half / soft)
    if float(inside.max()) <= 0.0:
        return
    depth = np.clip((yy - up_y) / np.maximum(gap, 1.0), 0.0, 1.0)  # 0 at the upper lip, 1 at the lower

    # Light and colour from the face: lip colour from a ring just outside the opening, brightness from
    # the whole neighbourhood (skin), so a dim photo gets a dim mouth.
    hard = (inside > 0.5).astype(np.uint8)
    ring = cv2.dilate(hard, np.ones((5, 5), np.uint8)) - hard
    lip = roi[ring > 0].mean(0) if ring.any() else np.array([95, 95, 160], np.float32)
    around = roi[inside < 0.01]
    lit = float(np.clip(around.mean() / 150.0, 0.35, 1.5)) if len(around) else 1.0
    centre_light = 1.0 - 0.45 * np.abs(u) ** 1.5  # the front of the mouth is lit, the sides turn away

    # Cavity: the lips' own hue, very dark, lightest low down towards the tongue.
    colour = lip[None, None, :] * (0.22 + 0.16 * depth ** 2)[..., None] * centre_light[..., None]

    wide = float(np.clip((centre_gap / iod - 0.08) / 0.10, 0.0, 1.0))
    if wide > 0:
        # Tongue: a rounded pink shape resting low in the mouth, behind the lower teeth.
        ty = float(np.interp(cx, xx[0], lo_y)) - 0.15 * centre_gap
        tongue = np.exp(-((xx - cx) / (0.55 * half)) ** 2 - ((yy - ty) / (0.32 * centre_gap + 1.0)) ** 2)
        tongue = np.clip(tongue * 1.3, 0, 1) * 0.8 * wide
        t_col = lip * 0.62 * (0.75 + 0.25 * (1 - depth))[..., None]
        colour = colour * (1 - tongue[..., None]) + t_col * tongue[..., None]

    # Upper teeth: they hang from the upper lip, so their edge follows its curve, and they look
    # shorter towards the corners where the arch turns away. Separations between teeth are placed
    # outwards from the middle and foreshortened towards the sides; each tooth's biting edge is
    # rounded, so the edge dips up a little at every separation instead of running as one ruled line.
    sep = np.ones_like(xx)
    notch = np.zeros_like(xx)
    for side in (-1.0, 1.0):
        pos = 0.0
        for width in _TOOTH_WIDTHS:
            pos += width * iod * (1.0 - 0.35 * min(pos / half, 1.0) ** 2)
            if pos >= half:
                break
            d = (xx - (cx + side * pos)) / (0.005 * iod + 0.6)
            sep *= 1.0 - 0.12 * np.exp(-(d ** 2))
            notch = np.maximum(notch, np.exp(-((d / 2.5) ** 2)))
    mid = (xx - cx) / (0.005 * iod + 0.6)
    sep *= 1.0 - 0.10 * np.exp(-(mid ** 2))  # between the central incisors
    notch = np.maximum(notch, np.exp(-((mid / 2.5) ** 2)))
    tooth_h = min(0.55 * centre_gap, 0.09 * iod) * (1.0 - 0.45 * u ** 2)
    edge = up_y + tooth_h * (1.0 - 0.08 * notch)
    teeth = smoothstep((edge - yy) / max(0.7, 0.004 * iod)) * smoothstep((yy - up_y + soft) / soft)
    teeth *= smoothstep((0.82 - np.abs(u)) / 0.32)  # the corners show the dark cheek pockets, not teeth
    down = np.clip((yy - up_y) / np.maximum(tooth_h, 1.0), 0.0, 1.0)
    shade = (0.62 + 0.38 * smoothstep(down / 0.35))  # the upper lip's shadow over the gums' end
    shade *= 1.0 - 0.10 * smoothstep((down - 0.8) / 0.2)  # translucent biting edge
    t_col = _IVORY * min(lit, 1.15) * (centre_light * shade * sep)[..., None]
    colour = colour * (1 - teeth[..., None]) + t_col * teeth[..., None]

    if wide > 0:
        # Lower teeth: a thin edge above the lower lip, mostly in shadow.
        low_h = 0.25 * min(0.55 * centre_gap, 0.09 * iod) * wide * (1.0 - 0.5 * u ** 2)
        low = smoothstep((yy - (lo_y - low_h)) / max(0.7, 0.004 * iod)) * smoothstep((lo_y + soft - yy) / soft)
        low *= smoothstep((0.45 - np.abs(u)) / 0.25)
        colour = colour * (1 - low[..., None]) + (_IVORY * min(lit, 1.15) * 0.45 * centre_light[..., None]
                                                  * sep[..., None]) * low[..., None]

    # The camera's softness and grain, measured around the mouth, so the painted area matches.
    colour = cv2.GaussianBlur(colour, (0, 0), max(0.5, 0.0025 * iod))
    grain = roi - cv2.GaussianBlur(roi, (0, 0), 1.0)
    # A robust spread (median absolute deviation): the lips' own edges in the ring must not count as grain.
    outside = grain[inside < 0.01]
    noise = float(1.4826 * np.median(np.abs(outside - np.median(outside)))) if len(outside) else 0.0
    if noise > 0.2:
        rng = np.random.default_rng(int(cx * 31 + rh))
        # Luminance grain, the same on all three channels: independent channels would speckle in colour.
        # A sensor's noise grows with the square root of the light (shot noise), so the dark cavity gets
        # less of it than the skin it was measured on; at full strength it reads as sand.
        level = np.sqrt(np.clip(colour.mean(-1) / max(float(around.mean()), 1.0), 0.05, 1.0)) if len(around) else 1.0
        colour += (rng.normal(0.0, min(noise, 6.0), colour.shape[:2]).astype(np.float32) * level)[..., None]
    a = (inside * strength)[..., None]
    img[y0:y1, x0:x1] = np.clip(roi * (1 - a) + colour * a + 0.5, 0, 255).astype(np.uint8)
