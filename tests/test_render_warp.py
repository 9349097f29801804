"""Warp engine (photos): natural blinks, the piecewise-affine warp's identity outside its region, and
no fold-over when nearly touching lips close."""

from __future__ import annotations

import numpy as np
from conftest import media, needs_media

from lipdub.face.landmarks import LIPS_INNER_LOWER, LIPS_INNER_UPPER, eye_centres, lip_gap
from lipdub.render.masks import lower_face_polygon
from lipdub.render.warp import WarpRenderer, blink_closure, piecewise_affine_maps, warp_piecewise_affine


def test_blinks_every_few_seconds_and_briefly() -> None:
    fps = 25.0
    c = np.array([blink_closure(k, fps) for k in range(int(20 * fps))])
    closed = c > 0
    starts = np.flatnonzero(closed[1:] & ~closed[:-1]) + 1
    assert 4 <= len(starts) <= 7  # one every 3-6 s over 20 s (the first after 1.2 s)
    assert np.all(np.diff(starts) >= 3 * fps - 1) and np.all(np.diff(starts) <= 6 * fps + 1)
    lengths = [int(np.argmax(~closed[s:])) for s in starts]
    assert all(2 <= n <= 6 for n in lengths)  # ~170 ms
    assert c.max() > 0.9


def test_piecewise_affine_warp_is_identity_outside_region() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (200, 200, 3), np.uint8)
    src = np.array([[100, 100], [90, 110], [110, 110]], np.float32)
    dst = src + [0, 8]
    region = np.array([[60, 60], [140, 60], [140, 150], [60, 150]], np.float32)
    out = warp_piecewise_affine(img, src, dst, region)
    outside = np.ones((200, 200), bool)
    outside[58:153, 58:143] = False
    assert np.array_equal(out[outside], img[outside])
    assert not np.array_equal(out, img)


def test_piecewise_affine_maps_are_exact_where_the_warp_is_affine() -> None:
    # Points that do not move give identity maps, and a post transform is applied exactly: the coarse
    # grid is upsampled in place (it once came out shifted by 3 pixels).
    rng = np.random.default_rng(0)
    pts = rng.uniform(100, 300, (40, 2)).astype(np.float32)
    region = np.array([[80, 80], [320, 80], [320, 320], [80, 320]], np.float32)
    box = (50, 60, 351, 343)
    gx, gy = np.meshgrid(np.arange(box[0], box[2], dtype=np.float64), np.arange(box[1], box[3], dtype=np.float64))
    maps = piecewise_affine_maps(pts, pts, region, box)
    assert maps is not None and maps[0].shape == gx.shape
    assert np.abs(maps[0] - gx).max() < 1e-3 and np.abs(maps[1] - gy).max() < 1e-3
    post = np.array([[1.05, 0.1, -20.0], [-0.1, 1.05, 7.5]])
    mx, my = piecewise_affine_maps(pts, pts, region, box, post=post)
    assert np.abs(mx - (post[0, 0] * gx + post[0, 1] * gy + post[0, 2])).max() < 1e-2
    assert np.abs(my - (post[1, 0] * gx + post[1, 1] * gy + post[1, 2])).max() < 1e-2


def _portrait_landmarks(tmp_path) -> np.ndarray:
    from fractions import Fraction

    from lipdub.face.analyse import analyse_template
    from lipdub.media.probe import probe

    return analyse_template(probe(media("portrait_474.png")), Fraction(25), tmp_path).landmarks[0]


@needs_media
def test_closing_a_closed_mouth_moves_no_pixel_further_than_the_lips(tmp_path) -> None:
    """The portrait's lips almost touch (1.7 px apart). Closing them fully makes sliver triangles
    between the inner lips; the warp once pulled pixels from 27 px away there (a jagged lip line with
    bits of other features in it), and the lower lip was pushed past the upper one near the corners."""
    lm = _portrait_landmarks(tmp_path)
    gap = float(lip_gap(lm))
    assert 0.5 < gap < 4.0
    moved = WarpRenderer.move_points(lm, -gap, 0.23, 0.02)
    ey = _down(lm)
    assert np.all((moved[LIPS_INNER_LOWER] - moved[LIPS_INNER_UPPER]) @ ey >= -0.05)  # the lips never cross
    region = lower_face_polygon(lm, chin_margin=0.35)
    x0, y0 = np.floor(region.min(0)).astype(int)
    x1, y1 = np.ceil(region.max(0)).astype(int)
    pull = piecewise_affine_maps(lm, moved, region, (x0, y0, x1, y1))
    assert pull is not None
    gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
    travel = np.hypot(pull[0] - gx, pull[1] - gy)
    assert travel.max() <= np.abs(moved - lm).max() + 0.5


def _down(lm: np.ndarray) -> np.ndarray:
    le, re = eye_centres(lm)
    ex = (re - le) / np.linalg.norm(re - le)
    return np.array([-ex[1], ex[0]], np.float32)
