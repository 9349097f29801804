"""Warp engine: moves the template's own lips and jaw with a piecewise-affine warp of the face mesh,
and draws a mouth interior (cavity, teeth, tongue) where the mouth opens wider than the template's.
Works for any template, photos included."""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import Delaunay

from lipdub.face.landmarks import (
    LIPS_INNER_LOWER,
    LIPS_INNER_UPPER,
    LIPS_OUTER_LOWER,
    LIPS_OUTER_UPPER,
    eye_centres,
    inter_ocular,
    lip_gap,
)
from lipdub.render.base import FrameTask, RenderedCrop, Renderer
from lipdub.render.masks import lower_face_mask, lower_face_polygon

# Lip gap at open = 1, in inter-ocular distances (a wide "ah" in real speech).
MAX_GAP = 0.30
_CORNERS = {61, 291, 78, 308}
_LOWER_LIP = sorted((set(LIPS_OUTER_LOWER) | set(LIPS_INNER_LOWER) |
                     {77, 90, 180, 85, 16, 315, 404, 320, 307, 96, 89, 179, 86, 15, 316, 403, 319, 325}) - _CORNERS)
_UPPER_LIP = sorted((set(LIPS_OUTER_UPPER) | set(LIPS_INNER_UPPER) |
                     {76, 184, 74, 73, 72, 11, 302, 303, 304, 408, 306, 183, 42, 41, 38, 12, 268, 271, 272, 407})
                    - _CORNERS)
_GRID = 4  # the warp field is computed every _GRID pixels and interpolated: it is piecewise smooth


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class WarpRenderer(Renderer):
    """Landmark-driven lip and jaw warp with a synthesized mouth interior."""

    name = "warp"

    def render(self, tasks: list[FrameTask]) -> list[RenderedCrop]:
        return [self._render_one(t) for t in tasks]

    def target_points(self, lm: np.ndarray, out_index: int) -> tuple[np.ndarray, float, float]:
        """Landmarks moved to the mouth shape of output frame ``out_index``; also (source gap, target gap)."""
        m = self.ctx.mouth
        i = min(out_index, len(m) - 1)
        iod = float(inter_ocular(lm))
        le, re = eye_centres(lm)
        ex = (re - le) / max(np.linalg.norm(re - le), 1e-6)
        ey = np.array([-ex[1], ex[0]], np.float32)  # towards the chin
        src_gap = float(lip_gap(lm))
        open_ = float(m.open[i]) * (1.0 - float(m.closed[i]))
        dst_gap = max(0.0, open_) * MAX_GAP * iod
        delta = dst_gap - src_gap

        centre = lm[[61, 291]].mean(0)
        rel = lm - centre
        u = rel @ ex / iod
        v = rel @ ey / iod
        lateral = 0.35 + 0.65 * (1 - _smoothstep((np.abs(u) - 0.25) / 0.65))
        # Below the mouth the jaw follows the lower lip; above, the upper lip lifts a little.
        below = _smoothstep((v + 0.04) / 0.08)
        above_fade = 1 - _smoothstep(-v / 0.35)
        w = below * lateral - (1 - below) * 0.12 * above_fade * lateral
        w[_LOWER_LIP] = lateral[_LOWER_LIP]
        w[_UPPER_LIP] = -0.12 * lateral[_UPPER_LIP]
        w[[61, 291, 78, 308]] = 0.4
        moved = lm + np.outer(w * delta, ey)

        # Width and rounding: the lips scale sideways about the mouth centre.
        spread = 0.10 * float(m.width[i]) - 0.16 * float(m.round[i])
        lips = np.array(sorted(set(_LOWER_LIP) | set(_UPPER_LIP) | _CORNERS))
        near = 1 - _smoothstep((np.abs(u[lips]) - 0.45) / 0.3)
        moved[lips] += np.outer((rel[lips] @ ex) * spread * near, ex)
        return moved.astype(np.float32), src_gap, dst_gap

    def _render_one(self, task: FrameTask) -> RenderedCrop:
        lm = task.landmarks
        if lm is None:
            return RenderedCrop(task.crop, None)
        h, w = task.crop.shape[:2]
        moved, src_gap, dst_gap = self.target_points(lm, task.out_index)
        alpha = lower_face_mask(lm, (h, w))
        warped = warp_piecewise_affine(task.crop, lm, moved, lower_face_polygon(lm, chin_margin=0.35))
        iod = float(inter_ocular(lm))
        extra = dst_gap - max(src_gap, 1.5)
        if extra > 0.01 * iod:
            strength = float(np.clip(extra / (0.06 * iod), 0.0, 1.0))
            draw_mouth_interior(warped, moved, iod, strength)
        return RenderedCrop(warped, alpha)


def warp_piecewise_affine(img: np.ndarray, src: np.ndarray, dst: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Warp ``img`` so that points ``src`` land on ``dst``, inside ``region`` (a polygon); identity outside.

    The mesh points inside the region plus the region's outline (fixed) are triangulated at their
    destinations; each pixel is mapped back through its triangle's affine transform.
    """
    h, w = img.shape[:2]
    poly = cv2.convexHull(region.astype(np.float32)).reshape(-1, 2)
    keep = _inside(poly, src)
    # Fixed anchors: the outline, densified, so nothing outside the region moves.
    anchors = _densify(poly, step=max(4.0, min(h, w) / 40))
    s = np.concatenate([src[keep], anchors]).astype(np.float64)
    d = np.concatenate([dst[keep], anchors]).astype(np.float64)
    x0, y0 = np.floor(np.maximum(anchors.min(0), 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(anchors.max(0), [w - 1, h - 1])).astype(int)
    if x1 <= x0 or y1 <= y0 or len(s) < 3:
        return img.copy()
    tri = Delaunay(d)
    gx = np.arange(x0, x1 + _GRID, _GRID, dtype=np.float64)
    gy = np.arange(y0, y1 + _GRID, _GRID, dtype=np.float64)
    px, py = np.meshgrid(gx, gy)
    pts = np.stack([px.ravel(), py.ravel()], 1)
    simplex = tri.find_simplex(pts)
    ok = simplex >= 0
    mapped = pts.copy()
    mapped[ok] = _barycentric_map(d, s, tri.simplices, simplex[ok], pts[ok])
    map_x = mapped[:, 0].reshape(px.shape).astype(np.float32)
    map_y = mapped[:, 1].reshape(px.shape).astype(np.float32)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    # Interpolate the coarse map to every pixel (its grid starts at x0, y0 with step _GRID).
    full_x = cv2.resize(map_x, (len(gx) * _GRID, len(gy) * _GRID), interpolation=cv2.INTER_LINEAR)
    full_y = cv2.resize(map_y, (len(gx) * _GRID, len(gy) * _GRID), interpolation=cv2.INTER_LINEAR)
    off = (_GRID - 1) / 2  # resize treats samples as pixel centres of _GRID-wide cells
    M = np.float32([[1, 0, off], [0, 1, off]])
    full_x = cv2.warpAffine(full_x, M, (bw, bh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    full_y = cv2.warpAffine(full_y, M, (bw, bh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = img.copy()
    out[y0 : y1 + 1, x0 : x1 + 1] = cv2.remap(img, full_x, full_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out


def _inside(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Which points lie strictly inside a convex polygon (vectorised half-plane test)."""
    edges = np.roll(poly, -1, 0) - poly
    rel = pts[:, None, :] - poly[None, :, :]
    cross = edges[None, :, 0] * rel[..., 1] - edges[None, :, 1] * rel[..., 0]
    return (cross > 0).all(1) | (cross < 0).all(1)


def _barycentric_map(dst: np.ndarray, src: np.ndarray, simplices: np.ndarray, which: np.ndarray,
                     pts: np.ndarray) -> np.ndarray:
    """Map ``pts`` (inside triangles ``which`` of the destination mesh) to the source mesh.

    Closed-form 2x2 inverses instead of scipy's Delaunay.transform, whose lazy LAPACK set-up
    costs up to hundreds of milliseconds on a loaded machine.
    """
    tri = simplices[which]
    a, b, c = dst[tri[:, 0]], dst[tri[:, 1]], dst[tri[:, 2]]
    v0, v1, v2 = b - a, c - a, pts - a
    det = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    det = np.where(np.abs(det) < 1e-9, 1e-9, det)
    wb = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / det
    wc = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / det
    wa = 1.0 - wb - wc
    return wa[:, None] * src[tri[:, 0]] + wb[:, None] * src[tri[:, 1]] + wc[:, None] * src[tri[:, 2]]


def _densify(poly: np.ndarray, step: float) -> np.ndarray:
    pts = []
    for a, b in zip(poly, np.roll(poly, -1, 0)):
        n = max(1, int(np.linalg.norm(b - a) / step))
        for k in range(n):
            pts.append(a + (b - a) * k / n)
    return np.array(pts, np.float32)


def draw_mouth_interior(img: np.ndarray, lm: np.ndarray, iod: float, strength: float) -> None:
    """Paint cavity, upper teeth, a hint of lower teeth and tongue inside the inner lips, in place."""
    upper = lm[LIPS_INNER_UPPER]
    lower = lm[LIPS_INNER_LOWER[::-1]]
    poly = np.concatenate([upper, lower[1:-1]]).astype(np.float32)
    x0, y0 = np.floor(poly.min(0)).astype(int) - 2
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 3
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 3 or y1 - y0 < 2:
        return
    roi = img[y0:y1, x0:x1].astype(np.float32)
    p = poly - [x0, y0]
    rh, rw = roi.shape[:2]
    inner = np.zeros((rh, rw), np.uint8)
    cv2.fillPoly(inner, [np.round(p * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
    inner_a = cv2.GaussianBlur(inner.astype(np.float32) / 255, (3, 3), 0.8)

    # Colours follow the face's own lighting: scale by the brightness of the lips around the opening.
    ring = cv2.dilate(inner, np.ones((5, 5), np.uint8)) - inner
    lip_colour = roi[ring > 0].mean(0) if (ring > 0).any() else np.array([90, 90, 150], np.float32)
    light = float(np.clip(lip_colour.mean() / 120.0, 0.35, 1.6))
    yy, xx = np.mgrid[0:rh, 0:rw].astype(np.float32)
    up_y = np.interp(xx[0], p[: len(upper), 0], p[: len(upper), 1])  # upper inner lip height per column
    lo_pts = lower - [x0, y0]
    order = np.argsort(lo_pts[:, 0])
    lo_y = np.interp(xx[0], lo_pts[order, 0], lo_pts[order, 1])
    gap = np.maximum(lo_y - up_y, 1.0)
    depth = np.clip((yy - up_y) / gap, 0, 1)  # 0 at the upper lip, 1 at the lower lip

    cavity = np.array([38, 42, 78], np.float32) * light  # dark red-brown, lit by the face
    col = cavity * (0.55 + 0.9 * np.abs(depth - 0.5))[..., None]
    # Upper teeth: a band under the upper lip across the middle of the mouth, softly shaded.
    left, right = p[:, 0].min(), p[:, 0].max()
    mid = (xx - left) / max(right - left, 1.0)
    across = _smoothstep((0.5 - np.abs(mid - 0.5)) / 0.3)
    teeth_h = np.minimum(0.35 * gap, 0.07 * iod)
    band = (1 - _smoothstep((yy - up_y - teeth_h) / np.maximum(0.25 * teeth_h, 1.0))) * across
    teeth = np.array([150, 168, 184], np.float32) * min(light, 1.1)  # warm, never paper-white
    teeth_col = teeth * (0.82 + 0.18 * (1 - np.clip((yy - up_y) / np.maximum(teeth_h, 1), 0, 1)))[..., None]
    col = col * (1 - band[..., None]) + teeth_col * band[..., None]
    # Lower teeth and tongue appear only in a wide opening.
    wide = float(np.clip((gap.max() / iod - 0.10) / 0.1, 0, 1))
    if wide > 0:
        low_band = (_smoothstep((yy - (lo_y - 0.18 * gap)) / np.maximum(0.1 * gap, 1.0)) * across * 0.55 * wide)
        col = col * (1 - low_band[..., None]) + teeth * 0.8 * low_band[..., None]
        cx = (left + right) / 2
        tongue = np.exp(-(((xx - cx) / (0.28 * (right - left) + 1)) ** 2) - ((yy - lo_y) / (0.35 * gap + 1)) ** 2)
        tongue = tongue * 0.6 * wide
        col = col * (1 - tongue[..., None]) + np.array([70, 78, 150], np.float32) * light * tongue[..., None]
    a = (inner_a * strength)[..., None]
    img[y0:y1, x0:x1] = np.clip(roi * (1 - a) + col * a, 0, 255).astype(np.uint8)
