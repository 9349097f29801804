"""The wav2lip engine on its own: crops, mel clock, compositing, CPU fallback (no pipeline needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from wav2lip_helpers import MEDIA_DIR, needs_shared, save_released_checkpoint

from lipdub.audio.track import MouthTrack
from lipdub.device import Device, cpu_device
from lipdub.errors import ModelError
from lipdub.face.avatar import Avatar
from lipdub.media.audio import load_audio
from lipdub.render.base import FrameTask, RenderContext
from lipdub.render.wav2lip.engine import Wav2LipRenderer, face_box, plan_face_boxes

FPS = 25.0
N = 30


def _landmarks(image: np.ndarray) -> np.ndarray:
    """lipdub's own face mesh on a still (the same landmarks the pipeline hands an engine)."""
    import cv2

    from lipdub.face.landmarks import FaceMesh

    with FaceMesh(track=False, max_faces=1) as mesh:
        faces = mesh.detect(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    assert faces, "the test portrait has a face"
    return faces[0].astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import cv2

    image = cv2.imread(str(MEDIA_DIR / "portrait_474.png"))
    lm = _landmarks(image)
    tmp = tmp_path_factory.mktemp("w2l_engine")
    weights = save_released_checkpoint(tmp / "wav2lip.pth")
    audio = load_audio(MEDIA_DIR / "en_speech_12s.wav")
    audio.samples = audio.samples[: int(N / FPS * audio.sample_rate)]
    avatar = Avatar("k", "image", image.shape[1], image.shape[0], FPS, lm[None], tmp)
    ctx = RenderContext(avatar, MouthTrack.silent(N, FPS), audio, FPS, np.zeros(N, np.int64))
    return image, lm, weights, ctx


def _task(image: np.ndarray, lm: np.ndarray, j: int, box=None, face=True) -> FrameTask:
    x0, y0, x1, y1 = box or (0, 0, image.shape[1], image.shape[0])
    return FrameTask(j, 0, image[y0:y1, x0:x1].copy(), (x0, y0, x1, y1),
                     (lm - [x0, y0]).astype(np.float32) if face else None)


@needs_shared
def test_render_composites_the_mouth_at_full_resolution(setup) -> None:
    image, lm, weights, ctx = setup
    r = Wav2LipRenderer(cpu_device(), weights=weights, batch_size=8)
    r.prepare(ctx)
    assert r.mels.shape == (N, 1, 80, 16)
    out = []
    for s in range(0, N, 12):  # the pipeline hands over consecutive batches of its own size
        out += r.render([_task(image, lm, j) for j in range(s, min(N, s + 12))])
    assert len(out) == N
    mouth = np.round(lm[[13, 14]].mean(axis=0)).astype(int)
    fx0, fy0, fx1, fy1 = np.round(face_box(lm)).astype(int)
    for rc in out:
        assert rc.crop.shape == image.shape and rc.crop.dtype == np.uint8
        assert rc.alpha is not None and rc.alpha.dtype == np.float32 and rc.alpha.shape == image.shape[:2]
        assert 0 <= rc.alpha.min() and rc.alpha.max() <= 1
        assert rc.alpha[mouth[1], mouth[0]] > 0.9  # the mouth is replaced
        assert rc.alpha[: int(max(lm[159, 1], lm[386, 1]))].max() == 0  # eyes and above untouched
        assert rc.alpha[:, : fx0].max() == 0 and rc.alpha[:, fx1 + 1:].max() == 0  # not a box, inside the face
        assert rc.alpha[fy1 + 1:].max() == 0
        assert np.array_equal(rc.crop[: fy0], image[: fy0])  # outside the face box the crop is untouched
    # The generated face differs from the template where the mouth is.
    assert np.abs(out[0].crop[mouth[1], mouth[0]].astype(int) - image[mouth[1], mouth[0]]).sum() > 0


@needs_shared
def test_crop_offset_and_missing_faces(setup) -> None:
    image, lm, weights, ctx = setup
    r = Wav2LipRenderer(cpu_device(), weights=weights)
    r.prepare(ctx)
    box = (100, 50, 400, 420)
    full, sub, none = r.render([_task(image, lm, 3), _task(image, lm, 3, box), _task(image, lm, 4, face=False)])
    x0, y0, x1, y1 = box
    # Same face box in frame coordinates -> same generated pixels, wherever the crop starts.
    np.testing.assert_array_equal(full.crop[y0:y1, x0:x1], sub.crop)
    np.testing.assert_allclose(full.alpha[y0:y1, x0:x1], sub.alpha, atol=1e-6)
    assert none.alpha is None and np.array_equal(none.crop, image)


@needs_shared
def test_cuda_out_of_memory_falls_back_to_cpu(setup, monkeypatch) -> None:
    image, lm, weights, ctx = setup
    r = Wav2LipRenderer(cpu_device(), weights=weights, batch_size=16)
    r.prepare(ctx)
    expected = [c.crop for c in r.render([_task(image, lm, j) for j in range(10)])]
    # Pretend to be on a GPU that runs out of memory for any batch.
    r.device = Device("cuda", 0, "fake GPU", half=True)
    calls: list[tuple[str, int]] = []
    real_forward = r._forward

    def forward(faces, mels):
        calls.append((r.device.kind, len(faces)))
        if r.device.kind == "cuda":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(faces, mels)

    monkeypatch.setattr(r, "_forward", forward)
    monkeypatch.setattr(r, "_release_gpu_memory", lambda: None)
    got = [c.crop for c in r.render([_task(image, lm, j) for j in range(10)])]
    assert [k for k, _ in calls[:3]] == ["cuda", "cuda", "cuda"] and [n for _, n in calls[:3]] == [10, 8, 4]
    assert r.device.kind == "cpu" and all(k == "cpu" for k, _ in calls[3:])
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_other_errors_are_not_swallowed(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "w.pth").write_bytes(b"x")
    r = Wav2LipRenderer(Device("cuda", 0, "fake GPU", half=True), weights=tmp_path / "w.pth")

    def boom(faces, mels):
        raise RuntimeError("Expected all tensors to be on the same device")

    monkeypatch.setattr(r, "_forward", boom)
    with pytest.raises(RuntimeError, match="same device"):
        r._infer(np.zeros((2, 96, 96, 3), np.uint8), np.zeros((2, 1, 80, 16), np.float32))


def test_weights_are_required(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="--weights"):
        Wav2LipRenderer(cpu_device())
    with pytest.raises(ModelError, match="not found at .*nope.pth"):
        Wav2LipRenderer(cpu_device(), weights=tmp_path / "nope.pth")
    assert not Wav2LipRenderer.suits(None)  # never chosen by --engine auto


def test_face_boxes_are_smoothed_over_time() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(100, 200, size=(478, 2)).astype(np.float32)
    lms = np.stack([base + rng.normal(0, 2, size=2).astype(np.float32) for _ in range(40)])
    lms[10] = np.nan  # a frame without a face
    boxes = plan_face_boxes(lms, np.arange(40))
    raw = plan_face_boxes(lms, np.arange(40), window=1)
    assert np.isnan(boxes[10]).all() and np.isfinite(np.delete(boxes, 10, axis=0)).all()
    jitter = lambda b: np.nanstd(np.diff(b[:, 0]))  # noqa: E731
    assert jitter(boxes) < 0.6 * jitter(raw)
    # Output frames map to template frames (ping-pong, stills): boxes follow the template index.
    np.testing.assert_allclose(plan_face_boxes(lms[:1], np.zeros(5, np.int64)), np.repeat(raw[:1], 5, axis=0))


def _pretend_gpu(r: Wav2LipRenderer, monkeypatch, fail) -> list[tuple[str, int]]:
    """``r`` on a fake CUDA device whose forward pass raises ``fail(n)`` (or succeeds with None) for n faces."""
    r.device = Device("cuda", 0, "fake GPU", half=True)
    calls: list[tuple[str, int]] = []
    real_forward = r._forward

    def forward(faces, mels):
        calls.append((r.device.kind, len(faces)))
        if r.device.kind == "cuda":
            error = fail(len(faces))
            if error is not None:
                raise error
            return np.zeros((len(faces), 96, 96, 3), np.uint8)
        return real_forward(faces, mels)

    monkeypatch.setattr(r, "_forward", forward)
    monkeypatch.setattr(r, "_release_gpu_memory", lambda: None)
    return calls


@needs_shared
def test_out_of_memory_batch_size_is_kept_for_the_rest_of_the_job(setup, monkeypatch) -> None:
    image, lm, weights, ctx = setup
    r = Wav2LipRenderer(cpu_device(), weights=weights, batch_size=16)
    r.prepare(ctx)
    calls = _pretend_gpu(r, monkeypatch, lambda n: RuntimeError("CUDA out of memory.") if n > 8 else None)
    r.render([_task(image, lm, j) for j in range(10)])
    r.render([_task(image, lm, j) for j in range(10, 20)])
    # The second chunk starts at the batch that fitted, not at 16 again.
    assert calls == [("cuda", 10), ("cuda", 8), ("cuda", 2), ("cuda", 8), ("cuda", 2)]
    assert r.device.kind == "cuda" and r.frames_on == {"cuda:0 (fake GPU)": 20}


@needs_shared
def test_a_cuda_failure_renders_the_rest_of_the_job_on_the_cpu_with_one_warning(setup, monkeypatch, caplog) -> None:
    import logging

    image, lm, weights, ctx = setup
    r = Wav2LipRenderer(cpu_device(), weights=weights, batch_size=4)
    r.prepare(ctx)
    expected = [c.crop for c in r.render([_task(image, lm, j) for j in range(8)])]
    r.frames_on.clear()
    gpu_calls = [0]

    def fail(n):
        gpu_calls[0] += 1
        return RuntimeError("CUDA error: an illegal memory access was encountered") if gpu_calls[0] > 1 else None

    calls = _pretend_gpu(r, monkeypatch, fail)
    with caplog.at_level(logging.WARNING, logger="lipdub.render.wav2lip.engine"):
        first = r.render([_task(image, lm, j) for j in range(8)])
        second = r.render([_task(image, lm, j) for j in range(8)])
    assert [k for k, _ in calls] == ["cuda", "cuda", "cpu", "cpu", "cpu"]
    assert len([m for m in caplog.messages if "failed" in m]) == 1
    assert r.device.kind == "cpu" and r.frames_on == {"cuda:0 (fake GPU)": 4, cpu_device().describe(): 12}
    for a, b in zip(expected[4:] + expected, [c.crop for c in first[4:] + second], strict=True):
        np.testing.assert_array_equal(a, b)


@needs_shared
def test_out_of_memory_while_loading_the_model_renders_on_the_cpu(setup, monkeypatch, caplog) -> None:
    import logging

    import torch

    from lipdub.render.wav2lip import checkpoint

    image, lm, weights, ctx = setup
    real_load = checkpoint.load_wav2lip

    def load(path, device="cpu"):
        if torch.device(device).type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real_load(path, device)

    monkeypatch.setattr(checkpoint, "load_wav2lip", load)
    r = Wav2LipRenderer(Device("cuda", 0, "fake GPU", half=True), weights=weights)
    with caplog.at_level(logging.WARNING, logger="lipdub.render.wav2lip.engine"):
        r.prepare(ctx)
    assert r.device.kind == "cpu" and "does not load on cuda:0" in caplog.text
    (out,) = r.render([_task(image, lm, 3)])
    assert out.alpha is not None
