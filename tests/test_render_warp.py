"""Warp engine (photos): natural blinks, and the piecewise-affine warp's identity outside its region."""

from __future__ import annotations

import numpy as np

from lipdub.render.warp import blink_closure, piecewise_affine_maps, warp_piecewise_affine


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
