"""Piecewise-affine warps over the face mesh: the maps that move a set of landmarks onto another inside a
polygon (identity outside), computed on a coarse grid and interpolated, at full or chroma resolution.
Shared by the warp engine and the retrieval engine."""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import Delaunay

_GRID = 4  # the warp field is computed every _GRID pixels and interpolated: it is piecewise smooth
_SLIVER_GAIN = 4.0  # a triangle whose map magnifies this much (Frobenius norm; identity 1.41) is a sliver


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
