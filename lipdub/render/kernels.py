"""The retrieval engine's pixel work as batched torch kernels, for a GPU.

Per output frame the retrieval engine resamples a source lower face through a dense map (bicubic)
and matches its colour to the frame it goes on. On a CPU OpenCV does that fastest, frame by frame.
On a CUDA device :func:`warp_and_match_i420` (what the retrieval engine renders with: the frame's own
I420 planes in and out) or :func:`warp_and_match` (BGR) does a whole chunk at once: each source crop,
map and target region is uploaded once, and each result is downloaded once. :class:`GpuKernels` runs
a job's chunks that way and handles the GPU's failures once for the whole job.

Precision (:func:`precision_for`): sampling is float32 everywhere. A [-1, 1] grid coordinate in FP16
is off by up to (W - 1) / 8192 pixels (0.23 px at 1920 wide, 0.47 px at 3840, against OpenCV's 1/32
px), which costs 37-52 dB of PSNR against float32 at those widths, single pixels off by tens of
levels; bf16 is coarser still. The colour match's per-pixel gain and shift run in FP16 on CUDA: off
by hundredths of a level before the rounding to uint8, so by one level at most after it (60 dB). Its
statistics are float32 sums (a sum of pixels overflows FP16's 65504 after 257 of them).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np

from lipdub.device import Device, gpu_available_bytes, is_cuda_error, is_out_of_memory, release_cached_memory

log = logging.getLogger(__name__)

# Limits of the colour correction's gain: source and target are frames of one video.
MIN_GAIN, MAX_GAIN = 0.85, 1.18


@dataclass
class WarpJob:
    """One frame's resampling: ``out[y, x] = source[map_y[y, x], map_x[y, x]]``, then colour-matched."""

    source: np.ndarray  # (H, W, 3) uint8
    map_x: np.ndarray  # (h, w) float32, source pixel coordinates
    map_y: np.ndarray  # (h, w) float32
    target: np.ndarray  # (h, w, 3) uint8: the frame's pixels there, for the colour statistics
    ring: np.ndarray  # (h, w) bool: where source and target show the same skin (statistics), may be empty


@dataclass(frozen=True)
class Precision:
    """The dtypes of the kernels' steps (torch dtypes)."""

    sample: object  # the source image and the sampling grid: one dtype, as grid_sample needs
    colour: object  # the colour match's per-pixel gain and shift


def precision_for(device: Device) -> Precision:
    """float32 sampling everywhere (see the module's notes); FP16 colour maths on a half-precision GPU."""
    import torch

    return Precision(sample=torch.float32, colour=torch.float16 if device.kind == "cuda" and device.half
                     else torch.float32)


# Bytes a batch holds on the device per source pixel (uint8 upload, float32 image) and per output pixel
# (grid upload and normalised copy, target, ring, the float32 warped/target/weighted intermediates of the
# colour statistics, the result), counted from warp_and_match's tensors with a third to spare for the
# allocator's rounding and grid_sample's own.
BYTES_PER_SOURCE_PIXEL = 20
BYTES_PER_OUTPUT_PIXEL = 128


def batch_bytes(jobs: list[WarpJob]) -> int:
    """Device memory :func:`warp_and_match` needs for ``jobs`` at once (they are padded to the largest)."""
    if not jobs:
        return 0
    sh = max(j.source.shape[0] for j in jobs)
    sw = max(j.source.shape[1] for j in jobs)
    oh = max(j.map_x.shape[0] for j in jobs)
    ow = max(j.map_x.shape[1] for j in jobs)
    return len(jobs) * (sh * sw * BYTES_PER_SOURCE_PIXEL + oh * ow * BYTES_PER_OUTPUT_PIXEL)


def _as_dtype(t, dtype, on_cpu: bool):
    """``t`` in ``dtype``; on the CPU, whose half-precision bicubic sampling returns NaN or garbage, a
    half dtype is emulated: values rounded through it, computed in float32 (what CUDA's kernels do
    with half inputs, whose arithmetic is float32)."""
    import torch

    if on_cpu and dtype in (torch.float16, torch.bfloat16):
        return t.to(dtype).float()
    return t.to(dtype)


def warp_and_match(device: Device, jobs: list[WarpJob], precision: Precision | None = None) -> list[np.ndarray]:
    """Resample and colour-match every job on ``device``; results are (h, w, 3) uint8 like each target.

    ``precision`` defaults to :func:`precision_for` the device; another (a GPU's, on the CPU) shows what
    that policy computes."""
    if not jobs:
        return []
    import torch

    dev = device.torch
    # A GPU other than the current one: pinned buffers, launches and scratch memory go to that one.
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        return _warp_and_match(dev, jobs, precision or precision_for(device))


def _warp_and_match(dev, jobs: list[WarpJob], precision: Precision) -> list[np.ndarray]:
    import torch
    import torch.nn.functional as F

    on_cpu = dev.type == "cpu"
    n = len(jobs)
    sh = max(j.source.shape[0] for j in jobs)
    sw = max(j.source.shape[1] for j in jobs)
    oh = max(j.map_x.shape[0] for j in jobs)
    ow = max(j.map_x.shape[1] for j in jobs)
    # Host buffers, filled once, then (pinned, on CUDA) copied up in one transfer each.
    src = torch.zeros((n, sh, sw, 3), dtype=torch.uint8)
    grid = torch.zeros((n, oh, ow, 2), dtype=torch.float32)
    tgt = torch.zeros((n, oh, ow, 3), dtype=torch.uint8)
    ring = torch.zeros((n, oh, ow), dtype=torch.bool)
    for k, j in enumerate(jobs):
        h, w = j.source.shape[:2]
        src[k, :h, :w] = torch.from_numpy(j.source)
        if h < sh:  # replicate the edge, as OpenCV's BORDER_REPLICATE would
            src[k, h:, :w] = src[k, h - 1 : h, :w]
        if w < sw:
            src[k, :, w:] = src[k, :, w - 1 : w]
        mh, mw = j.map_x.shape
        # Sample positions clamped to this source's own extent (its padding is not real image).
        grid[k, :mh, :mw, 0] = torch.from_numpy(np.clip(j.map_x, 0, w - 1))
        grid[k, :mh, :mw, 1] = torch.from_numpy(np.clip(j.map_y, 0, h - 1))
        tgt[k, :mh, :mw] = torch.from_numpy(j.target)
        ring[k, :mh, :mw] = torch.from_numpy(j.ring)
    pin = dev.type == "cuda"
    src_d = (src.pin_memory() if pin else src).to(dev, non_blocking=pin)
    grid_d = (grid.pin_memory() if pin else grid).to(dev, non_blocking=pin)
    tgt_d = (tgt.pin_memory() if pin else tgt).to(dev, non_blocking=pin)
    ring_d = (ring.pin_memory() if pin else ring).to(dev, non_blocking=pin)

    with torch.no_grad():
        image = _as_dtype(src_d.permute(0, 3, 1, 2), precision.sample, on_cpu)  # (n, 3, sh, sw)
        # Pixel coordinates to grid_sample's [-1, 1] (align_corners=True: -1 and 1 are pixel centres).
        norm = torch.tensor([2.0 / max(sw - 1, 1), 2.0 / max(sh - 1, 1)], device=dev)
        g = _as_dtype(grid_d * norm - 1.0, precision.sample, on_cpu)
        warped = F.grid_sample(image, g, mode="bicubic", padding_mode="border", align_corners=True)
        warped = warped.permute(0, 2, 3, 1).float()  # (n, oh, ow, 3)
        target = tgt_d.float()
        weight = ring_d.float().unsqueeze(-1)
        count = weight.sum(dim=(1, 2)).clamp_min(1.0)  # (n, 1)
        mean_s = (warped * weight).sum(dim=(1, 2)) / count
        mean_t = (target * weight).sum(dim=(1, 2)) / count
        std_s = (((warped - mean_s[:, None, None]) ** 2 * weight).sum(dim=(1, 2)) / count).sqrt()
        std_t = (((target - mean_t[:, None, None]) ** 2 * weight).sum(dim=(1, 2)) / count).sqrt()
        gain = ((std_t + 1.0) / (std_s + 1.0)).clamp(MIN_GAIN, MAX_GAIN)
        enough = (count >= 50).float()  # too few shared pixels: no correction at all
        gain = gain * enough + (1 - enough)
        shift_s, shift_t = mean_s * enough, mean_t * enough
        c = precision.colour
        matched = _as_dtype(warped, c, False)
        matched = (matched - shift_s[:, None, None].to(c)) * gain[:, None, None].to(c) + shift_t[:, None, None].to(c)
        out = matched.float().add_(0.5).clamp_(0, 255).to(torch.uint8).cpu().numpy()
    return [out[k, : j.map_x.shape[0], : j.map_x.shape[1]] for k, j in enumerate(jobs)]


@dataclass
class WarpJobI420:
    """One frame's resampling in the frame's own format: packed I420 in, packed I420 out.

    ``out`` luma ``[y, x] = source luma[map_y, map_x]``; chroma through the map at the chroma samples'
    centres (the mean of each 2x2 block of it), in chroma coordinates; then each plane colour-matched
    to ``target`` over ``ring`` (as :func:`lipdub.render.blend.match_colour_i420` does on the CPU).
    """

    source: np.ndarray  # (H * 3 / 2, W) uint8 packed I420, W and H even
    map_x: np.ndarray  # (h, w) float32 source luma coordinates, h and w even
    map_y: np.ndarray  # (h, w) float32
    target: np.ndarray  # (h * 3 / 2, w) uint8 packed I420: the frame's pixels there
    ring: np.ndarray  # (h, w) bool: the luma statistics' pixels (every other row); chroma takes [::2, ::2]


def batch_bytes_i420(jobs: list[WarpJobI420]) -> int:
    """Device memory :func:`warp_and_match_i420` needs for ``jobs`` at once (padded to the largest): per
    source pixel 1.5 B uploaded and 6 B as float planes; per output pixel the luma grid uploaded and
    normalised (16 B), its chroma quarter (4 B), target and ring (2.5 B), float planes of patch and
    target and the statistics' temporaries (~30 B); with a third to spare, as :func:`batch_bytes`."""
    if not jobs:
        return 0
    sh = max(j.source.shape[0] * 2 // 3 for j in jobs)
    sw = max(j.source.shape[1] for j in jobs)
    oh = max(j.map_x.shape[0] for j in jobs)
    ow = max(j.map_x.shape[1] for j in jobs)
    return len(jobs) * (sh * sw * 10 + oh * ow * 72)


def _planes(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from lipdub.media.frames import planes

    return planes(packed)


def warp_and_match_i420(device: Device, jobs: list[WarpJobI420],
                        precision: Precision | None = None) -> list[np.ndarray]:
    """:class:`WarpJobI420` on ``device``, batched: one upload and one download per plane and batch; the
    results are packed I420 (h * 3 / 2, w) uint8, ready to blend into the frame without a conversion."""
    if not jobs:
        return []
    import torch

    dev = device.torch
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        return _warp_and_match_i420(dev, jobs, precision or precision_for(device))


def _warp_and_match_i420(dev, jobs: list[WarpJobI420], precision: Precision) -> list[np.ndarray]:
    import torch
    import torch.nn.functional as F

    from lipdub.render.blend import MIN_RING

    on_cpu = dev.type == "cpu"
    n = len(jobs)
    sh = max(j.source.shape[0] * 2 // 3 for j in jobs)
    sw = max(j.source.shape[1] for j in jobs)
    oh = max(j.map_x.shape[0] for j in jobs)
    ow = max(j.map_x.shape[1] for j in jobs)
    # Host buffers, page-locked from the start on CUDA: filled once and copied up without a staging copy.
    pin = dev.type == "cuda"

    def host(shape: tuple[int, ...], dtype):
        return torch.zeros(shape, dtype=dtype, pin_memory=pin)

    src_y = host((n, 1, sh, sw), torch.uint8)
    src_c = host((n, 2, sh // 2, sw // 2), torch.uint8)
    grid = host((n, oh, ow, 2), torch.float32)
    tgt_y = host((n, oh, ow), torch.uint8)
    tgt_c = host((n, 2, oh // 2, ow // 2), torch.uint8)
    ring = host((n, oh, ow), torch.bool)
    extent = host((n, 2), torch.float32)  # each source's own (width - 1, height - 1)
    for k, j in enumerate(jobs):
        y, u, v = _planes(j.source)
        h, w = y.shape
        src_y[k, 0, :h, :w].numpy()[...] = y
        src_c[k, 0, : h // 2, : w // 2].numpy()[...] = u
        src_c[k, 1, : h // 2, : w // 2].numpy()[...] = v
        # Padding repeats the edge (OpenCV's BORDER_REPLICATE): bicubic taps reach past a clamped position.
        for plane, ph, pw in ((src_y[k], h, w), (src_c[k], h // 2, w // 2)):
            if ph < plane.shape[1]:
                plane[:, ph:, :pw] = plane[:, ph - 1 : ph, :pw]
            if pw < plane.shape[2]:
                plane[:, :, pw:] = plane[:, :, pw - 1 : pw]
        extent[k] = torch.tensor([w - 1, h - 1])
        mh, mw = j.map_x.shape
        grid[k, :mh, :mw, 0].numpy()[...] = j.map_x
        grid[k, :mh, :mw, 1].numpy()[...] = j.map_y
        ty, tu, tv = _planes(j.target)
        tgt_y[k, :mh, :mw].numpy()[...] = ty
        tgt_c[k, 0, : mh // 2, : mw // 2].numpy()[...] = tu
        tgt_c[k, 1, : mh // 2, : mw // 2].numpy()[...] = tv
        ring[k, :mh, :mw].numpy()[...] = j.ring
    def up(t):
        return t.to(dev, non_blocking=pin)

    src_y_d, src_c_d, grid_d, tgt_y_d, tgt_c_d, ring_d, extent_d = map(
        up, (src_y, src_c, grid, tgt_y, tgt_c, ring, extent))

    with torch.no_grad():
        # Luma: bicubic, sample positions clamped to each source's own extent (its padding is not image).
        lo = torch.zeros(2, device=dev)
        g = torch.minimum(torch.maximum(grid_d, lo), extent_d[:, None, None, :])
        norm = torch.tensor([2.0 / max(sw - 1, 1), 2.0 / max(sh - 1, 1)], device=dev)
        image = _as_dtype(src_y_d, precision.sample, on_cpu)
        warped_y = F.grid_sample(image, _as_dtype(g * norm - 1.0, precision.sample, on_cpu), mode="bicubic",
                                 padding_mode="border", align_corners=True)[:, 0].float()  # (n, oh, ow)
        # Chroma: the map at each chroma sample's centre (the mean of its 2x2 luma block, as a 2:1
        # bilinear resize of the map gives), in chroma coordinates; bilinear, as the CPU path samples it.
        gc = F.avg_pool2d(grid_d.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        gc = torch.minimum(torch.maximum((gc - 0.5) * 0.5, lo), (extent_d[:, None, None, :] - 1.0) * 0.5)
        norm_c = torch.tensor([2.0 / max(sw // 2 - 1, 1), 2.0 / max(sh // 2 - 1, 1)], device=dev)
        warped_c = F.grid_sample(_as_dtype(src_c_d, precision.sample, on_cpu),
                                 _as_dtype(gc * norm_c - 1.0, precision.sample, on_cpu), mode="bilinear",
                                 padding_mode="border", align_corners=True).float()  # (n, 2, oh/2, ow/2)
        # Colour: per plane, mean and spread over the ring, matched to the target's there.
        weight_y = ring_d.float()
        weight_c = ring_d[:, ::2, ::2].float()
        count_y = weight_y.sum(dim=(1, 2))  # (n,)
        enough = (count_y >= MIN_RING).float()

        def match(p, t, weight):  # p, t: (n, planes, h, w) float32; weight: (n, h, w)
            wgt = weight[:, None]
            count = wgt.sum(dim=(2, 3)).clamp_min(1.0)  # (n, planes)
            mean_p = (p * wgt).sum(dim=(2, 3)) / count
            mean_t = (t * wgt).sum(dim=(2, 3)) / count
            std_p = (((p - mean_p[..., None, None]) ** 2 * wgt).sum(dim=(2, 3)) / count).sqrt()
            std_t = (((t - mean_t[..., None, None]) ** 2 * wgt).sum(dim=(2, 3)) / count).sqrt()
            gain = ((std_t + 1.0) / (std_p + 1.0)).clamp(MIN_GAIN, MAX_GAIN)
            on = enough[:, None]
            gain = gain * on + (1 - on)
            shift_p, shift_t = mean_p * on, mean_t * on
            c = precision.colour
            out = (_as_dtype(p, c, False) - shift_p[..., None, None].to(c)) * gain[..., None, None].to(c) \
                + shift_t[..., None, None].to(c)
            return out.float().add_(0.5).clamp_(0, 255).to(torch.uint8)

        out_y = match(warped_y[:, None], tgt_y_d[:, None].float(), weight_y)[:, 0]
        out_c = match(warped_c, tgt_c_d.float(), weight_c)
        out_y, out_c = out_y.cpu().numpy(), out_c.cpu().numpy()
    results = []
    for k, j in enumerate(jobs):
        mh, mw = j.map_x.shape
        results.append(np.concatenate([out_y[k, :mh, :mw].reshape(-1), out_c[k, 0, : mh // 2, : mw // 2].reshape(-1),
                                       out_c[k, 1, : mh // 2, : mw // 2].reshape(-1)]).reshape(mh * 3 // 2, mw))
    return results


class GpuKernels:
    """:func:`warp_and_match` over one job's chunks on a CUDA device, its failures handled for the job.

    Each chunk is split into batches sized from the memory free on the GPU just before it. An
    out-of-memory error frees torch's cache, halves the batch and keeps that limit for the rest of the
    job. Any other CUDA failure (or out of memory for a single frame) ends the GPU's part: :meth:`run`
    returns None from then on, with one warning, and the caller renders on the CPU. Errors that are
    not the GPU's (bugs) propagate unchanged.
    """

    # Share of the measured free memory a batch may plan on (the rest: fragmentation, other processes).
    MEMORY_SHARE = 0.8

    def __init__(self, device: Device, i420: bool = False) -> None:
        self.device = device
        self.i420 = i420  # jobs are WarpJobI420 (warp_and_match_i420), else WarpJob (warp_and_match)
        self.batch_limit: int | None = None  # set by an out-of-memory error
        self.failed: str | None = None  # why the GPU was given up, once it was

    def batch_size(self, jobs: list) -> int:
        """How many of ``jobs`` fit on the GPU at once now (at least one)."""
        available = self.MEMORY_SHARE * gpu_available_bytes(self.device)
        n = min(len(jobs), self.batch_limit or len(jobs))
        bytes_of = batch_bytes_i420 if self.i420 else batch_bytes
        while n > 1 and bytes_of(jobs[:n]) > available:
            n -= 1
        return n

    def run(self, jobs: list) -> list[np.ndarray] | None:
        """Results for ``jobs``, or None when the CPU must render them (and every later chunk)."""
        if self.failed is not None:
            return None
        out: list[np.ndarray] = []
        start = 0
        while start < len(jobs):
            size = 1
            try:
                size = self.batch_size(jobs[start:])
                kernel = warp_and_match_i420 if self.i420 else warp_and_match
                out += kernel(self.device, jobs[start:start + size])
            except Exception as e:
                if not is_cuda_error(e):
                    raise
                if is_out_of_memory(e) and size > 1:
                    release_cached_memory(self.device)
                    self.batch_limit = size // 2
                    log.warning("GPU out of memory for %d frames at once; %d at a time from now on.", size,
                                self.batch_limit)
                    continue
                self.failed = str(e).splitlines()[0] if str(e) else type(e).__name__
                log.warning("The GPU %s failed (%s); rendering the rest of this job on the CPU.",
                            self.device.describe(), self.failed)
                return None
            start += size
        return out
