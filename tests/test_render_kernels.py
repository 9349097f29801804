"""The batched torch kernels agree with the OpenCV path (run here on the CPU; on CUDA in FP16)."""

from __future__ import annotations

import av
import cv2
import numpy as np
from conftest import media

from lipdub.device import select_device
from lipdub.render.kernels import WarpJob, warp_and_match


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


def test_batched_warp_matches_opencv_bicubic_remap_with_colour_matching() -> None:
    frames = _frames(4)
    jobs, expected = [], []
    for k, frame in enumerate(frames):
        # Sources and outputs of different sizes in one batch, as a chunk of real frames has.
        src = frame[150 + 4 * k : 470, 100 : 420 - 6 * k]
        h, w = 200 + 10 * k, 260 - 8 * k
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle, scale = 0.05 * (k - 1.5), 1.0 + 0.04 * k
        cx, cy = w / 2, h / 2
        map_x = (np.cos(angle) * (xx - cx) - np.sin(angle) * (yy - cy)) * scale + cx + 20 + 2.5 * np.sin(yy / 17)
        map_y = (np.sin(angle) * (xx - cx) + np.cos(angle) * (yy - cy)) * scale + cy + 30
        target = np.clip(frames[(k + 1) % 4][200 : 200 + h, 120 : 120 + w].astype(np.float32) * 0.9 + 12, 0,
                         255).astype(np.uint8)
        ring = np.zeros((h, w), bool)
        ring[: h // 3] = True
        jobs.append(WarpJob(src, map_x.astype(np.float32), map_y.astype(np.float32), target, ring))
        warped = cv2.remap(src, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_CUBIC,
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
