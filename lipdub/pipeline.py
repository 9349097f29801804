"""generate(): decode -> analyse -> render -> encode, streamed in bounded chunks.

Decoding and rendering run ahead in threads of their own and hand small chunks of frames on through
bounded queues to the encoder, so memory does not depend on the length of the video.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipdub.audio import analyse as analyse_audio
from lipdub.audio.adapt import MIN_SPEECH_S, SpeakerFit, adapt, fit_from_track, in_sync
from lipdub.audio.adapt import cache_path as adapt_cache_path
from lipdub.device import Device, select_device
from lipdub.errors import InputError, LipdubError
from lipdub.face.analyse import analyse_template
from lipdub.face.avatar import Avatar, default_cache_root
from lipdub.face.cache import avatars_root
from lipdub.face.landmarks import inter_ocular, lip_gap
from lipdub.media.audio import load_audio
from lipdub.media.decode import (
    TemplateFrames,
    load_image,
    output_size,
    pingpong_indices,
    prefetched,
    yuv_colour,
)
from lipdub.media.encode import VideoWriter, check_writable, nvenc_available
from lipdub.media.encode import quality as quality_preset
from lipdub.media.frames import OutputFrame, Overlay
from lipdub.media.limits import Limits, check_audio, check_face
from lipdub.media.probe import MediaInfo, probe
from lipdub.render import FrameTask, RenderContext, create_renderer, engine_class, engine_for
from lipdub.render.bank import BankWriter, bank_folder
from lipdub.render.retrieval import RetrievalRenderer

log = logging.getLogger(__name__)

CHUNK = 16  # frames per chunk between stages
QUEUE_CHUNKS = 3  # chunks waiting between two stages, at most
PHOTO_FPS = Fraction(25)

# Share of the overall progress bar each stage takes.
_STAGES = {"probing": (0.0, 0.02), "analysing audio": (0.02, 0.10), "analysing template": (0.10, 0.30),
           "rendering": (0.30, 1.0)}


@dataclass
class Progress:
    stage: str
    fraction: float  # overall, 0..1
    message: str = ""


@dataclass
class Result:
    output: Path
    frames: int
    fps: float
    duration: float
    device: str  # where the frames were rendered: one device, or each with its share after a fallback
    engine: str
    seconds: float
    faces_missing: int
    devices: dict[str, int] = field(default_factory=dict)  # frames rendered, by device
    encoder: str = ""  # the video encoder that wrote the output (h264_nvenc or libx264)


class Cancelled(LipdubError):
    """The job was cancelled."""


ProgressCallback = Callable[[Progress], None]


def generate(audio: str | os.PathLike, face: str | os.PathLike, out: str | os.PathLike, *,
             device: str | Device = "auto", engine: str = "auto", quality: str = "balanced",
             fps: float | None = None, text: str | None = None, weights: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike | None = None, progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None, limits: Limits | None = None,
             head_motion: bool = True) -> Result:
    """Make the face in ``face`` (video or photo) speak ``audio``; write an MP4 to ``out``.

    ``head_motion`` False keeps a photo's head still (only its mouth and eyes move).

    ``limits`` bounds the inputs (size, duration, resolution); the defaults suit interactive use."""
    started = time.monotonic()
    report = _Reporter(progress)
    if engine != "auto":
        engine_class(engine)  # an unknown name fails now, not after the analysis
    quality_preset(quality)
    check_writable(out)

    report("probing", 0.0, "reading the inputs")
    limits = limits or Limits()
    a_info = probe(audio, limits)
    f_info = probe(face, limits)
    check_audio(a_info, a_info.path.name, limits)
    check_face(f_info, f_info.path.name, limits)
    # After the checks: a refused input should not wait for torch to load.
    dev = device if isinstance(device, Device) else select_device(device)
    out_fps = _output_fps(fps, f_info)

    report("analysing audio", 0.0, "decoding speech")
    clip = load_audio(audio, info=a_info)
    n_out = max(1, math.ceil(clip.duration * float(out_fps) - 1e-6))
    # The speech is analysed in a thread while the template is: the face mesh and pocketsphinx each
    # leave a core partly idle, and neither needs the other's result.
    pool = ThreadPoolExecutor(1, thread_name_prefix="lipdub-audio")
    try:
        speech = pool.submit(analyse_audio, clip, float(out_fps), n_out, text=text)
        avatar = _analyse_face(f_info, out_fps, engine, cache_dir, report)
        mouth = speech.result().fit_length(n_out)
    finally:
        pool.shutdown(wait=False)  # on an error, do not wait for the speech analysis to finish
    _check_cancel(cancel)
    fit = speaker_fit(avatar, f_info, report)
    if fit is not None:
        mouth = adapt(mouth, fit)

    engine_name = engine_for(engine, avatar)
    options: dict = {"weights": str(weights)} if weights else {}
    if not head_motion:
        options["head_motion"] = False
    renderer = create_renderer(engine_name, dev, **options)
    indices = pingpong_indices(n_out, avatar.n_frames)
    ctx = RenderContext(avatar=avatar, mouth=mouth, audio=clip, fps=float(out_fps), template_indices=indices,
                        options=options, template=f_info)
    renderer.prepare(ctx)
    # Engines take what they need of the speech in prepare(); an hour of it is 230 MB not to hold.
    ctx.audio = None
    del clip
    log.info("Rendering %d frames at %.3g fps with the %s engine on %s.", n_out, float(out_fps), engine_name,
             dev.describe())

    width, height = output_size(f_info)
    writer = VideoWriter(out, width, height, out_fps, a_info, quality, use_nvenc=dev.kind == "cuda"
                         and nvenc_available(), nvenc_gpu=dev.index, colour=yuv_colour(f_info))
    missing = 0
    try:
        source = _template_frames(f_info, out_fps, avatar, indices)
        for done, n_missing in _render_stream(source, indices, avatar, renderer, writer, cancel):
            missing += n_missing
            report("rendering", done / n_out, f"rendering {done}/{n_out} frames")
        output = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        renderer.close()  # its files (the mouth bank) are not held until the garbage collector comes
    if missing:
        log.warning("No face on %d of %d output frames; they show the template unchanged.", missing, n_out)
    seconds = time.monotonic() - started
    log.info("Wrote %s: %d frames, %.2f s, in %.1f s (%.2fx real time).", output, n_out, n_out / float(out_fps),
             seconds, (n_out / float(out_fps)) / max(seconds, 1e-9))
    report("done", 1.0, "finished")
    devices = dict(renderer.frames_on) or {dev.describe(): n_out}
    return Result(output=output, frames=n_out, fps=float(out_fps), duration=n_out / float(out_fps),
                  device=devices_summary(devices), engine=engine_name, seconds=seconds, faces_missing=missing,
                  devices=devices, encoder=writer.codec)


def devices_summary(frames_on: dict[str, int]) -> str:
    """The device that rendered, or, after a fallback, each with its frames: "cuda:0 (...): 120 frames, ..."."""
    if len(frames_on) == 1:
        return next(iter(frames_on))
    return ", ".join(f"{name}: {n} frames" for name, n in frames_on.items())


def _analyse_face(info: MediaInfo, fps: Fraction, engine: str, cache_dir: str | os.PathLike | None,
                  report: _Reporter) -> Avatar:
    report("analysing template", 0.0, "finding the face")
    cache_root = Path(cache_dir) if cache_dir else default_cache_root()
    # The mouth bank is filled during the analysis's own decode, so a new template is decoded once.
    bank = BankWriter(avatars_root(cache_root), *output_size(info)) if (
        info.kind == "video" and engine in ("auto", RetrievalRenderer.name)) else None
    try:
        avatar = analyse_template(info, fps, cache_root, frame_sink=bank,
                                  progress=lambda f: report("analysing template", f, "finding the face"))
        if bank is not None and len(bank):
            bank.finish(avatar, bank_folder(avatar))
    finally:
        if bank is not None:
            bank.discard()
    return avatar


def speaker_fit(avatar: Avatar, info: MediaInfo, report: Callable[[str, float, str], None] | None = None
                ) -> SpeakerFit | None:
    """How this template's speaker moves their mouth with their own speech (:mod:`lipdub.audio.adapt`),
    from the avatar cache or measured now; None for photos and templates without enough speech."""
    if avatar.kind != "video" or not info.has_audio:
        return None
    path = adapt_cache_path(avatar.cache_dir)
    if path.exists():
        fit = SpeakerFit.load(path)
        return None if fit.empty else fit
    if report is not None:
        report("analysing template", 1.0, "learning the speaker's own mouth from the template's speech")
    try:
        clip = load_audio(info.path, info=info)
    except InputError as e:
        log.info("No speaker adaptation: %s", e)
        return None
    track = analyse_audio(clip, avatar.fps, avatar.n_frames)
    gap = lip_gap(avatar.landmarks) / np.maximum(inter_ocular(avatar.landmarks), 1e-6)
    fit = fit_from_track(track, gap, avatar.found)
    stored = fit or SpeakerFit(np.zeros((0, 0), np.float32), np.zeros(0, np.float32), 0)
    if avatar.cache_dir.is_dir():
        stored.save(path)
    if fit is None:
        log.info("No speaker adaptation: the template's own speech (with a face) is under %.0f s and shows no "
                 "clear timing of its mouth against its sound.", MIN_SPEECH_S)
        return None
    if len(fit.opening):
        log.info("Adapted the mouth to the template's speaker: %d frames of their own speech (their picture "
                 "was %+d frames off their sound).", len(fit.opening), fit.offset)
    else:
        log.info("The template's own speech is under %.0f s, or its mouth follows it too loosely, to adapt the "
                 "mouth's shape; only its timing is kept.", MIN_SPEECH_S)
    if fit.lag_s:
        log.info("The template's mouth moves %.0f ms %s its own sound; the output's mouth keeps that timing.",
                 1000 * abs(fit.lag_s), "behind" if fit.lag_s > 0 else "ahead of")
    elif not in_sync(fit.offset / avatar.fps):
        log.info("The template's picture is %.0f ms off its own sound, more than viewers accept as in sync; the "
                 "output's mouth follows the new speech on time instead.", 1000 * abs(fit.offset) / avatar.fps)
    return fit


def _output_fps(fps: float | None, info: MediaInfo) -> Fraction:
    if fps is not None:
        if not 1 <= fps <= 120:
            raise InputError(f"A frame rate of {fps} fps is not supported; choose between 1 and 120.")
        return Fraction(fps).limit_denominator(1001)
    return PHOTO_FPS if info.kind == "image" else info.fps


def _template_frames(info: MediaInfo, fps: Fraction, avatar: Avatar, indices: np.ndarray) -> Iterator[np.ndarray]:
    if info.kind == "image":
        picture = load_image(info)
        return (picture for _ in range(len(indices)))
    return TemplateFrames(info, fps, avatar.n_frames).frames_for(indices)


def face_box(landmarks: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Even-aligned box around the face with room below for a lowered jaw."""
    x0, y0 = landmarks.min(0)
    x1, y1 = landmarks.max(0)
    fw, fh = x1 - x0, y1 - y0
    x0, x1 = x0 - 0.2 * fw, x1 + 0.2 * fw
    y0, y1 = y0 - 0.1 * fh, y1 + 0.3 * fh
    x0 = max(0, int(x0) & ~1)
    y0 = max(0, int(y0) & ~1)
    x1 = min(width, (int(math.ceil(x1)) + 1) & ~1)
    y1 = min(height, (int(math.ceil(y1)) + 1) & ~1)
    return x0, y0, x1, y1


def _render_stream(source: Iterator[np.ndarray], indices: np.ndarray, avatar: Avatar, renderer,
                   writer: VideoWriter, cancel: threading.Event | None) -> Iterator[tuple[int, int]]:
    """Decode, render and encode as three stages: the first two are generators that run ahead in threads of
    their own (:func:`~lipdub.media.decode.prefetched`, at most QUEUE_CHUNKS chunks each), and this thread
    encodes. Yields (frames written, no-face frames of that chunk) after each chunk. An error in any stage
    reaches the caller, and stopping early stops them all."""
    decoded = prefetched(_chunks(source, len(indices)), QUEUE_CHUNKS)
    rendered = prefetched(_rendered(decoded, indices, avatar, renderer, cancel), QUEUE_CHUNKS)
    written = 0
    try:
        for frames, n_missing in rendered:
            for frame in frames:
                writer.write(frame)
            written += len(frames)
            yield written, n_missing
    finally:
        rendered.close()  # stops the render thread first: it is the one reading from the decoder
        decoded.close()


def _chunks(source: Iterator[np.ndarray], n_out: int) -> Iterator[list[np.ndarray]]:
    """The first ``n_out`` template frames, CHUNK at a time."""
    chunk: list[np.ndarray] = []
    taken = 0
    for frame in source:
        chunk.append(frame)
        taken += 1
        if len(chunk) == CHUNK or taken == n_out:
            yield chunk
            chunk = []
        if taken == n_out:
            return
    if chunk:
        yield chunk
    raise InputError(f"The template ended after {taken} of {n_out} frames; the video may be damaged.")


def _rendered(chunks: Iterator[list[np.ndarray]], indices: np.ndarray, avatar: Avatar, renderer,
              cancel: threading.Event | None) -> Iterator[tuple[list[OutputFrame], int]]:
    """Each chunk of template frames rendered: (output frames, how many had no face)."""
    start = 0
    for chunk in chunks:
        _check_cancel(cancel)
        frames, n_missing = _render_chunk(chunk, start, indices, avatar, renderer)
        start += len(frames)
        yield frames, n_missing


def _render_chunk(chunk: list[np.ndarray], start: int, indices: np.ndarray, avatar: Avatar,
                  renderer) -> tuple[list[OutputFrame], int]:
    height, width = chunk[0].shape[0] * 2 // 3, chunk[0].shape[1]
    tasks: list[FrameTask] = []
    out = [OutputFrame(frame) for frame in chunk]
    slots: list[int] = []
    missing = 0
    for j, frame in enumerate(chunk):
        out_index = start + j
        ti = int(indices[out_index])
        lm = avatar.landmarks[min(ti, avatar.n_frames - 1)]
        if np.isnan(lm[0, 0]):
            missing += 1
            continue
        box = face_box(lm, width, height)
        local = lm - np.array([box[0], box[1]], np.float32)
        # The crop is converted lazily: the engine may need only part of it.
        tasks.append(FrameTask(out_index, ti, None, box, local, frame=frame))
        slots.append(j)
    if tasks:
        for j, task, result in zip(slots, tasks, renderer.render(tasks)):
            if result.alpha is not None:
                ox, oy = task.box[0] + result.origin[0], task.box[1] + result.origin[1]
                h, w = result.alpha.shape[:2]
                out[j].overlays.append(Overlay((ox, oy, ox + w, oy + h), result.crop, result.alpha, result.i420))
    return out, missing


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("The job was cancelled.")


class _Reporter:
    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self._last = -1.0

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        if self.callback is None:
            return
        lo, hi = _STAGES.get(stage, (1.0, 1.0))
        overall = lo + (hi - lo) * min(max(fraction, 0.0), 1.0)
        if overall - self._last < 0.002 and fraction < 1.0 and stage != "done":
            return
        self._last = overall
        self.callback(Progress(stage, overall, message))


