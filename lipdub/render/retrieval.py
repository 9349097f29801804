"""Retrieval engine: for each output frame, the template's own mouth from the frame that matches best.

prepare() indexes every template frame's lower face into a cached :mod:`mouth bank
<lipdub.render.bank>`, maps the speech track onto the template's own range of shapes and picks one
source frame per output frame by dynamic programming (:mod:`lipdub.render.select`). render()
aligns the chosen lower face to the frame it is pasted on (similarity from stable points, then a
piecewise-affine correction of the mask outline), matches its colour and blends it with a feathered
mask that follows the jaw and lips. Where the bank lacks an opening as wide as asked, the nearest is
warped further open by the warp engine.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

from lipdub.device import cpu_device
from lipdub.face.avatar import Avatar
from lipdub.face.landmarks import (
    CHIN,
    JAW,
    LIPS_INNER_LOWER,
    LIPS_INNER_UPPER,
    LIPS_OUTER_LOWER,
    LIPS_OUTER_UPPER,
    eye_centres,
    inter_ocular,
    lip_gap,
)
from lipdub.media.frames import pack, planes
from lipdub.render.bank import (
    STABLE,
    UPPER_JAW,
    MouthBank,
    image_extent,
    jaw_descriptor,
    mouth_bank,
    needed_extent,
    pose_descriptor,
)
from lipdub.render.base import FrameTask, RenderContext, RenderedCrop, Renderer
from lipdub.render.blend import (
    CHIN_MARGIN,
    REACH,
    colour_ring,
    composite_alpha,
    composite_alpha_box,
    match_colour_i420,
)
from lipdub.render.geometry import apply_affine, similarity
from lipdub.render.interior import draw_mouth_interior
from lipdub.render.kernels import GpuKernels, WarpJobI420, warp_and_match_i420
from lipdub.render.masks import lower_face, lower_face_mask, lower_face_polygon
from lipdub.render.piecewise import piecewise_affine_map, piecewise_affine_map_i420, warp_piecewise_affine
from lipdub.render.select import Costs, Targets, candidates, map_targets, pose_misfit, viterbi
from lipdub.render.warp import WarpRenderer

log = logging.getLogger(__name__)

# auto picks retrieval when the template's lip gap varies at least this much (x inter-ocular distance).
MIN_GAP_RANGE = 0.06
MIN_FRAMES = 25
# Wider than the chosen source by more than this (x iod): warp it further open.
EXTRAPOLATE = 0.02
# Smaller differences between the asked opening and the chosen source's (x iod; closing down to
# -RESIDUAL) are made up by moving the source's lips as they are pasted, so the mouth opens as much
# as the track asks, not only as much as the nearest source frame did.
# On six corpus templates (self cases, eval scorer) mean r_best 0.544 -> 0.570 with 0.03; 0.06 the same.
RESIDUAL = 0.03
# Resampled bicubic (sharp) this far around the lips (x iod); bilinear beyond, on smooth skin.
SHARP_MARGIN = 0.15
# Where the chosen source's crop was cut by the frame's edge, the mask fades out over this (x iod).
SOURCE_FEATHER = 0.08
# Where the chosen source's head pose and jaw line are this unlike the frame's (select.pose_misfit), no
# source fits it: a profile, a fast turn. The frame then fades to its own mouth opened by the warp engine,
# fully from MISFIT_BAD on; below MISFIT_GOOD the source is pasted as it is. With the mask ending on the
# frame's jaw, pastes with a misfit of 0.45 looked right (a phone video's turned head), and the lively
# head of a calm template in ../shared/media reaches 0.75 on a few frames: fading from 0.3 there cost
# lip-sync (eval open_r 0.53 -> 0.46) for nothing visible.
MISFIT_GOOD = 0.5
MISFIT_BAD = 0.8
# The fade starts this many frames before a frame that needs it and ends as many after, and ramps over
# twice as many: smooth, and never a single frame in and out (flicker).
FADE_FRAMES = 4
# A source's chin higher than the frame's rises at most this far (x iod); see fitted_shape.
CHIN_RISE = 0.08
# Points whose target position is the template frame's (the mask outline), not the source's.
_OUTLINE = [205, 425, 98, 2, 327, 93, 132, 323, 361, 58, 288, 50, 280, 187, 411, 147, 376]
# Points that carry the source's mouth shape through the outline correction: lips and lower jaw.
_SHAPE = sorted(set(LIPS_INNER_LOWER + LIPS_INNER_UPPER + LIPS_OUTER_LOWER + LIPS_OUTER_UPPER + JAW[3:16]))


_LIPS = sorted(set(LIPS_INNER_LOWER + LIPS_INNER_UPPER + LIPS_OUTER_LOWER + LIPS_OUTER_UPPER))
_LOWER_JAW = JAW[3:16]


def fitted_shape(lm_frame: np.ndarray, lm_source: np.ndarray) -> np.ndarray:
    """Where the aligned source's points should go on the frame: its mouth on the frame's face.

    A similarity from the eyes and nose cannot undo a difference in head turn or tilt, so the
    source's jaw would land wider, narrower or off to one side, and the face would change shape.
    Instead the jaw contour is the frame's own, lowered or raised by as much as the source's chin
    differs (fading towards the ears), and the lips keep the source's shape centred where the
    frame has its mouth; the mask outline stays where the frame has it.
    """
    dst = lm_source.copy()
    dst[_OUTLINE] = lm_frame[_OUTLINE]
    le, re = eye_centres(lm_frame)
    iod = float(np.linalg.norm(re - le))
    across = (re - le) / max(float(np.linalg.norm(re - le)), 1e-6)
    down = np.array([-across[1], across[0]], np.float32)
    # The mask ends just past the frame's jaw: a chin lowered further would be cut off there, and one
    # raised much would show the source's own neck above the frame's.
    drop = float(np.clip((lm_source[CHIN] - lm_frame[CHIN]) @ down, -CHIN_RISE * iod, CHIN_MARGIN * iod))
    k = np.abs(np.arange(len(_LOWER_JAW)) - (len(_LOWER_JAW) - 1) / 2) / ((len(_LOWER_JAW) + 1) / 2)
    weight = np.cos(k * np.pi / 2) ** 2
    dst[_LOWER_JAW] = lm_frame[_LOWER_JAW] + (weight * drop)[:, None] * down
    shift = float((lm_frame[_LIPS].mean(0) - lm_source[_LIPS].mean(0)) @ across)
    dst[_LIPS] = lm_source[_LIPS] + shift * across
    return dst


@dataclass
class _Plan:
    """One frame's retrieval, before the pixel work (resampling and colour matching)."""

    entry: int  # the bank entry whose lower face is pasted
    task: FrameTask
    box: tuple[int, int, int, int]  # the mask's box in crop coordinates (even)
    pull: np.ndarray  # (h, w, 2) float32: source coordinates of every pixel of the mask's box
    pull_c: np.ndarray | None  # (h/2, w/2, 2) float32: ``pull`` at the chroma samples' centres, if known
    sharp: tuple[int, int, int, int]  # part of the box resampled bicubic (the lips)
    alpha: np.ndarray  # (h, w) float32 mask over the box
    local: np.ndarray  # the frame's landmarks in box coordinates
    shape: np.ndarray  # where the source's points land, in box coordinates
    origin: tuple[int, int]  # the box's corner in the crop
    extra: float  # pixels the mouth must open beyond the source's
    iod: float


class RetrievalRenderer(Renderer):
    """The speaker's own mouth, retrieved from the template, aligned and blended at full resolution."""

    name = "retrieval"

    @classmethod
    def suits(cls, avatar: Avatar) -> bool:
        if avatar.kind != "video" or int(avatar.found.sum()) < MIN_FRAMES:
            return False
        lm = avatar.landmarks[avatar.found]
        gaps = lip_gap(lm) / np.maximum(inter_ocular(lm), 1e-6)
        return float(np.quantile(gaps, 0.95) - np.quantile(gaps, 0.05)) >= MIN_GAP_RANGE

    def prepare(self, ctx: RenderContext) -> None:
        super().prepare(ctx)
        self.warp = WarpRenderer(self.device, **self.options)
        self.warp.prepare(ctx)
        self.bank: MouthBank | None = None
        if ctx.avatar.kind != "video" or ctx.template is None or int(ctx.avatar.found.sum()) < 2:
            log.warning("The retrieval engine needs a template video; using the warp engine's mouth instead.")
            return
        started = time.monotonic()
        self.bank = mouth_bank(ctx.avatar, ctx.template)
        self.path, self.targets = self.plan(ctx, self.bank)
        self.paste_weight = self.paste_weights(ctx, self.bank, self.path)
        self.paths: Counter[str] = Counter()
        log.info("Retrieval plan for %d frames in %.2f s (%d distinct source frames; %d fade to the frame's own "
                 "mouth warped, no source fitting their pose).", ctx.n_frames, time.monotonic() - started,
                 len(np.unique(self.path)), int((self.paste_weight < 1.0).sum()))

    @staticmethod
    def paste_weights(ctx: RenderContext, bank: MouthBank, path: np.ndarray) -> np.ndarray:
        """(T,) how much of each output frame's pasted source shows (1), rather than the frame's own mouth
        moved by the warp engine (0): 0 where the chosen source's pose fits the frame too badly, with
        smooth ramps in time."""
        av = ctx.avatar
        base = np.minimum(ctx.template_indices, av.n_frames - 1)
        src = bank.frames[path]
        ok = av.found[base] & av.found[src]
        misfit = np.zeros(len(path), np.float32)
        if ok.any():
            ref_iod = float(np.median(inter_ocular(av.landmarks[av.found])))
            lb, ls = av.landmarks[base[ok]], av.landmarks[src[ok]]
            misfit[ok] = pose_misfit(pose_descriptor(ls, ref_iod), pose_descriptor(lb, ref_iod),
                                     jaw_descriptor(ls), jaw_descriptor(lb))
        fit = np.clip((MISFIT_BAD - misfit) / (MISFIT_BAD - MISFIT_GOOD), 0.0, 1.0)
        n = len(fit)
        # Erode (a bad frame pulls its neighbours down with it), then average: ramps, never a blink.
        padded = np.pad(fit, FADE_FRAMES, mode="edge")
        eroded = np.min(np.lib.stride_tricks.sliding_window_view(padded, 2 * FADE_FRAMES + 1), axis=1)[:n]
        padded = np.pad(eroded, FADE_FRAMES, mode="edge")
        kernel = np.full(2 * FADE_FRAMES + 1, 1.0 / (2 * FADE_FRAMES + 1))
        weight = np.convolve(padded, kernel, mode="valid")[:n]
        weight = np.where(weight > 0.995, 1.0, np.where(weight < 0.005, 0.0, weight))
        log.debug("Pose misfit of the chosen sources: median %.3f, 90%% %.3f, max %.3f.", float(np.median(misfit)),
                  float(np.quantile(misfit, 0.9)), float(misfit.max()))
        return weight.astype(np.float32)

    @staticmethod
    def plan(ctx: RenderContext, bank: MouthBank, costs: Costs | None = None) -> tuple[np.ndarray, Targets]:
        """Bank entry for every output frame, and the targets it was chosen for."""
        c = costs or Costs()
        targets = map_targets(ctx.mouth, bank.gap, bank.width)
        av = ctx.avatar
        base = np.minimum(ctx.template_indices, av.n_frames - 1)
        ref_iod = float(np.median(inter_ocular(av.landmarks[av.found])))
        used = np.unique(base)
        pose = np.zeros((av.n_frames, 4), np.float32)  # frames without a face: never pasted on anyway
        used = used[av.found[used]]
        pose[used] = pose_descriptor(av.landmarks[used], ref_iod)
        base_pose = pose[base]
        jaw = np.zeros((av.n_frames, len(UPPER_JAW) * 2), np.float32)
        jaw[used] = jaw_descriptor(av.landmarks[used])
        base_jaw = jaw[base]
        bank_jaw = jaw_descriptor(av.landmarks[bank.frames])
        need = extent = None
        if _near_edges(av):
            # A source whose crop the frame's edge cut must not be pasted where its frame needs what was
            # cut away (measured only when some face comes near an edge: 0.3 ms a frame).
            need = np.zeros((av.n_frames, 4), np.float32)
            need[used] = [needed_extent(av.landmarks[f], av.width, av.height) for f in used]
            need = need[base]
            extent = np.array([image_extent(bank.landmarks(av, j), int(w), int(h))
                               for j, (h, w) in enumerate(bank.images.shapes)], np.float32).reshape(-1, 4)
        cand, cost = candidates(targets, bank, base, base_pose, c, base_need=need, bank_extent=extent,
                                base_jaw=base_jaw, bank_jaw=bank_jaw)
        return viterbi(cand, cost, bank, targets.speech, c), targets

    def close(self) -> None:
        if getattr(self, "paths", None) is not None:
            n = self.paths
            log.info("Retrieval paths: %d frames pasted, %d warped (no source fitting their pose), %d left as is "
                     "(%d: their own mouth fits; %d: no source fits and their own is open enough; %d: no face).",
                     n["pasted"], n["warped"], n["own mouth fits"] + n["no source fits"] + n["no face"],
                     n["own mouth fits"], n["no source fits"], n["no face"])
        # The bank's file is open: a long-running worker must not keep a pruned bank's gigabytes on disk.
        if getattr(self, "bank", None) is not None:
            self.bank.images.close()

    def render(self, tasks: list[FrameTask]) -> list[RenderedCrop]:
        if self.bank is None:
            self.count_frames(len(tasks), cpu_device())
            return self.warp.render(tasks)
        plans = [self._plan(t) for t in tasks]
        todo = [p for p in plans if isinstance(p, _Plan)]
        # The pixel work stays in the frame's own I420 planes, on the GPU as on the CPU: the bank stores
        # them, the frame is made of them, and chroma at half resolution is a quarter of the resampling.
        patches = self._torch_patches(todo) if self.use_torch else None
        on_cpu = patches is None
        self.count_frames(len(tasks), cpu_device() if on_cpu else self.device)
        if on_cpu:
            patches = [self._patch_i420(p) for p in todo]
        done = iter(patches)
        crops = [p if isinstance(p, RenderedCrop) else self._finish(p, next(done), True) for p in plans]
        return [self._fade(t, c) for t, c in zip(tasks, crops, strict=True)]

    def _fade(self, task: FrameTask, pasted: RenderedCrop) -> RenderedCrop:
        """``pasted`` faded, by the frame's paste weight, to the frame's own mouth opened by the warp engine
        (or left as it is); counts the path the frame took."""
        i = min(task.out_index, len(self.paste_weight) - 1)
        weight = float(self.paste_weight[i])
        lm = task.landmarks
        if lm is None:
            self.paths["no face"] += 1
            return pasted
        if weight >= 1.0:
            self.paths["pasted" if pasted.alpha is not None else "own mouth fits"] += 1
            return pasted
        own = self._own_mouth(task, i)
        self.paths["pasted" if weight >= 0.5 else "warped" if own is not None else "no source fits"] += 1
        if weight <= 0.0 and own is None:
            return RenderedCrop.untouched()
        base = task.crop.astype(np.float32)
        out = base.copy()
        covered = np.zeros(base.shape[:2], bool)
        if own is not None:
            warped, alpha_w = own
            out += (warped.astype(np.float32) - base) * alpha_w[..., None]
            covered |= alpha_w > 0
        if weight > 0.0 and pasted.alpha is not None:
            ox, oy = pasted.origin
            ph, pw = pasted.alpha.shape
            patch = cv2.cvtColor(pasted.crop, cv2.COLOR_YUV2BGR_I420) if pasted.i420 else pasted.crop
            region = out[oy:oy + ph, ox:ox + pw]
            region += (patch.astype(np.float32) - region) * (weight * pasted.alpha)[..., None]
            covered[oy:oy + ph, ox:ox + pw] |= pasted.alpha > 0
        # Where neither mask reaches, alpha 0 keeps the frame's own pixels exactly.
        return RenderedCrop(np.clip(out + 0.5, 0, 255).astype(np.uint8), covered.astype(np.float32))

    def _own_mouth(self, task: FrameTask, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The frame's own mouth opened by the warp engine to output frame ``i``'s target, with its mask; None
        where the target is no wider than the frame's own mouth. Only ever opened: closing a parted mouth
        over its teeth leaves a jagged seam, so a frame whose mouth is open already keeps it as it is."""
        lm = task.landmarks
        assert lm is not None
        iod = float(inter_ocular(lm))
        src_gap = float(lip_gap(lm))
        delta = float(self.targets.gap[i]) * iod - src_gap
        if delta < 0.01 * iod:
            return None
        m = self.ctx.mouth
        k = min(i, len(m) - 1)
        moved = self.warp.move_points(lm, delta, float(m.width[k]), float(m.round[k]))
        warped = warp_piecewise_affine(task.crop, lm, moved, lower_face_polygon(lm, chin_margin=0.35))
        extra = src_gap + delta - max(src_gap, 1.5)
        if extra > 0.01 * iod:
            draw_mouth_interior(warped, moved, iod, float(np.clip(extra / (0.06 * iod), 0.0, 1.0)))
        # The warp engine's own mask, ending where the pasted one does: on the frame's own jaw line.
        h, w = task.shape
        alpha = np.minimum(lower_face_mask(lm, (h, w)), composite_alpha(lm, (h, w)))
        return warped, alpha

    def _patch_i420(self, p: _Plan) -> np.ndarray:
        assert self.bank is not None
        src = self.bank.images.i420(p.entry)
        patch = remap_i420(src, p.pull, p.sharp, p.pull_c)
        return match_colour_i420(patch, p.task.region_i420(p.box), p.alpha, p.local)

    @property
    def use_torch(self) -> bool:
        """Pixel work as batched torch kernels: on a GPU, or when asked for (``kernels="torch"``)."""
        return self.device.kind == "cuda" or self.options.get("kernels") == "torch"

    def _torch_patches(self, plans: list[_Plan]) -> list[np.ndarray] | None:
        """The pixel work as torch kernels (packed I420 patches); None when the GPU gave up and the CPU
        renders from now on."""
        assert self.bank is not None
        jobs = [WarpJobI420(self.bank.images.i420(p.entry), p.pull[..., 0], p.pull[..., 1],
                            p.task.region_i420(p.box), colour_ring(p.alpha, p.local)) for p in plans]
        if self.device.kind != "cuda":
            return warp_and_match_i420(self.device, jobs)
        if getattr(self, "gpu", None) is None or self.gpu.device != self.device:
            self.gpu = GpuKernels(self.device, i420=True)
        patches = self.gpu.run(jobs)
        if patches is None:  # the GPU failed (GpuKernels warned once): the OpenCV path for the rest of the job
            self.device = cpu_device()
        return patches

    def _plan(self, task: FrameTask) -> _Plan | RenderedCrop:
        """Everything but the pixel work for one frame: which source, where its pixels go, the mask."""
        lm_t = task.landmarks
        if lm_t is None:
            return RenderedCrop.untouched()
        bank = self.bank
        assert bank is not None
        i = min(task.out_index, len(self.path) - 1)
        j = int(self.path[i])
        iod = float(inter_ocular(lm_t))
        want = float(self.targets.gap[i]) * iod
        extra = want - float(bank.gap[j]) * iod
        if int(bank.frames[j]) == task.template_index and extra <= EXTRAPOLATE * iod:
            return RenderedCrop.untouched()  # the frame's own mouth already matches: leave it untouched
        lm_s = bank.landmarks(self.ctx.avatar, j)
        m = similarity(lm_s[STABLE].astype(np.float64), lm_t[STABLE].astype(np.float64))
        lm_a = apply_affine(m, lm_s)  # the source face in crop coordinates
        # Everything below works on the mask's box only (a fraction of a 1080p face crop), and the
        # result covers just that box: the pipeline converts and blends no more than it.
        face_t = lower_face(lm_t)
        alpha, (x0, y0, x1, y1) = composite_alpha_box(face_t, task.shape)
        if x1 <= x0 or y1 <= y0 or not alpha.any():
            return RenderedCrop.untouched()
        # The mask outline (cheeks, nose base, upper jaw) goes where the template frame has it; the
        # lips keep the source's shape on the frame's own jaw line (fitted_shape).
        dst = fitted_shape(lm_t, lm_a)
        if extra <= EXTRAPOLATE * iod:  # beyond, _finish opens it further
            dst[_LIPS] = self.warp.move_points(dst, max(extra, -RESIDUAL * iod), 0.0, 0.0)[_LIPS]
        inv = cv2.invertAffineTransform(m)  # crop -> source image coordinates, folded into the maps
        # Over the region the mask can reach; on the CPU with its values at the chroma samples too.
        mapping = piecewise_affine_map if self.use_torch else piecewise_affine_map_i420
        maps = mapping(lm_a, dst, face_t.polygon(REACH), (x0, y0, x1, y1), _OUTLINE + _SHAPE, post=inv)
        pull, pull_c = maps if isinstance(maps, tuple) else (maps, None)
        if pull is None:  # too few points to triangulate: the similarity alone
            gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
            pull = cv2.transform(np.dstack([gx, gy]), inv.astype(np.float32))
        h_s, w_s = (int(v) for v in bank.images.shapes[j])
        alpha = fade_beyond_source(alpha, pull, w_s, h_s, SOURCE_FEATHER * iod)
        # Bicubic where sharpness shows (the lips, teeth and their surroundings), bilinear on the
        # cheeks and chin, whose smooth skin looks the same either way at a fraction of the cost.
        lips = dst[LIPS_OUTER_UPPER + LIPS_OUTER_LOWER] - np.float32([x0, y0])
        (mx0, my0), (mx1, my1) = lips.min(0) - SHARP_MARGIN * iod, lips.max(0) + SHARP_MARGIN * iod
        sharp = (int(mx0), int(my0), int(np.ceil(mx1)), int(np.ceil(my1)))
        return _Plan(j, task, (x0, y0, x1, y1), pull, pull_c, sharp, alpha, lm_t - np.float32([x0, y0]),
                     dst - np.float32([x0, y0]), (x0, y0), extra, iod)

    def _finish(self, plan: _Plan, patch: np.ndarray, i420: bool) -> RenderedCrop:
        if plan.extra > EXTRAPOLATE * plan.iod:  # drawn in BGR: the warp engine's mouth interior
            bgr = cv2.cvtColor(patch, cv2.COLOR_YUV2BGR_I420) if i420 else patch
            return RenderedCrop(self._open_further(bgr, plan.shape, plan.extra, plan.iod, plan.alpha), plan.alpha,
                                plan.origin)
        return RenderedCrop(patch, plan.alpha, plan.origin, i420=i420)

    def _open_further(self, img: np.ndarray, lm: np.ndarray, extra: float, iod: float,
                      alpha: np.ndarray) -> np.ndarray:
        """The bank has no mouth this wide: warp the chosen one open by ``extra`` pixels."""
        moved = self.warp.move_points(lm, extra, 0.0, 0.0)
        warped = warp_piecewise_affine(img, lm, moved, lower_face_polygon(lm, chin_margin=0.35))
        strength = float(np.clip(extra / (0.06 * iod), 0.0, 1.0))
        draw_mouth_interior(warped, moved, iod, strength)
        return warped


def _near_edges(avatar: Avatar, margin: float = 1.0) -> bool:
    """Whether any found face comes within ``margin`` inter-ocular distances of the frame's edges (the
    bank's regions and the composite masks reach less far past the landmarks than that)."""
    lm = avatar.landmarks[avatar.found]
    if not len(lm):
        return False
    pad = margin * inter_ocular(lm)[:, None]
    lo, hi = lm.min(1) - pad, lm.max(1) + pad
    return bool((lo < 0).any() or (hi[:, 0] > avatar.width).any() or (hi[:, 1] > avatar.height).any())


def fade_beyond_source(alpha: np.ndarray, pull: np.ndarray, width: int, height: int, feather: float) -> np.ndarray:
    """``alpha`` faded out where ``pull`` reaches past the source image, whose crop was cut by the frame's
    edge when the face was near it: the resampling would fill that with its edge row repeated (streaks
    under the chin), so the template frame's own pixels show there instead."""
    px, py = pull[..., 0], pull[..., 1]
    if min(float(px.min()), float(py.min())) >= 0 and float(px.max()) <= width - 1 and float(py.max()) <= height - 1:
        return alpha  # the usual case: the whole box comes from inside the source
    inside = np.minimum(np.minimum(px, py), np.minimum(width - 1 - px, height - 1 - py))
    return alpha * np.clip(inside / max(feather, 1.0), 0.0, 1.0)


def remap_sharp(src: np.ndarray, pull: np.ndarray, sharp: tuple[int, int, int, int]) -> np.ndarray:
    """``cv2.remap`` of ``src`` through ``pull`` (float32 (h, w, 2)): bicubic inside ``sharp`` (x0, y0,
    x1, y1 in the map's pixels), bilinear elsewhere. The map is converted to fixed point (1/32 pixel)
    first, which remap samples faster than a float one."""
    m1, m2 = cv2.convertMaps(pull, None, cv2.CV_16SC2)
    out = cv2.remap(src, m1, m2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    h, w = out.shape[:2]
    x0, y0, x1, y1 = max(sharp[0], 0), max(sharp[1], 0), min(sharp[2], w), min(sharp[3], h)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = cv2.remap(src, m1[y0:y1, x0:x1], m2[y0:y1, x0:x1], cv2.INTER_CUBIC,
                                      borderMode=cv2.BORDER_REPLICATE)
    return out


def remap_i420(src: np.ndarray, pull: np.ndarray, sharp: tuple[int, int, int, int],
               pull_c: np.ndarray | None = None) -> np.ndarray:
    """:func:`remap_sharp` of a packed I420 image into a packed I420 result of ``pull``'s (even) size.

    Luma goes through ``pull`` as it is; chroma through ``pull`` sampled at the chroma samples'
    centres (luma pixels 2j + 0.5: ``pull_c``, or else a 2:1 bilinear resize of ``pull``, exact where
    the map is affine), scaled to chroma coordinates.
    """
    sy, su, sv = planes(src)
    y = remap_sharp(sy, pull, sharp)
    h, w = pull.shape[:2]
    half = cv2.resize(pull, (w // 2, h // 2), interpolation=cv2.INTER_LINEAR) if pull_c is None else pull_c.copy()
    half -= 0.5
    half *= 0.5
    m1, m2 = cv2.convertMaps(half, None, cv2.CV_16SC2)
    u, v = (cv2.remap(p, m1, m2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for p in (su, sv))
    return pack(y, u, v)
