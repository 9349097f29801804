"""The retrieval engine's pixel work as batched torch kernels, for a GPU.

Per output frame the retrieval engine resamples a source lower face through a dense map (bicubic)
and matches its colour to the frame it goes on. On a CPU OpenCV does that fastest, frame by frame.
On a CUDA device :func:`warp_and_match` does a whole chunk at once in FP16: each source crop, map
and target region is uploaded once, and each result is downloaded once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipdub.device import Device

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


def warp_and_match(device: Device, jobs: list[WarpJob]) -> list[np.ndarray]:
    """Resample and colour-match every job on ``device``; results are (h, w, 3) uint8 like each target."""
    if not jobs:
        return []
    import torch
    import torch.nn.functional as F

    dev, dtype = device.torch, device.dtype
    if dev.type == "cpu":
        dtype = torch.float32  # CPU kernels have no half-precision bicubic sampling
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
        image = src_d.permute(0, 3, 1, 2).to(dtype)  # (n, 3, sh, sw)
        # Pixel coordinates to grid_sample's [-1, 1] (align_corners=True: -1 and 1 are pixel centres).
        norm = torch.tensor([2.0 / max(sw - 1, 1), 2.0 / max(sh - 1, 1)], device=dev)
        g = (grid_d * norm - 1.0).to(dtype)
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
        matched = (warped - shift_s[:, None, None]) * gain[:, None, None] + shift_t[:, None, None]
        out = matched.add_(0.5).clamp_(0, 255).to(torch.uint8).cpu().numpy()
    return [out[k, : j.map_x.shape[0], : j.map_x.shape[1]] for k, j in enumerate(jobs)]
