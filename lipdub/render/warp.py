"""Warp engine: moves the template's own lips and jaw with a piecewise-affine warp of the face mesh,
and draws a mouth interior (cavity, teeth, tongue) where the mouth opens wider than the template's.
Works for any template, photos included."""

from __future__ import annotations

import cv2
import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.spatial import Delaunay

from lipdub.device import cpu_device
from lipdub.face.landmarks import (
    LEFT_EYE_LOWER,
    LEFT_EYE_UPPER,
    LIPS_INNER_LOWER,
    LIPS_INNER_UPPER,
    LIPS_OUTER_LOWER,
    LIPS_OUTER_UPPER,
    RIGHT_EYE_LOWER,
    RIGHT_EYE_UPPER,
    eye_centres,
    inter_ocular,
    lip_gap,
)
from lipdub.render.base import FrameTask, RenderContext, RenderedCrop, Renderer
from lipdub.render.geometry import apply_affine
from lipdub.render.head import HeadWarp, feature_boxes, head_motion
from lipdub.render.masks import lower_face_mask, lower_face_polygon, polygon_alpha

# Lip gap at open = 1, in inter-ocular distances (a wide "ah" in real speech). Asks a little more than a
# real "ah": it was 0.30 while the piecewise-affine maps came out shifted by 3 px, which also showed
# the mouth wider than asked (lower lip moved, upper lip half blended at the mask's edge).
MAX_GAP = 0.36
_CORNERS = {61, 291, 78, 308}
UPPER_PULL_POWER = 4.0  # how close to the corners the upper lip starts following them down
_LOWER_LIP = sorted((set(LIPS_OUTER_LOWER) | set(LIPS_INNER_LOWER) |
                     {77, 90, 180, 85, 16, 315, 404, 320, 307, 96, 89, 179, 86, 15, 316, 403, 319, 325}) - _CORNERS)
_UPPER_LIP = sorted((set(LIPS_OUTER_UPPER) | set(LIPS_INNER_UPPER) |
                     {76, 184, 74, 73, 72, 11, 302, 303, 304, 408, 306, 183, 42, 41, 38, 12, 268, 271, 272, 407})
                    - _CORNERS)
_GRID = 4  # the warp field is computed every _GRID pixels and interpolated: it is piecewise smooth
_SLIVER_GAIN = 4.0  # a triangle whose map magnifies this much (Frobenius norm; identity 1.41) is a sliver


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class WarpRenderer(Renderer):
    """Landmark-driven lip and jaw warp with a synthesized mouth interior."""

    name = "warp"

    def render(self, tasks: list[FrameTask]) -> list[RenderedCrop]:
        self.count_frames(len(tasks), cpu_device())  # OpenCV on the CPU, whatever the job's device
        return [self._render_one(t) for t in tasks]

    def target_points(self, lm: np.ndarray, out_index: int) -> tuple[np.ndarray, float, float]:
        """Landmarks moved to the mouth shape of output frame ``out_index``; also (source gap, target gap)."""
        m = self.ctx.mouth
        i = min(out_index, len(m) - 1)
        iod = float(inter_ocular(lm))
        src_gap = float(lip_gap(lm))
        open_ = float(m.open[i]) * (1.0 - float(m.closed[i]))
        dst_gap = max(0.0, open_) * MAX_GAP * iod
        moved = self.move_points(lm, dst_gap - src_gap, float(m.width[i]), float(m.round[i]))
        return moved, src_gap, dst_gap

    @staticmethod
    def move_points(lm: np.ndarray, delta: float, width: float, round_: float) -> np.ndarray:
        """Landmarks with the lip gap changed by ``delta`` pixels (jaw following) and the lips spread/rounded."""
        iod = float(inter_ocular(lm))
        le, re = eye_centres(lm)
        ex = (re - le) / max(np.linalg.norm(re - le), 1e-6)
        ey = np.array([-ex[1], ex[0]], np.float32)  # towards the chin
        centre = lm[[61, 291]].mean(0)
        rel = lm - centre
        u = rel @ ex / iod
        v = rel @ ey / iod
        lateral = 0.35 + 0.65 * (1 - _smoothstep((np.abs(u) - 0.25) / 0.65))
        # Below the mouth the jaw follows the lower lip; above, the upper lip lifts a little.
        below = _smoothstep((v + 0.04) / 0.08)
        above_fade = 1 - _smoothstep(-v / 0.35)
        w = below * lateral - (1 - below) * 0.12 * above_fade * lateral
        # The lips part like a lens: fully in the middle, less and less towards the corners, so the
        # opening has no steep sides next to them.
        corner = max(float(np.abs(u[[61, 291]]).max()), 1e-3)
        lens = 0.4 + 0.6 * np.clip(1 - (u / corner) ** 2, 0.0, 1.0)
        corners = sorted(_CORNERS)
        lens[corners] = 0.4
        if delta < 0:
            # Closing: no point of the lips may travel further than the opening in front of it, or the
            # lips would cross and the warp fold over (a jagged lip line, pixels pulled from far away).
            # Where the template's lips already touch (towards the corners) they stay put.
            up_in, lo_in = np.array(LIPS_INNER_UPPER), np.array(LIPS_INNER_LOWER)
            gap = np.maximum((lm[lo_in] - lm[up_in]) @ ey, 0.0)
            pair_u = (u[up_in] + u[lo_in]) / 2
            order = np.argsort(pair_u)
            local = np.interp(u, pair_u[order], gap[order])
            lens = np.minimum(lens, local / (1.12 * -delta))
        w[_LOWER_LIP] = lens[_LOWER_LIP]
        # The upper lip lifts a little in the middle, but towards the corners it is pulled down with
        # them: the lips meet at the corner, so the opening closes there in a point instead of ending
        # in a step between a raised upper lip and a lowered corner.
        t = np.clip(np.abs(u) / corner, 0.0, 1.0)
        pull = t ** UPPER_PULL_POWER
        lens_corner = np.where(u * u[78] > 0, lens[78], lens[308])  # each side follows its own corner
        w[_UPPER_LIP] = (-0.12 * lens * (1 - pull) + lens_corner * pull)[_UPPER_LIP]
        w[corners] = lens[corners]
        moved = lm + np.outer(w * delta, ey)

        # Width and rounding: the lips scale sideways about the mouth centre.
        spread = 0.10 * width - 0.16 * round_
        lips = np.array(sorted(set(_LOWER_LIP) | set(_UPPER_LIP) | _CORNERS))
        near = 1 - _smoothstep((np.abs(u[lips]) - 0.45) / 0.3)
        moved[lips] += np.outer((rel[lips] @ ex) * spread * near, ex)
        return moved.astype(np.float32)

    def prepare(self, ctx: RenderContext) -> None:
        super().prepare(ctx)
        # A photo gets a slight head motion of its own; a video template keeps the motion it has.
        still = not self.options.get("head_motion", True)
        self.head = head_motion(ctx.mouth, ctx.fps) if ctx.avatar.kind == "image" and not still else None
        self._head_warp: HeadWarp | None = None  # made at the first frame: it needs the crop's size
        self._head_alpha: np.ndarray | None = None

    def _render_one(self, task: FrameTask) -> RenderedCrop:
        lm = task.landmarks
        if lm is None:
            return RenderedCrop(task.crop, None)
        h, w = task.crop.shape[:2]
        moved, src_gap, dst_gap = self.target_points(lm, task.out_index)
        region = lower_face_polygon(lm, chin_margin=0.35)
        iod = float(inter_ocular(lm))
        if self.head is None:
            alpha = lower_face_mask(lm, (h, w))
            warped = warp_piecewise_affine(task.crop, lm, moved, region)
        else:
            if self._head_warp is None or self._head_warp.shape != (h, w):
                # A photo's landmarks and crop never change: once per job.
                self._head_warp = HeadWarp(lm, (h, w))
                # Where the motion has faded out the photo stays untouched (no colour round trip); the
                # ramp is steeper than the motion's, so moved pixels are not ghosted by still ones.
                self._head_alpha = np.maximum(np.minimum(self._head_warp.weight * 4.0, 1.0),
                                              lower_face_mask(lm, (h, w)))
            # The mouth's warp and the head's motion are composed into one map, so the photo is
            # resampled once; everything drawn afterwards goes where the head has moved to.
            hw = self._head_warp
            m = hw.limited(self.head.transform(task.out_index, lm.mean(0), iod))
            maps = hw.maps(m, region_map((h, w), lm, moved, region))
            lm, moved = apply_affine(m, lm), apply_affine(m, moved)
            warped = hw.resample(task.crop, maps, feature_boxes(moved, iod))
            alpha = self._head_alpha
        extra = dst_gap - max(src_gap, 1.5)
        if extra > 0.01 * iod:
            strength = float(np.clip(extra / (0.06 * iod), 0.0, 1.0))
            draw_mouth_interior(warped, moved, iod, strength)
        if self.ctx.avatar.kind == "image":
            # A photo has no blinks of its own; a face that never blinks looks dead. (Video templates
            # keep their own eyes: outside the lower face their pixels stay the template's.)
            closure = blink_closure(task.out_index, self.ctx.fps)
            if closure > 0:
                warped, eyes = blink(warped, lm, closure)
                alpha = np.maximum(alpha, eyes)
        return RenderedCrop(warped, alpha)


def blink_closure(frame: int, fps: float, seed: int = 7) -> float:
    """How closed the eyes are (0..1) on output ``frame``: a ~170 ms blink every 3-6 s, at irregular times."""
    rng = np.random.default_rng(seed)
    t = frame / fps
    start = 1.2  # the first blink comes early, so short clips blink too
    duration = 0.17
    while start <= t:
        if t < start + duration:
            return float(np.sin(np.pi * (t - start) / duration) ** 0.7)
        start += rng.uniform(3.0, 6.0)
    return 0.0


def blink(img: np.ndarray, lm: np.ndarray, closure: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower both upper eyelids towards the lower ones by ``closure``; returns (image, feathered eye mask)."""
    moved = lm.copy()
    h, w = img.shape[:2]
    alpha = np.zeros((h, w), np.float32)
    iod = float(inter_ocular(lm))
    out = img
    for upper, lower in ((LEFT_EYE_UPPER, LEFT_EYE_LOWER), (RIGHT_EYE_UPPER, RIGHT_EYE_LOWER)):
        up, lo = lm[upper], lm[lower]
        # The lid closes onto a line a little above the lower lid, not exactly onto it.
        moved[upper] = up + closure * 0.92 * (lo - up)
        centre = np.concatenate([up, lo]).mean(0)
        region = centre + (np.concatenate([up, lo]) - centre) * np.array([1.5, 2.6])
        # Only the lids steer the warp: the iris and eyeball points would hold the eye open.
        out = warp_piecewise_affine(out, lm, moved, region, [*upper, *lower])
        alpha = np.maximum(alpha, polygon_alpha(region, (h, w), 0.08 * iod))
    return out, alpha


def warp_piecewise_affine(img: np.ndarray, src: np.ndarray, dst: np.ndarray, region: np.ndarray,
                          points: list[int] | None = None) -> np.ndarray:
    """Warp ``img`` so that points ``src`` land on ``dst``, inside ``region`` (a polygon); identity outside."""
    found = region_map(img.shape[:2], src, dst, region, points)
    if found is None:
        return img.copy()
    m, (x0, y0, x1, y1) = found
    out = img.copy()
    out[y0:y1, x0:x1] = cv2.remap(img, m, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out


def region_map(shape: tuple[int, ...], src: np.ndarray, dst: np.ndarray, region: np.ndarray,
               points: list[int] | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """The :func:`piecewise_affine_map` of ``region``'s bounding box within an image of ``shape``,
    and that box; None when there is nothing to warp."""
    h, w = shape[:2]
    poly = cv2.convexHull(region.astype(np.float32)).reshape(-1, 2)
    x0, y0 = np.floor(np.maximum(poly.min(0), 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(poly.max(0), [w - 1, h - 1])).astype(int) + 1
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    box = (int(x0), int(y0), int(x1), int(y1))
    m = piecewise_affine_map(src, dst, region, box, points)
    return None if m is None else (m, box)


def piecewise_affine_maps(src: np.ndarray, dst: np.ndarray, region: np.ndarray, box: tuple[int, int, int, int],
                          points: list[int] | None = None,
                          post: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`piecewise_affine_map` as two maps (x, y)."""
    m = piecewise_affine_map(src, dst, region, box, points, post)
    return None if m is None else (np.ascontiguousarray(m[..., 0]), np.ascontiguousarray(m[..., 1]))


def piecewise_affine_map(src: np.ndarray, dst: np.ndarray, region: np.ndarray, box: tuple[int, int, int, int],
                         points: list[int] | None = None, post: np.ndarray | None = None) -> np.ndarray | None:
    """cv2.remap map (float32 (h, w, 2), x and y interleaved) over ``box`` (x0, y0, x1, y1) that pulls
    each pixel from where ``src`` points sit to where ``dst`` points are; identity on ``region``'s
    outline (a polygon) and outside it. ``post`` (2x3 affine), if given, is applied to the positions
    the map pulls from: an image in other coordinates is sampled in one pass.

    The mesh points inside the region (or ``points``) plus the region's outline (fixed) are
    triangulated at their destinations; each pixel is mapped back through its triangle's affine
    transform. The map is computed every _GRID pixels and interpolated: it is piecewise smooth.
    """
    coarse = _coarse_map(src, dst, region, box, points, post)
    return None if coarse is None else _upsample(coarse, box, 1)


def piecewise_affine_map_i420(src: np.ndarray, dst: np.ndarray, region: np.ndarray, box: tuple[int, int, int, int],
                              points: list[int] | None = None,
                              post: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`piecewise_affine_map` (``box`` even) and the same map at the chroma samples of I420, whose
    centres sit at pixels (2j + 0.5, 2i + 0.5): both interpolated from one coarse grid."""
    coarse = _coarse_map(src, dst, region, box, points, post)
    return None if coarse is None else (_upsample(coarse, box, 1), _upsample(coarse, box, 2))


def _upsample(coarse: np.ndarray, box: tuple[int, int, int, int], step: int) -> np.ndarray:
    """The coarse map (see :func:`_coarse_map`) at every ``step``-th pixel of ``box``, at the centres of
    ``step`` x ``step`` blocks (step 2: the chroma samples of I420). Resizing by _GRID / step puts
    sample j at pixel x0 + step * (j - _GRID / step) + (step - 1) / 2; bilinear upsampling (float
    weights, exact) is several times cheaper than a warpAffine of the grid."""
    x0, y0, x1, y1 = box
    ny, nx = coarse.shape[:2]
    f = _GRID // step
    big = cv2.resize(coarse, (nx * f, ny * f), interpolation=cv2.INTER_LINEAR)
    return big[f : f + (y1 - y0) // step, f : f + (x1 - x0) // step]


def _coarse_map(src: np.ndarray, dst: np.ndarray, region: np.ndarray, box: tuple[int, int, int, int],
                points: list[int] | None, post: np.ndarray | None) -> np.ndarray | None:
    """The map on a grid every _GRID pixels: sample (i, j) at pixel (x0 + off + j*_GRID, y0 + off + i*_GRID)."""
    x0, y0, x1, y1 = box
    poly = cv2.convexHull(region.astype(np.float32)).reshape(-1, 2)
    idx = np.arange(len(src)) if points is None else np.unique(np.asarray(points))
    keep = _strictly_inside_convex(dst[idx], poly)
    # Fixed anchors: the outline, densified, so nothing outside the region moves.
    span = float(np.ptp(poly, axis=0).max())
    anchors = _densify(poly, step=max(4.0, span / 30))
    s = np.concatenate([src[idx[keep]], anchors]).astype(np.float64)
    d = np.concatenate([dst[idx[keep]], anchors]).astype(np.float64)
    if len(s) < 3:
        return None
    tri = Delaunay(d)
    # One affine transform per triangle, destination -> source (then ``post``): A @ (x, y, 1), in closed
    # form (numpy's batched solve costs more than the rest of this function). Entry 0 is for grid points
    # in no triangle: the identity (then ``post``).
    v, w = d[tri.simplices], s[tri.simplices]  # (m, 3, 2)
    e = np.stack([v[:, 0] - v[:, 2], v[:, 1] - v[:, 2]], axis=-1)  # columns: v0-v2, v1-v2
    f = np.stack([w[:, 0] - w[:, 2], w[:, 1] - w[:, 2]], axis=-1)
    det = e[:, 0, 0] * e[:, 1, 1] - e[:, 0, 1] * e[:, 1, 0]
    flat = np.abs(det) < 1e-9  # degenerate triangle: identity (a fill barely touches it)
    det = np.where(flat, 1.0, det)
    e_inv = np.stack([np.stack([e[:, 1, 1], -e[:, 0, 1]], -1), np.stack([-e[:, 1, 0], e[:, 0, 0]], -1)], 1)
    lin = f @ (e_inv / det[:, None, None])
    lin[flat] = np.eye(2)
    shift = w[:, 2] - np.einsum("mij,mj->mi", lin, v[:, 2])
    shift[flat] = 0.0
    affine = np.concatenate([np.concatenate([np.eye(2), np.zeros((2, 1))], 1)[None],
                             np.concatenate([lin, shift[:, :, None]], 2)])
    if post is not None:
        affine = post[:, :2] @ affine + np.concatenate([np.zeros((2, 2)), post[:, 2:]], 1)
    # The coarse grid: sample (i, j) sits at pixel (x0 + off + i*_GRID, y0 + off + j*_GRID), which is
    # where cv2.resize by _GRID puts the centre of cell (i, j) when it interpolates the grid to full
    # resolution. It starts one cell before the box, so the box has grid samples on all sides.
    off = (_GRID - 1) / 2 - _GRID
    nx = (x1 - x0) // _GRID + 3
    ny = (y1 - y0) // _GRID + 3
    # Which triangle each grid point lies in, by rasterising the triangles (Delaunay.find_simplex is
    # ~100x slower). A point on a shared edge may land in either: both affine maps agree there.
    label = np.zeros((ny, nx), np.int32)
    corners = np.round((d[tri.simplices] - [x0 + off, y0 + off]) / _GRID * 16).astype(np.int32)
    # Rasterising also labels grid points just outside a triangle, where its affine map is extrapolated:
    # harmless for a well-shaped triangle, but a sliver (two lip points nearly meeting as the mouth
    # closes) magnifies, and sends those points tens of pixels away (a jagged lip line with pixels
    # from elsewhere in it). Slivers are drawn first, so their neighbours overwrite their fringes, and
    # points still labelled with one are looked up exactly.
    gain = np.sqrt((lin**2).sum((1, 2)))  # 1.41 for the identity
    for k in np.argsort(-gain, kind="stable"):
        cv2.fillConvexPoly(label, corners[k], int(k) + 1, lineType=cv2.LINE_8, shift=4)
    _fix_labels(label, tri, x0 + off, y0 + off, gain > _SLIVER_GAIN)
    # In float32 (a fraction of a pixel's error at any frame size), about twice as fast as in float64.
    # Positions relative to the grid's corner keep the products small.
    corner = np.array([x0 + off, y0 + off])
    affine[:, :, 2] += affine[:, :, :2] @ corner
    a = affine.astype(np.float32)[label]  # (ny, nx, 2, 3)
    gx = np.arange(nx, dtype=np.float32) * _GRID
    gy = np.arange(ny, dtype=np.float32)[:, None] * _GRID
    return a[..., 0] * gx[None, :, None] + a[..., 1] * gy[..., None] + a[..., 2]


def _fix_labels(label: np.ndarray, tri: Delaunay, gx0: float, gy0: float, suspect: np.ndarray) -> None:
    """Grid points labelled with a ``suspect`` triangle (a sliver) but outside it get the triangle they
    are in, or none (the identity). In numpy: Delaunay.find_simplex goes through LAPACK, whose idle
    threads then spin on the other core."""
    flagged = suspect[np.maximum(label - 1, 0)] & (label > 0)
    ys, xs = np.nonzero(flagged)
    if len(ys) == 0:
        return
    pts = np.stack([gx0 + xs * _GRID, gy0 + ys * _GRID], 1).astype(np.float64)
    off = ~_inside(pts, tri.points[tri.simplices[label[ys, xs] - 1]])
    if off.any():
        hits = _inside(pts[off][:, None], tri.points[tri.simplices][None])  # (n, m): every triangle
        label[ys[off], xs[off]] = np.where(hits.any(1), hits.argmax(1) + 1, 0)


def _strictly_inside_convex(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Whether points ``p`` (n, 2) lie strictly inside the convex polygon ``poly`` (k, 2), either
    orientation: on the same side of every edge (what cv2.pointPolygonTest > 0 says, point by point
    in Python, which took a millisecond a frame for the 478 landmarks)."""
    a = poly.astype(np.float64)
    e = np.roll(a, -1, 0) - a
    r = p.astype(np.float64)[:, None, :] - a[None]
    cross = e[None, :, 0] * r[..., 1] - e[None, :, 1] * r[..., 0]
    return (cross > 0).all(1) | (cross < 0).all(1)


def _inside(p: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points ``p`` (..., 2) lie in triangles ``v`` (..., 3, 2), edges included (broadcast);
    a degenerate triangle contains nothing."""
    a, b, r = v[..., 0, :] - v[..., 2, :], v[..., 1, :] - v[..., 2, :], p - v[..., 2, :]
    det = a[..., 0] * b[..., 1] - b[..., 0] * a[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        l0 = (r[..., 0] * b[..., 1] - b[..., 0] * r[..., 1]) / det
        l1 = (a[..., 0] * r[..., 1] - r[..., 0] * a[..., 1]) / det
    eps = 1e-6
    return (l0 >= -eps) & (l1 >= -eps) & (1.0 - l0 - l1 >= -eps)  # NaN compares False


def _densify(poly: np.ndarray, step: float) -> np.ndarray:
    """Points every ~``step`` pixels along the closed polygon (its vertices included)."""
    a = poly.astype(np.float64)
    b = np.roll(a, -1, 0)
    n = np.maximum(1, (np.linalg.norm(b - a, axis=1) / step).astype(int))
    seg = np.repeat(np.arange(len(a)), n)
    t = (np.arange(len(seg)) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(n, n)
    return (a[seg] + (b[seg] - a[seg]) * t[:, None]).astype(np.float32)


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
    inside = _smoothstep((yy - up_y) / soft) * _smoothstep((lo_y - yy) / soft) * (np.abs(u) < 1)
    inside *= _smoothstep((1.0 - np.abs(u)) * half / soft)
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
    teeth = _smoothstep((edge - yy) / max(0.7, 0.004 * iod)) * _smoothstep((yy - up_y + soft) / soft)
    teeth *= _smoothstep((0.82 - np.abs(u)) / 0.32)  # the corners show the dark cheek pockets, not teeth
    down = np.clip((yy - up_y) / np.maximum(tooth_h, 1.0), 0.0, 1.0)
    shade = (0.62 + 0.38 * _smoothstep(down / 0.35))  # the upper lip's shadow over the gums' end
    shade *= 1.0 - 0.10 * _smoothstep((down - 0.8) / 0.2)  # translucent biting edge
    t_col = _IVORY * min(lit, 1.15) * (centre_light * shade * sep)[..., None]
    colour = colour * (1 - teeth[..., None]) + t_col * teeth[..., None]

    if wide > 0:
        # Lower teeth: a thin edge above the lower lip, mostly in shadow.
        low_h = 0.25 * min(0.55 * centre_gap, 0.09 * iod) * wide * (1.0 - 0.5 * u ** 2)
        low = _smoothstep((yy - (lo_y - low_h)) / max(0.7, 0.004 * iod)) * _smoothstep((lo_y + soft - yy) / soft)
        low *= _smoothstep((0.45 - np.abs(u)) / 0.25)
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
