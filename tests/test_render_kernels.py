"""The batched torch kernels agree with the OpenCV path (run here on the CPU), and the GPU's precision policy
with the float32 reference."""

from __future__ import annotations

import av
import cv2
import numpy as np
from conftest import media

from lipdub.device import Device, select_device
from lipdub.render.kernels import (
    Precision,
    WarpJob,
    WarpJobI420,
    precision_for,
    warp_and_match,
    warp_and_match_i420,
)


def _frames(n: int) -> list[np.ndarray]:
    out = []
    with av.open(str(media("katie_talk_512.mp4"))) as c:
        for k, f in enumerate(c.decode(video=0)):
            if k % 7 == 0:
                out.append(f.to_ndarray(format="bgr24"))
            if len(out) == n:
                break
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def _batch_member(frames: list[np.ndarray], k: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Job ``k`` of a batch: a source crop, float32 maps (rotated, scaled, with a ripple) and a target, all of
    sizes that differ from the other jobs', as a chunk of real frames has."""
    src = frames[k][150 + 4 * k : 470, 100 : 420 - 6 * k]
    h, w = 200 + 10 * k, 260 - 8 * k
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, scale = 0.05 * (k - 1.5), 1.0 + 0.04 * k
    cx, cy = w / 2, h / 2
    map_x = (np.cos(angle) * (xx - cx) - np.sin(angle) * (yy - cy)) * scale + cx + 20 + 2.5 * np.sin(yy / 17)
    map_y = (np.sin(angle) * (xx - cx) + np.cos(angle) * (yy - cy)) * scale + cy + 30
    target = np.clip(frames[(k + 1) % 4][200 : 200 + h, 120 : 120 + w].astype(np.float32) * 0.9 + 12, 0,
                     255).astype(np.uint8)
    return src, (map_x.astype(np.float32), map_y.astype(np.float32)), target


def test_batched_warp_matches_opencv_bicubic_remap_with_colour_matching() -> None:
    frames = _frames(4)
    jobs, expected = [], []
    for k in range(len(frames)):
        src, (map_x, map_y), target = _batch_member(frames, k)
        h, w = target.shape[:2]
        ring = np.zeros((h, w), bool)
        ring[: h // 3] = True
        jobs.append(WarpJob(src, map_x, map_y, target, ring))
        warped = cv2.remap(src, map_x, map_y, cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        ps, ts = warped[ring], target[ring].astype(np.float32)
        gain = np.clip((ts.std(0) + 1) / (ps.std(0) + 1), 0.85, 1.18)
        expected.append(np.clip((warped - ps.mean(0)) * gain + ts.mean(0) + 0.5, 0, 255).astype(np.uint8))
    got = warp_and_match(select_device("cpu"), jobs)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        assert _psnr(g, e) > 40.0
    # The colour correction did something: the result is closer to the target's statistics.
    j = jobs[0]
    assert abs(got[0][j.ring].mean() - j.target[j.ring].mean()) < 1.0


def test_too_few_shared_pixels_leave_the_colour_alone() -> None:
    frame = _frames(1)[0]
    src = frame[100:300, 100:300]
    yy, xx = np.mgrid[0:120, 0:150].astype(np.float32)
    job = WarpJob(src, xx + 10, yy + 10, np.zeros((120, 150, 3), np.uint8), np.zeros((120, 150), bool))
    (got,) = warp_and_match(select_device("cpu"), [job])
    np.testing.assert_allclose(got.astype(int), src[10:130, 10:160].astype(int), atol=1)


def _wide_job(width: int) -> tuple[WarpJob, np.ndarray]:
    """A real frame tiled to ``width`` pixels (native sharpness), its last tile's mouth area resampled
    through a slight rotation and zoom; and the mask a render would blend it with (an ellipse)."""
    frame = _frames(1)[0]
    reps = -(-width // frame.shape[1])
    src = np.ascontiguousarray(np.tile(frame, (1, reps, 1))[:, :width])
    h, w = 240, 300
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, scale = 0.07, 1.04
    cx, cy = width - frame.shape[1] + 180.3, 300.7  # far right: where FP16 grid coordinates are coarsest
    map_x = (np.cos(angle) * (xx - w / 2) - np.sin(angle) * (yy - h / 2)) * scale + cx
    map_y = (np.sin(angle) * (xx - w / 2) + np.cos(angle) * (yy - h / 2)) * scale + cy
    y0, x0 = int(cy) - h // 2, int(cx) - w // 2
    target = np.clip(src[y0:y0 + h, x0:x0 + w].astype(np.float32) * 0.95 + 8, 0, 255).astype(np.uint8)
    ring = np.zeros((h, w), bool)
    ring[: h // 3] = True
    mask = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2 < 1
    return WarpJob(src, map_x.astype(np.float32), map_y.astype(np.float32), target, ring), mask


def _psnr_where(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """PSNR and largest difference over the pixels a blend would change (``mask``) only."""
    d = a.astype(np.float64)[mask] - b.astype(np.float64)[mask]
    mse = float(np.mean(d ** 2))
    return (99.0 if mse == 0 else 10 * np.log10(255**2 / mse)), int(np.abs(d).max())


def test_gpu_precision_samples_in_float32_and_matches_the_cpu_reference_on_wide_sources() -> None:
    """The CUDA policy, computed here as CUDA computes it (half inputs, float32 arithmetic), against the
    float32 CPU reference on sources 1920 and 3840 px wide. An FP16 grid is shown
    failing the same bar: its coordinates land up to (W - 1) / 8192 px off."""
    import torch

    cpu, gpu = select_device("cpu"), Device("cuda", 0, "a GPU", half=True)
    policy = precision_for(gpu)
    assert policy.sample == torch.float32 and policy.colour == torch.float16
    for width in (1920, 3840):
        job, mask = _wide_job(width)
        reference = warp_and_match(cpu, [job])[0]
        psnr, worst = _psnr_where(warp_and_match(cpu, [job], policy)[0], reference, mask)
        assert psnr > 55.0 and worst <= 2, (width, psnr, worst)
        old_psnr, old_worst = _psnr_where(warp_and_match(cpu, [job], Precision(torch.float16, torch.float16))[0],
                                          reference, mask)
        assert old_psnr < 50.0 and old_worst >= 20, (width, old_psnr, old_worst)


def _i420(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2YUV_I420)


def test_i420_kernels_match_the_cpu_paths_resampling_and_colour_match() -> None:
    """What the GPU renders (packed I420 in and out, no colour conversion) against the CPU path's remap_i420
    and match_colour_i420 on the same plans."""
    from lipdub.render.blend import colour_ring, match_colour_i420
    from lipdub.render.retrieval import remap_i420

    frames = _frames(4)
    jobs, expected = [], []
    for k in range(len(frames)):
        src_bgr, (map_x, map_y), target_bgr = _batch_member(frames, k)
        h, w = target_bgr.shape[:2]
        src, target = _i420(src_bgr), _i420(target_bgr)
        pull = np.dstack([map_x, map_y]).astype(np.float32)
        alpha = np.zeros((h, w), np.float32)
        alpha[: h // 2] = np.linspace(0, 1, h // 2)[:, None]  # a feather from the box's top edge
        lm = np.zeros((478, 2), np.float32)
        lm[[61, 291], 1] = h * 0.6  # the mouth line
        jobs.append(WarpJobI420(src, pull[..., 0], pull[..., 1], target, colour_ring(alpha, lm)))
        patch = remap_i420(src, pull, (0, 0, w, h))  # bicubic over the whole box, as the kernels are
        expected.append(match_colour_i420(patch, target, alpha, lm))
    got = warp_and_match_i420(select_device("cpu"), jobs)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        assert _psnr(g, e) > 50.0


def test_gpu_precision_of_the_i420_kernels_on_wide_sources() -> None:
    import torch

    cpu, policy = select_device("cpu"), precision_for(Device("cuda", 0, "a GPU", half=True))
    for width in (1920, 3840):
        job, mask = _wide_job(width)
        job420 = WarpJobI420(_i420(job.source), job.map_x, job.map_y, _i420(job.target), job.ring)
        luma = np.zeros((job.map_x.shape[0] * 3 // 2, job.map_x.shape[1]), bool)
        luma[: job.map_x.shape[0]] = mask  # the luma plane, where the eye sees the detail
        reference = warp_and_match_i420(cpu, [job420])[0]
        psnr, worst = _psnr_where(warp_and_match_i420(cpu, [job420], policy)[0], reference, luma)
        assert psnr > 55.0 and worst <= 2, (width, psnr, worst)
        old = warp_and_match_i420(cpu, [job420], Precision(torch.float16, torch.float16))[0]
        assert _psnr_where(old, reference, luma)[0] < 50.0


def test_a_source_padded_to_a_larger_one_in_its_batch_renders_as_alone() -> None:
    """Sources smaller than the batch's largest are padded; bicubic taps past their edge must see the edge
    repeated (as OpenCV's BORDER_REPLICATE), not the padding, so a frame renders the same in any batch."""
    frame = _frames(1)[0]
    small, large = _i420(frame[100:260, 100:300]), _i420(frame[0:400, 0:480])
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # The small source's last columns and rows, at fractional positions up to half a pixel past its edge.
    map_x, map_y = 197.0 + xx * 3.5 / (w - 1), 156.0 + yy * 4.5 / (h - 1)
    ring = np.zeros((h, w), bool)
    ring[: h // 2 : 2] = True
    target = _i420(frame[200:200 + h, 200:200 + w])
    job = WarpJobI420(small, map_x, map_y, target, ring)
    other = WarpJobI420(large, xx + 50, yy + 60, target, ring)
    cpu = select_device("cpu")
    (alone,) = warp_and_match_i420(cpu, [job])
    batched, _ = warp_and_match_i420(cpu, [job, other])
    np.testing.assert_array_equal(batched, alone)
