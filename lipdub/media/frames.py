"""Frames travel through the pipeline as packed I420 arrays (YUV 4:2:0, shape (h*3/2, w), uint8):
what the decoder gives and the encoder takes, so full frames are never converted to RGB."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


def planes(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views (no copy) of the Y, U and V planes of a packed I420 frame."""
    h = frame.shape[0] * 2 // 3
    w = frame.shape[1]
    flat = frame.reshape(-1)
    y = flat[: h * w].reshape(h, w)
    u = flat[h * w : h * w + h * w // 4].reshape(h // 2, w // 2)
    v = flat[h * w + h * w // 4 :].reshape(h // 2, w // 2)
    return y, u, v


def pack(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    h, w = y.shape
    return np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(h * 3 // 2, w)


def frame_size(frame: np.ndarray) -> tuple[int, int]:
    """(width, height) of a packed I420 frame."""
    return frame.shape[1], frame.shape[0] * 2 // 3


def rotate(frame: np.ndarray, degrees: int) -> np.ndarray:
    """Turn a packed I420 frame clockwise by 0, 90, 180 or 270 degrees."""
    if degrees % 360 == 0:
        return frame
    k = {90: -1, 180: 2, 270: 1}[degrees % 360]  # np.rot90 turns counter-clockwise
    return pack(*(np.ascontiguousarray(np.rot90(p, k)) for p in planes(frame)))


def crop_i420(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Packed I420 copy of an even-aligned box (x0, y0, x1, y1) of a packed I420 frame."""
    x0, y0, x1, y1 = box
    y, u, v = planes(frame)
    return pack(y[y0:y1, x0:x1], u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2])


def crop_bgr(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """BGR copy of an even-aligned box (x0, y0, x1, y1) of a packed I420 frame."""
    return cv2.cvtColor(crop_i420(frame, box), cv2.COLOR_YUV2BGR_I420)


def crop_rgb(frame: np.ndarray, box: tuple[int, int, int, int],
             max_side: int | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """RGB picture of an even-aligned box of a packed I420 frame, its longer side at most ``max_side``;
    returns (image, (x scale, y scale)). The planes are shrunk before the colour conversion, so a
    large box costs about what a small one does."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    sx = sy = 1.0
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
        nw, nh = max(2, round(w * s) & ~1), max(2, round(h * s) & ~1)
        small = []
        for d, p in zip((1, 2, 2), planes(frame), strict=True):  # d: chroma planes are half size
            p = p[y0 // d : y1 // d, x0 // d : x1 // d]
            # Halvings with a Gaussian (cheap and alias-free), then one bilinear step of at most 2x;
            # OpenCV's area resampling costs ten times more at factors that do not divide the size.
            while p.shape[1] >= 2 * nw // d and p.shape[0] >= 2 * nh // d:
                p = cv2.pyrDown(p)
            small.append(cv2.resize(p, (nw // d, nh // d), interpolation=cv2.INTER_LINEAR))
        i420, sx, sy = pack(*small), nw / w, nh / h
    else:
        i420 = crop_i420(frame, box)
    return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420), (sx, sy)


def to_rgb(frame: np.ndarray, max_side: int | None = None) -> tuple[np.ndarray, float]:
    """RGB picture of a frame for analysis, optionally downscaled; returns (image, scale)."""
    rgb = cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_I420)
    h, w = rgb.shape[:2]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        return cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA), s
    return rgb, 1.0


Planes = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Overlay:
    """A crop to blend into a frame: BGR (h, w, 3), or packed I420 (h * 3 / 2, w) with ``i420``."""

    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the frame, even-aligned; (h, w) of ``alpha``
    crop: np.ndarray
    alpha: np.ndarray  # float32 (h, w) in [0, 1]
    i420: bool = False

    def blend_into(self, dst: Planes) -> None:
        """Blend into a frame's Y, U and V planes, in place."""
        if self.i420:
            y, u, v = planes(self.crop)
            _blend(dst, self.box, self.alpha, lambda r0, r1, c0, c1: (
                y[r0:r1, c0:c1], u[r0 // 2 : r1 // 2, c0 // 2 : c1 // 2], v[r0 // 2 : r1 // 2, c0 // 2 : c1 // 2]))
        else:
            bgr = self.crop
            _blend(dst, self.box, self.alpha,
                   lambda r0, r1, c0, c1: planes(cv2.cvtColor(bgr[r0:r1, c0:c1], cv2.COLOR_BGR2YUV_I420)))


@dataclass
class OutputFrame:
    """An output frame as a template frame plus overlays, blended where the frame is copied anyway
    (into the encoder's own frame buffer): the template frame, which may be shared, is never copied
    for it, and never changed."""

    frame: np.ndarray  # packed I420, read only
    overlays: list[Overlay] = field(default_factory=list)

    def blend_into(self, dst: Planes) -> None:
        for o in self.overlays:
            o.blend_into(dst)

    def packed(self) -> np.ndarray:
        """The finished frame as a packed I420 array (the template frame itself when nothing changes it)."""
        if not self.overlays:
            return self.frame
        out = self.frame.copy()
        self.blend_into(planes(out))
        return out


def blend_bgr(frame: np.ndarray, box: tuple[int, int, int, int], bgr: np.ndarray, alpha: np.ndarray) -> None:
    """Blend a BGR crop into an I420 frame in place, in YUV, where ``alpha`` > 0.

    ``box`` (x0, y0, x1, y1, even-aligned) is where ``bgr`` and ``alpha`` lie in the frame. Pixels
    whose alpha is 0 keep the template's exact values (no round trip through RGB).
    """
    Overlay(box, bgr, alpha).blend_into(planes(frame))


def _blend(dst: Planes, box: tuple[int, int, int, int], alpha: np.ndarray, part) -> None:
    # part(r0, r1, c0, c1): the crop's rows r0:r1 and columns c0:c1 (even) as I420 planes; only that part
    # of a BGR crop is converted.
    x0, y0 = box[0], box[1]
    # Only the (even-aligned) bounding box of alpha > 0 is converted and mixed: masks are mostly 0.
    c0, r0, bw, bh = cv2.boundingRect((alpha > 0).view(np.uint8))
    if bw == 0 or bh == 0:
        return
    c1, r1 = min(c0 + bw + 1, alpha.shape[1]) & ~1, min(r0 + bh + 1, alpha.shape[0]) & ~1
    c0, r0 = c0 & ~1, r0 & ~1
    if c1 <= c0 or r1 <= r0:
        return
    a = np.ascontiguousarray(alpha[r0:r1, c0:c1], dtype=np.float32)
    ny, nu, nv = part(r0, r1, c0, c1)
    fy, fu, fv = dst
    x0, y0 = x0 + c0, y0 + r0
    x1, y1 = x0 + (c1 - c0), y0 + (r1 - r0)
    _mix(fy[y0:y1, x0:x1], ny, a)
    a2 = cv2.resize(a, (a.shape[1] // 2, a.shape[0] // 2), interpolation=cv2.INTER_AREA)
    _mix(fu[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], nu, a2)
    _mix(fv[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], nv, a2)


def _mix(dst: np.ndarray, src: np.ndarray, a: np.ndarray) -> None:
    # src * a + dst * (1 - a), rounded, in one vectorised OpenCV pass that releases the GIL (the codec
    # threads run beside this one). Where alpha is exactly 0 the weights are 0 and 1: the original
    # byte comes back unchanged, so untouched pixels stay bit-identical.
    dst[...] = cv2.blendLinear(src, dst, a, 1.0 - a)
