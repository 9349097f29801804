"""Template decoding: constant-rate, upright, even-sized I420 frames, streamed lazily."""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Iterator
from fractions import Fraction
from typing import TypeVar

import av
import numpy as np

from lipdub.errors import InputError
from lipdub.media.frames import pack, planes, rotate
from lipdub.media.probe import UNSPECIFIED, MediaInfo

log = logging.getLogger(__name__)

T = TypeVar("T")

# Above this many decoded bytes a template is re-decoded for backward (ping-pong) runs instead of kept.
TEMPLATE_MEMORY_BUDGET = 400 * 1024 * 1024
BACKWARD_CHUNK = 24  # frames per backward run at least; more when they are small (see backward_chunk)
BACKWARD_MEMORY = 64 * 1024 * 1024  # each backward step decodes from a keyframe: fewer, larger steps


def output_size(info: MediaInfo) -> tuple[int, int]:
    """Even display size (H.264 in yuv420p needs even dimensions)."""
    return info.width - info.width % 2, info.height - info.height % 2


BT601 = 6  # AVCOL_SPC_SMPTE170M: the matrix FFmpeg converts RGB pictures to YUV with
RGB = 0  # AVCOL_SPC_RGB


def yuv_colour(info: MediaInfo) -> tuple[int, int, int]:
    """Colour tags (matrix, primaries, transfer) of the I420 frames decoded from ``info``: a video's own
    (unspecified stays unspecified), and BT.601's matrix for photos and RGB video, which FFmpeg
    converts with it."""
    matrix, primaries, transfer = info.colour
    if matrix == RGB or (info.kind == "image" and matrix == UNSPECIFIED):
        matrix = BT601
    return matrix, primaries, transfer


def is_full_range(frame: av.VideoFrame) -> bool:
    """YUV samples spanning 0-255 (JPEG range) rather than the video range 16-235."""
    name = frame.format.name
    return name.startswith("yuv") and (name.startswith("yuvj") or frame.color_range == 2)  # AVCOL_RANGE_JPEG


def _to_i420(frame: av.VideoFrame, info: MediaInfo) -> np.ndarray:
    # Reformat in the stored orientation, then turn: the stored width/height are pre-rotation.
    w, h = output_size(info)
    sw, sh = (h, w) if info.rotation in (90, 270) else (w, h)
    full = is_full_range(frame)
    if full or frame.format.name != "yuv420p" or frame.width != sw or frame.height != sh:
        # Full-range YUV (JPEG photos, some phone and screen recordings) is squeezed into the video range
        # the output is tagged with: left as it is, blacks would come out crushed and highlights blown.
        frame = frame.reformat(width=sw, height=sh, format="yuv420p", src_color_range="JPEG" if full else None,
                               dst_color_range="MPEG")
    picture = frame.to_ndarray(format="yuv420p")
    if info.mirror:
        picture = pack(*(p[:, ::-1] for p in planes(picture)))
    return rotate(picture, info.rotation)


# What shows through a photo's transparent parts: mid grey, neither black nor white, so the face's
# outline stays where it is for the face mesh and nothing stands out in the video.
TRANSPARENT_BACKGROUND = (128, 128, 128)


def _load_with_pillow(info: MediaInfo) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(info.path) as im:
            im.seek(0)  # an animated picture's first frame
            rgba = np.asarray(im.convert("RGBA"))
    except (OSError, ValueError) as e:
        raise InputError(f"Could not decode the picture {info.path.name}; the file may be damaged ({e}).") from e
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    if (alpha < 1.0).any():
        log.info("%s has transparent parts; they are shown over a neutral grey background.", info.path.name)
    grey = np.float32(TRANSPARENT_BACKGROUND)
    rgb = np.round(rgba[..., :3] * alpha + grey * (1.0 - alpha)).astype(np.uint8)
    return _to_i420(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"), info)


def load_image(info: MediaInfo) -> np.ndarray:
    """The single picture of an image file as an I420 frame."""
    if info.pillow_still:
        return _load_with_pillow(info)
    try:
        with av.open(str(info.path)) as c:
            for frame in c.decode(video=0):
                return _to_i420(frame, info)
    except av.FFmpegError as e:
        raise InputError(f"Could not decode the picture {info.path.name}; the file may be damaged ({e}).") from e
    raise InputError(f"{info.path.name} holds no picture.")


class _Pending:
    """A decoded frame converted only if it is delivered: frames decoded after a seek, before the
    first wanted one, are never converted (reversed playback of a long template decodes many)."""

    def __init__(self, frame: av.VideoFrame, info: MediaInfo) -> None:
        self.frame, self.info = frame, info
        self._array: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = _to_i420(self.frame, self.info)
        return self._array


class VideoDecoder:
    """Decodes a template video as constant-frame-rate I420 frames in display orientation.

    Variable-frame-rate input is resampled to ``fps`` (repeating or dropping frames), the way a
    player shows it.
    """

    def __init__(self, info: MediaInfo, fps: Fraction) -> None:
        self.info = info
        self.fps = fps
        self._first_time: float | None = None

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (slot index, frame) for constant-rate slots ``start <= k < stop``."""
        period = 1.0 / float(self.fps)
        half = period / 2
        try:
            with av.open(str(self.info.path), metadata_errors="ignore") as c:
                vs = c.streams.video[0]
                vs.thread_type = "AUTO"
                if start > 0 and self._first_time is not None:
                    target = self._first_time + start * period - period
                    c.seek(max(0, int(target / vs.time_base)), stream=vs, backward=True, any_frame=False)
                k: int | None = None
                prev: _Pending | None = None
                prev_t = 0.0
                for frame in self._decode(c, vs):
                    t = frame.time if frame.time is not None else (prev_t + period if prev is not None else 0.0)
                    if self._first_time is None:
                        self._first_time = t
                    rel = t - self._first_time
                    if k is None:
                        k = max(0, round(rel / period))
                    while prev is not None and k * period + half < rel:
                        if stop is not None and k >= stop:
                            return
                        if k >= start:
                            yield k, prev.array()
                        k += 1
                    prev = _Pending(frame, self.info)
                    prev_t = t
                if prev is not None and k is not None:
                    end = prev_t - self._first_time + period
                    while k * period + half < end or k < start:
                        if stop is not None and k >= stop:
                            return
                        if k >= start:
                            yield k, prev.array()
                        k += 1
        except av.FFmpegError as e:
            raise InputError(f"Could not decode {self.info.path.name}; the video may be damaged ({e}).") from e

    def _decode(self, c: av.container.InputContainer, vs: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
        bad = 0
        for packet in c.demux(vs):
            try:
                yield from packet.decode()
            except av.FFmpegError as e:
                bad += 1  # damaged packets are skipped like players do, but a wholly broken file fails
                if bad > 50:
                    raise
                log.debug("Skipping an undecodable video packet: %s", e)


def put_unless_stopped(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` on the bounded queue ``q``, waiting for room until ``stop`` is set; False if it was."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def prefetched(items: Iterator[T], depth: int = 4) -> Iterator[T]:
    """``items``, produced by a thread of their own up to ``depth`` ahead. PyAV releases the GIL while
    it decodes, so the decoder's own work and the Python around it (frame conversion, timestamps)
    overlap what the consumer does with each frame instead of alternating with it. Errors reach the
    consumer; a consumer that stops early stops the producer."""
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                if not put_unless_stopped(ready, item, stop):
                    return
            put_unless_stopped(ready, end, stop)
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer
            put_unless_stopped(ready, e, stop)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's own cleanup (closing its file) runs here, in its thread

    worker = threading.Thread(target=produce, name="lipdub-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=10)


def pingpong_indices(n_out: int, n_template: int) -> np.ndarray:
    """Template frame for every output frame: forward, then backward, and so on (no jump cut)."""
    if n_template <= 1:
        return np.zeros(n_out, np.int64)
    period = 2 * n_template - 2
    r = np.arange(n_out) % period
    return np.where(r < n_template, r, period - r).astype(np.int64)


class TemplateFrames:
    """Serves template frames in any ping-pong order with bounded memory.

    A small template is kept decoded in memory; a large one is re-decoded: forward runs stream,
    backward runs are decoded in short chunks and reversed.
    """

    def __init__(self, info: MediaInfo, fps: Fraction, n_frames: int) -> None:
        self.info = info
        self.n_frames = n_frames
        self.decoder = VideoDecoder(info, fps)
        w, h = output_size(info)
        self._keep_all = n_frames * w * h * 3 // 2 <= TEMPLATE_MEMORY_BUDGET
        self._all: list[np.ndarray] | None = None

    @property
    def backward_chunk(self) -> int:
        """Frames decoded per step of a backward run: each step restarts from a keyframe, so as many as
        BACKWARD_MEMORY holds (24 at 1080p and above, 48 at 720p, 86 at 540p): a
        constant, so memory does not depend on how long the output is."""
        w, h = output_size(self.info)
        return max(BACKWARD_CHUNK, BACKWARD_MEMORY // max(w * h * 3 // 2, 1))

    def frames_for(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        """Yield the template frame for each entry of ``indices`` (a ping-pong sequence)."""
        i = 0
        n = len(indices)
        while i < n:
            j = i + 1
            step = 1 if (j < n and indices[j] > indices[i]) else -1
            while j < n and indices[j] - indices[j - 1] == step:
                j += 1
            yield from self._run(int(indices[i]), int(indices[j - 1]), step)
            i = j

    def _run(self, a: int, b: int, step: int) -> Iterator[np.ndarray]:
        if self._all is not None:
            for k in range(a, b + step, step):
                yield self._all[min(k, len(self._all) - 1)]
            return
        if step == 1:
            keep = self._keep_all and a == 0
            kept: list[np.ndarray] = []
            last: np.ndarray | None = None
            count = 0
            for _, f in self.decoder.frames(a, b + 1):
                last, count = f, count + 1
                if keep:
                    kept.append(f)
                yield f
            if last is None:
                raise InputError(f"Could not read frame {a} of {self.info.path.name}; the video may be damaged.")
            for _ in range(b - a + 1 - count):  # a stream that ends early: hold its last frame
                if keep:
                    kept.append(last)
                yield last
            if keep and len(kept) >= self.n_frames:
                self._all = kept
            return
        step_frames = self.backward_chunk
        for end in range(a, b - 1, -step_frames):
            begin = max(b, end - step_frames + 1)
            chunk = [f for _, f in self.decoder.frames(begin, end + 1)]
            if not chunk:
                raise InputError(f"Could not re-read frames {begin}-{end} of {self.info.path.name}.")
            chunk += [chunk[-1]] * (end + 1 - begin - len(chunk))
            while chunk:  # newest first, each let go once handed on: not two chunks alive at a time
                yield chunk.pop()


def count_frames(duration: float, fps: Fraction) -> int:
    return max(1, math.ceil(duration * float(fps) - 1e-6))
