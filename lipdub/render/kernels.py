"""The retrieval engine's pixel work as batched torch kernels, for a GPU.

Per output frame the retrieval engine resamples a source lower face through a dense map (bicubic)
and matches its colour to the frame it goes on. On a CPU OpenCV does that fastest, frame by frame.
On a CUDA device :func:`warp_and_match` does a whole chunk at once: each source crop, map and target
region is uploaded once, and each result is downloaded once. :class:`GpuKernels` runs a job's chunks
that way and handles the GPU's failures once for the whole job.

Precision (:func:`precision_for`): sampling is float32 everywhere. A [-1, 1] grid coordinate in FP16
is off by up to (W - 1) / 8192 pixels (0.23 px at 1920 wide, 0.47 px at 3840, against OpenCV's 1/32
px), which costs 37-52 dB of PSNR against float32 at those widths, single pixels off by tens of
levels; bf16 is coarser still. The colour match's per-pixel gain and shift run in FP16 on CUDA: at
most half a level off at 255, within the uint8 rounding. Its statistics are float32 sums (a sum of
pixels overflows FP16's 65504 after 257 of them).
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

    def __init__(self, device: Device) -> None:
        self.device = device
        self.batch_limit: int | None = None  # set by an out-of-memory error
        self.failed: str | None = None  # why the GPU was given up, once it was

    def batch_size(self, jobs: list[WarpJob]) -> int:
        """How many of ``jobs`` fit on the GPU at once now (at least one)."""
        available = self.MEMORY_SHARE * gpu_available_bytes(self.device)
        n = min(len(jobs), self.batch_limit or len(jobs))
        while n > 1 and batch_bytes(jobs[:n]) > available:
            n -= 1
        return n

    def run(self, jobs: list[WarpJob]) -> list[np.ndarray] | None:
        """Results for ``jobs``, or None when the CPU must render them (and every later chunk)."""
        if self.failed is not None:
            return None
        out: list[np.ndarray] = []
        start = 0
        while start < len(jobs):
            size = 1
            try:
                size = self.batch_size(jobs[start:])
                out += warp_and_match(self.device, jobs[start:start + size])
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
