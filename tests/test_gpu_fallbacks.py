"""The GPU path's failures, with CUDA mocked: out of memory halves the batch for the rest of the job, a CUDA
failure moves the rest of the job to the CPU once, bugs surface, and the result says which device rendered
what; NVENC on the render's GPU, with FFmpeg's reason when it does not open; one GPU per studio worker."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import cut_audio, cut_video, media

from lipdub.device import Device, cpu_device
from lipdub.face.analyse import analyse_template
from lipdub.media.decode import TemplateFrames, pingpong_indices
from lipdub.media.probe import probe
from lipdub.render import kernels
from lipdub.render.kernels import GpuKernels, WarpJob, batch_bytes, warp_and_match

GPU = Device("cuda", 0, "fake GPU", half=True)


def _jobs(n: int) -> list[WarpJob]:
    import av

    with av.open(str(media("katie_talk_512.mp4"))) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="bgr24")
    yy, xx = np.mgrid[0:60, 0:80].astype(np.float32)
    return [WarpJob(frame[100:300, 100:300], xx + 10 + k, yy + 20, frame[0:60, 0:80], np.ones((60, 80), bool))
            for k in range(n)]


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> dict:
    """kernels' GPU calls replaced: batches run on the CPU unless ``state['fail'](n)`` returns an error."""
    state: dict = {"sizes": [], "released": 0, "free": 1 << 40, "fail": lambda n: None}
    cpu = cpu_device()

    def on_cpu_unless_failing(kernel):
        def run(device: Device, jobs: list, precision=None) -> list[np.ndarray]:
            assert device.kind == "cuda"
            state["sizes"].append(len(jobs))
            error = state["fail"](len(jobs))
            if error is not None:
                raise error
            return kernel(cpu, jobs)

        return run

    monkeypatch.setattr(kernels, "warp_and_match", on_cpu_unless_failing(kernels.warp_and_match))
    monkeypatch.setattr(kernels, "warp_and_match_i420", on_cpu_unless_failing(kernels.warp_and_match_i420))
    monkeypatch.setattr(kernels, "gpu_available_bytes", lambda device: state["free"])

    def release(device: Device) -> None:
        state["released"] += 1

    monkeypatch.setattr(kernels, "release_cached_memory", release)
    return state


def _oom(text: str = "CUDA out of memory. Tried to allocate 2.00 GiB") -> Exception:
    import torch

    return torch.cuda.OutOfMemoryError(text)


def test_out_of_memory_frees_the_cache_halves_the_batch_and_keeps_it(fake_gpu: dict) -> None:
    jobs = _jobs(16)
    expected = warp_and_match(cpu_device(), jobs)
    fake_gpu["fail"] = lambda n: _oom() if n > 4 else None
    gpu = GpuKernels(GPU)
    got = gpu.run(jobs)
    assert fake_gpu["sizes"] == [16, 8, 4, 4, 4, 4] and fake_gpu["released"] == 2
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
    fake_gpu["sizes"].clear()
    gpu.run(jobs)  # the next chunk starts at the size that fitted
    assert fake_gpu["sizes"] == [4, 4, 4, 4] and fake_gpu["released"] == 2


def test_batches_are_sized_from_the_measured_free_memory(fake_gpu: dict) -> None:
    jobs = _jobs(16)
    fake_gpu["free"] = int(batch_bytes(jobs[:5]) / GpuKernels.MEMORY_SHARE) + 1
    GpuKernels(GPU).run(jobs)
    assert fake_gpu["sizes"] == [5, 5, 5, 1]


def test_a_cuda_failure_gives_the_rest_of_the_job_to_the_cpu_with_one_warning(
        fake_gpu: dict, caplog: pytest.LogCaptureFixture) -> None:
    import torch

    fake_gpu["fail"] = lambda n: torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    gpu = GpuKernels(GPU)
    with caplog.at_level(logging.WARNING, logger="lipdub.render.kernels"):
        assert all(gpu.run(_jobs(4)) is None for _ in range(5))
    assert fake_gpu["sizes"] == [4]  # the GPU is not tried again
    assert len(caplog.records) == 1 and "illegal memory access" in caplog.text
    # Out of memory for a single frame: the same.
    fake_gpu["fail"] = lambda n: _oom()
    gpu = GpuKernels(GPU)
    assert gpu.run(_jobs(2)) is None and gpu.failed


@pytest.mark.parametrize("bug", [RuntimeError("Expected all tensors to be on the same device"),
                                 ValueError("operands could not be broadcast together")])
def test_errors_that_are_not_the_gpus_surface(fake_gpu: dict, bug: Exception) -> None:
    fake_gpu["fail"] = lambda n: bug
    with pytest.raises(type(bug), match=str(bug)):
        GpuKernels(GPU).run(_jobs(3))


# -- the retrieval engine and the result -------------------------------------------------------------


@pytest.fixture(scope="module")
def short_template(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    path = cut_video(media("katie_talk_512.mp4"), tmp_path_factory.mktemp("tpl") / "katie_short.mp4", 40)
    info = probe(path)
    return info, analyse_template(info, Fraction(25), tmp_path_factory.mktemp("cache"))


def test_retrieval_after_a_cuda_failure_renders_on_the_cpu_once_and_says_so(
        short_template: tuple, fake_gpu: dict, caplog: pytest.LogCaptureFixture) -> None:
    from lipdub.pipeline import _render_chunk
    from lipdub.render.retrieval import RetrievalRenderer

    info, avatar = short_template
    n_out = 80  # five chunks
    ctx = _speaking_context(info, avatar, n_out, widest=1.0)
    frames = list(TemplateFrames(info, Fraction(25), avatar.n_frames).frames_for(ctx.template_indices))
    calls = [0]

    def fail(n: int) -> Exception | None:
        calls[0] += 1
        return RuntimeError("CUDA error: unspecified launch failure") if calls[0] == 3 else None

    fake_gpu["fail"] = fail
    renderer = RetrievalRenderer(GPU)
    renderer.prepare(ctx)
    changed = 0
    with caplog.at_level(logging.WARNING):
        for start in range(0, n_out, 16):
            out, _ = _render_chunk(frames[start:start + 16], start, ctx.template_indices, avatar, renderer)
            changed += sum(bool(o.overlays) for o in out)
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1
    assert renderer.device.kind == "cpu" and calls[0] == 3
    assert renderer.frames_on == {"cuda:0 (fake GPU)": 32, cpu_device().describe(): 48}
    assert changed > n_out // 3


def test_the_result_and_the_job_record_say_which_device_rendered_what(
        short_template: tuple, fake_gpu: dict, tmp_path: Path) -> None:
    from lipdub.pipeline import generate
    from lipdub.studio.jobs.runner import run_job
    from lipdub.studio.jobs.storage import LocalStorage
    from lipdub.studio.jobs.store import DONE, JobStore, sqlite_url

    info, _ = short_template
    calls = [0]

    def fail(n: int) -> Exception | None:
        calls[0] += 1
        return RuntimeError("CUDA error: unspecified launch failure") if calls[0] == 2 else None

    fake_gpu["fail"] = fail
    audio = cut_audio(media("en_radio_8s.wav"), tmp_path / "a.wav", 2.0)  # about 50 frames: four chunks
    result = generate(audio, info.path, tmp_path / "out.mp4", device=GPU, engine="retrieval",
                      cache_dir=tmp_path / "cache")
    cpu = cpu_device().describe()
    rest = result.frames - 16
    assert result.devices == {"cuda:0 (fake GPU)": 16, cpu: rest}
    assert result.device == f"cuda:0 (fake GPU): 16 frames, {cpu}: {rest} frames"
    assert result.encoder == "libx264"  # NVENC was tried (a CUDA device) and does not open here

    # The job record carries the same.
    storage = LocalStorage(tmp_path / "data")
    store = JobStore(sqlite_url(tmp_path / "data" / "jobs.db"))
    try:
        audio_key, size_a = storage.put_file(audio)
        face_key, size_f = storage.put_file(info.path)
        store.add_upload(audio_key, "speech.wav", size_a)
        store.add_upload(face_key, "face.mp4", size_f)
        job = store.create_job(audio_key, face_key, audio_name="speech.wav", face_name="face.mp4")
        token = store.claim_next("test").run_token

        def fake_generate(audio, face, out, **kwargs):
            Path(out).write_bytes(Path(result.output).read_bytes())
            return result

        import lipdub

        mp = pytest.MonkeyPatch()
        mp.setattr(lipdub, "generate", fake_generate)
        try:
            assert run_job(job.id, store, storage, token=token, device="cuda:0") == DONE
        finally:
            mp.undo()
        record = store.get(job.id).result
        assert record["devices"] == result.devices and record["device"] == result.device
        assert record["encoder"] == "libx264"
    finally:
        store.dispose()


# -- NVENC on the render's GPU ------------------------------------------------------------------------


def test_nvenc_is_opened_on_the_renders_gpu_and_a_failure_gives_ffmpegs_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from lipdub.media.encode import VideoWriter, nvenc_available, nvenc_opens

    if not nvenc_available():
        pytest.skip("this FFmpeg has no NVENC compiled in")
    if nvenc_opens(1)[0]:
        pytest.skip("NVENC opens on GPU 1 here")
    opened: list[tuple[str, dict]] = []
    real_setup = VideoWriter._setup

    def setup(self: VideoWriter, stream) -> None:
        opened.append((stream.codec_context.name, dict(stream.options)))
        real_setup(self, stream)

    monkeypatch.setattr(VideoWriter, "_setup", setup)
    audio = probe(cut_audio(media("en_radio_8s.wav"), tmp_path / "a.wav", 0.5))
    with caplog.at_level(logging.WARNING, logger="lipdub.media.encode"):
        writer = VideoWriter(tmp_path / "out.mp4", 64, 64, Fraction(25), audio, use_nvenc=True, nvenc_gpu=1)
    writer.abort()
    assert opened[0][0] == "h264_nvenc" and opened[0][1]["gpu"] == "1"
    assert writer.codec == "libx264"
    # FFmpeg's own words ("Cannot load libcuda.so.1", "OpenEncodeSessionEx failed: ..."), not a bare errno.
    reason = writer.fallback_reason
    assert reason and "Errno" not in reason and "Operation not permitted" not in caplog.text
    assert reason in caplog.text and reason == nvenc_opens(1)[1]


# -- one GPU per studio worker ----------------------------------------------------------------------


def test_the_studio_maps_its_workers_to_the_gpus_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lipdub.device as device_mod
    from lipdub.studio.jobs import service
    from lipdub.studio.jobs.service import Settings, Studio

    asked: list[tuple[str, bool]] = []

    def select(spec: str, **kw) -> Device:
        asked.append((spec, kw.get("in_process", True)))
        return Device("cuda", 1 if spec == "cuda:1" else 2, "fake GPU", half=True)

    monkeypatch.setattr(device_mod, "select_device", select)
    monkeypatch.setattr(service, "gpu_count", lambda: 4)

    def dispatch(data: str, **settings) -> tuple[list[str], int]:
        studio = Studio.from_settings(Settings(data_dir=tmp_path / data, **settings))
        studio.store.dispose()
        return studio.dispatcher.devices, studio.dispatcher.workers

    assert dispatch("a", device="cuda:1") == (["cuda:1"], 1)  # not cuda:0..3
    assert dispatch("b", device="cuda:1", workers=3) == (["cuda:1"], 3)
    assert dispatch("c", device="auto") == (["cuda:0", "cuda:1", "cuda:2", "cuda:3"], 4)
    assert dispatch("d", device="cuda", workers=2) == (["cuda"], 2)  # each render takes the freest GPU
    # The server renders nothing: it never holds a CUDA context of its own.
    assert all(not in_process for _, in_process in asked)


def test_info_says_whether_nvenc_opens_not_only_whether_it_is_compiled_in(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import run_cli

    from lipdub.media.encode import nvenc_available, nvenc_opens

    opens, reason = nvenc_opens()
    monkeypatch.setenv("COLUMNS", "250")  # one table row a line
    r = run_cli("info", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    nvenc = [line for line in r.stdout.splitlines() if "NVENC" in line]
    encoders = [line for line in r.stdout.splitlines() if "encoders" in line]
    assert len(nvenc) == 1 and len(encoders) == 1
    if nvenc_available() and not opens:  # compiled in, and yet it does not open: say so, and why
        assert "does not open" in nvenc[0] and reason in nvenc[0]
        assert "h264_nvenc" not in encoders[0]
    elif opens:
        assert "opens" in nvenc[0] and "does not" not in nvenc[0]


def test_an_engine_that_renders_with_opencv_says_cpu_even_on_a_gpu_job(tmp_path: Path) -> None:
    """The warp engine (a photo) has no GPU kernels: the result must not claim the GPU rendered it."""
    from lipdub.pipeline import generate

    audio = cut_audio(media("en_radio_8s.wav"), tmp_path / "a.wav", 1.0)
    result = generate(audio, media("portrait_474.png"), tmp_path / "out.mp4", device=GPU, engine="warp",
                      cache_dir=tmp_path / "cache")
    assert result.device == cpu_device().describe() and result.devices == {result.device: result.frames}


def test_a_celery_worker_renders_on_its_resolved_gpu_and_holds_no_context(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import lipdub.device as device_mod
    from lipdub.studio.jobs.store import sqlite_url
    from lipdub.studio.scaleout import worker

    asked: list[bool] = []

    def select(spec: str, **kw) -> Device:
        asked.append(kw.get("in_process", True))
        return Device("cuda", 1, "fake GPU", half=True)

    class App:
        argv: list[str] = []

        def worker_main(self, argv: list[str]) -> None:
            App.argv = argv

    monkeypatch.setattr(device_mod, "select_device", select)
    registered: list = []
    monkeypatch.setattr(worker, "make_celery", lambda *a, **kw: App())
    monkeypatch.setattr(worker, "register_task", lambda app, ctx: registered.append(ctx))
    worker.run_worker("redis://127.0.0.1:1/0", sqlite_url(tmp_path / "jobs.db"), str(tmp_path / "storage"),
                      device="auto")
    assert len(registered) == 1 and registered[0].device == "cuda:1"
    assert asked == [False]  # the supervising worker holds no CUDA context; its render children do the work
    assert any("lipdub-cuda1-" in a for a in App.argv)


def test_the_gpu_path_converts_no_colours_on_the_cpu(short_template: tuple, fake_gpu: dict,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path's host side was as costly as the whole OpenCV path (8-9 ms a frame), a good part of it
    BGR conversions: the bank's source crop and the frame's region to BGR, the result back to I420 in
    the blend. Now the kernels take and give the frame's own I420."""
    from lipdub.pipeline import _render_chunk
    from lipdub.render.bank import BankImages
    from lipdub.render.base import FrameTask
    from lipdub.render.retrieval import RetrievalRenderer

    info, avatar = short_template
    n_out = 32
    ctx = _speaking_context(info, avatar, n_out, widest=0.6)
    frames = list(TemplateFrames(info, Fraction(25), avatar.n_frames).frames_for(ctx.template_indices))
    renderer = RetrievalRenderer(GPU)
    renderer.prepare(ctx)

    def refuse(*_a, **_kw):
        raise AssertionError("a BGR conversion on the GPU path")

    monkeypatch.setattr(BankImages, "__getitem__", refuse)
    monkeypatch.setattr(FrameTask, "region", refuse)
    overlays = []
    for start in range(0, n_out, 16):
        out, _ = _render_chunk(frames[start:start + 16], start, ctx.template_indices, avatar, renderer)
        # Frames whose pose no source fits fade to their own mouth, which the warp engine draws in BGR:
        # every frame pasted in full must come out in I420.
        overlays += [o for k, frame in enumerate(out) for o in frame.overlays
                     if renderer.paste_weight[start + k] >= 1.0]
    assert fake_gpu["sizes"] and renderer.device.kind == "cuda"
    assert len(overlays) >= n_out // 2 and all(o.i420 for o in overlays)  # blended without a conversion back


def _speaking_context(info, avatar, n_out: int, widest: float):
    """A RenderContext whose mouth opens and closes every few frames (up to ``widest``) on the template."""
    from lipdub.audio.track import MouthTrack
    from lipdub.media.audio import AudioClip
    from lipdub.render import RenderContext

    open_ = np.clip(0.5 + 0.5 * np.sin(np.arange(n_out) / 2.5), 0, widest).astype(np.float32)
    z = np.zeros(n_out, np.float32)
    return RenderContext(avatar=avatar, mouth=MouthTrack(25.0, open_, z, z.copy(), z.copy(), open_ > 0.02),
                         audio=AudioClip(np.zeros(16000, np.float32)), fps=25.0,
                         template_indices=pingpong_indices(n_out, avatar.n_frames), template=info)
