"""Warp engine (photos): natural blinks, the piecewise-affine warp's identity outside its region, and
no fold-over when nearly touching lips close."""

from __future__ import annotations

import numpy as np
from conftest import media, needs_media

from lipdub.face.landmarks import LIPS_INNER_LOWER, LIPS_INNER_UPPER, eye_centres, lip_gap
from lipdub.render.masks import lower_face_polygon
from lipdub.render.piecewise import piecewise_affine_maps, warp_piecewise_affine
from lipdub.render.warp import WarpRenderer, blink_closure


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
    # Within a pixel of the lips' own travel (2 of 11,000 pixels go 0.54 px further: the warp field is
    # sampled every 4 px and interpolated); a field that overshoots drags the jaw tens of pixels.
    assert travel.max() <= np.abs(moved - lm).max() + 1.0


@needs_media
def test_an_opened_mouth_narrows_to_a_point_at_its_corners(tmp_path) -> None:
    """Lips part like a lens. The upper lip once stayed up right to the corners while the corners went
    down with the jaw, so a wide-open mouth ended in a step at each side (a box-shaped opening):
    next to each corner the gap was 0.75 of the middle's, and the corner sat 0.39 of it below the upper lip."""
    from lipdub.face.landmarks import inter_ocular
    from lipdub.render.warp import MAX_GAP

    lm = _portrait_landmarks(tmp_path)
    delta = 0.8 * MAX_GAP * float(inter_ocular(lm)) - float(lip_gap(lm))
    moved = WarpRenderer.move_points(lm, delta, 0.0, 0.0)
    ey = _down(lm)
    middle = float((moved[14] - moved[13]) @ ey)
    assert middle > 0.8 * delta
    for corner, upper, lower in ((78, 191, 95), (308, 415, 324)):
        assert (moved[lower] - moved[upper]) @ ey < 0.6 * middle
        assert (moved[corner] - moved[upper]) @ ey < 0.32 * middle


def _down(lm: np.ndarray) -> np.ndarray:
    le, re = eye_centres(lm)
    ex = (re - le) / np.linalg.norm(re - le)
    return np.array([-ex[1], ex[0]], np.float32)


def _photo_output(tmp_path, *cli: str) -> tuple:
    """Frames of ``lipdub generate`` (through the CLI) on portrait_624.jpg with 4 s of speech, the photo,
    its landmarks, the eye region's box and the eye region's shift on every frame."""
    from fractions import Fraction

    import av
    import cv2
    from conftest import cut_audio, run_cli

    from lipdub.face.analyse import analyse_template
    from lipdub.face.landmarks import inter_ocular
    from lipdub.media.probe import probe

    photo_path = media("portrait_624.jpg")
    speech = cut_audio(media("en_radio_8s.wav"), tmp_path / "speech.wav", 4.0)
    done = run_cli("generate", "--audio", str(speech), "--face", str(photo_path), "-o", str(tmp_path / "out.mp4"),
                   "--device", "cpu", *cli)
    assert done.returncode == 0, done.stderr
    with av.open(str(tmp_path / "out.mp4")) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    photo = cv2.imread(str(photo_path))
    lm = analyse_template(probe(photo_path), Fraction(25)).landmarks[0]
    iod = float(inter_ocular(lm))
    le, re = eye_centres(lm)
    box = (int(min(le[0], re[0]) - 0.4 * iod), int(le[1] - 0.35 * iod), int(max(le[0], re[0]) + 0.4 * iod),
           int(le[1] + 0.35 * iod))

    def grey(img: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(img[box[1]:box[3], box[0]:box[2]], cv2.COLOR_BGR2GRAY).astype(np.float32)

    shifts = np.array([cv2.phaseCorrelate(grey(photo), grey(f))[0] for f in frames])
    return frames, photo, lm, iod, grey, shifts


@needs_media
def test_a_photo_moves_its_head_slightly_and_smoothly_and_its_background_stays(tmp_path) -> None:
    """A speaking photo sways and nods a little: its eyes move by a pixel or two (never by more than
    a tenth of the eye distance, never jumping), the first frame is the photo, the picture stays as
    sharp, and beyond the face crop the photo's pixels are untouched."""
    import cv2

    from lipdub.pipeline import face_box

    frames, photo, lm, iod, grey, shifts = _photo_output(tmp_path)
    assert np.hypot(*shifts[0]) < 0.2  # the motion grows from the photo itself
    assert shifts.std(0).max() > 0.3  # it moves
    assert np.hypot(*shifts.T).max() < 0.1 * iod  # slightly
    assert np.abs(np.diff(shifts, axis=0)).max() < 0.02 * iod  # and smoothly

    def sharpness(img: np.ndarray) -> float:
        return float(cv2.Laplacian(grey(img), cv2.CV_32F).var())

    # Moved by fractions of a pixel, the eyes stay nearly as sharp as on the first frame (bicubic: 78% at
    # worst; bilinear sampling: 43%).
    open_eyes = [f for k, f in enumerate(frames) if blink_closure(k, 25.0) == 0]
    assert min(sharpness(f) for f in open_eyes) > 0.7 * sharpness(frames[0])

    # The motion fades out towards the face crop's edge: its outermost pixels, and everything beyond,
    # are the photo's own (the encoder's loss only), so no seam shows around the moving head.
    bx0, by0, bx1, by1 = face_box(lm, photo.shape[1], photo.shape[0])
    outside = np.ones(photo.shape[:2], bool)
    outside[by0:by1, bx0:bx1] = False
    ring = ~outside
    ring[by0 + 3:by1 - 3, bx0 + 3:bx1 - 3] = False
    moving = max(range(len(frames)), key=lambda k: np.hypot(*shifts[k]))
    for f in [*frames[::10], frames[moving]]:
        for still in (outside, ring):
            mse = float(np.mean((f[still].astype(np.float64) - photo[still]) ** 2))
            assert 10 * np.log10(255 ** 2 / max(mse, 1e-9)) > 38.0


@needs_media
def test_still_keeps_a_photos_head_still(tmp_path) -> None:
    frames, *_, shifts = _photo_output(tmp_path, "--still")
    open_eyes = np.array([s for k, s in enumerate(shifts) if blink_closure(k, 25.0) == 0])
    assert np.hypot(*open_eyes.T).max() < 0.1  # the eyes stay put (the mouth and the blinks still move)


def _oval_landmarks(cx: float, cy: float, rx: float, ry: float, n: int = 60) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1).astype(np.float32)


def test_head_warp_maps_are_the_exact_motion_on_the_face_and_still_at_the_crop_edge() -> None:
    """On the face every pixel pulls from exactly where the moved head has it (the inverse transform),
    the crop's edge does not move, and a warp done first (the mouth's) is composed in: p pulls from
    warp(q). Checked against a per-pixel computation."""
    from lipdub.render.head import HeadWarp

    h, w = 240, 200
    hw = HeadWarp(_oval_landmarks(100, 115, 55, 70), (h, w))
    a = 0.012
    m = np.array([[np.cos(a), -np.sin(a), 2.3], [np.sin(a), np.cos(a), -1.7]])
    m[:, 2] += np.array([100, 115]) - m[:, :2] @ np.array([100, 115])  # roll about the face's centre
    assert np.allclose(hw.limited(m), m)  # plenty of room around this face
    mx, my = hw.maps(m)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    ex, ey = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2], inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
    face = hw.weight == 1.0
    assert np.abs(mx - ex)[face].max() < 0.05 and np.abs(my - ey)[face].max() < 0.05
    edge = np.ones((h, w), bool)
    edge[1:-1, 1:-1] = False
    assert np.abs(mx - gx)[edge].max() < 0.05 and np.abs(my - gy)[edge].max() < 0.05

    # A smooth warp over a box, identity on the box's edge: 4 px down at its centre.
    x0, y0, x1, y1 = 60, 120, 140, 200
    bx, by = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
    bump = 4.0 * np.sin(np.pi * (bx - x0) / (x1 - 1 - x0)) * np.sin(np.pi * (by - y0) / (y1 - 1 - y0))
    warp = np.dstack([bx, by - bump]).astype(np.float32)
    cx, cy = hw.maps(m, (warp, (x0, y0, x1, y1)))
    inside = (mx >= x0) & (mx <= x1 - 1) & (my >= y0) & (my <= y1 - 1)
    want_y = np.where(inside, my - 4.0 * np.sin(np.pi * (mx - x0) / (x1 - 1 - x0))
                      * np.sin(np.pi * (my - y0) / (y1 - 1 - y0)), my)
    assert np.abs(cx - mx).max() < 0.05  # the warp moves nothing sideways
    assert np.abs(cy - want_y).max() < 0.35  # sampled every 4 px and interpolated
    assert np.abs(cy - my).max() > 3.5  # and it is there


def test_a_face_cut_by_the_crop_edge_does_not_move() -> None:
    from lipdub.render.head import HeadWarp

    hw = HeadWarp(_oval_landmarks(100, 60, 55, 70), (240, 200))  # the oval runs off the top
    m = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    assert np.allclose(hw.limited(m), np.eye(2, 3))
    mx, my = hw.maps(hw.limited(m))
    gx, gy = np.meshgrid(np.arange(200, dtype=np.float32), np.arange(240, dtype=np.float32))
    assert np.abs(mx - gx).max() < 1e-4 and np.abs(my - gy).max() < 1e-4
