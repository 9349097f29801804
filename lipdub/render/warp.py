"""Warp engine: moves the template's own lips and jaw with a piecewise-affine warp of the face mesh,
and draws a mouth interior (cavity, teeth, tongue) where the mouth opens wider than the template's.
Works for any template, photos included."""

from __future__ import annotations

import numpy as np

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
from lipdub.render.interior import draw_mouth_interior, smoothstep
from lipdub.render.masks import lower_face_mask, lower_face_polygon, polygon_alpha
from lipdub.render.piecewise import region_map, warp_piecewise_affine

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
        lateral = 0.35 + 0.65 * (1 - smoothstep((np.abs(u) - 0.25) / 0.65))
        # Below the mouth the jaw follows the lower lip; above, the upper lip lifts a little.
        below = smoothstep((v + 0.04) / 0.08)
        above_fade = 1 - smoothstep(-v / 0.35)
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
        near = 1 - smoothstep((np.abs(u[lips]) - 0.45) / 0.3)
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
