"""The one interface every mouth engine implements.

The pipeline hands an engine the face region ("crop") of each template frame at full resolution,
with the landmarks in crop coordinates. The engine returns a new crop (or a part of it) and an
alpha mask; the pipeline blends it into the frame, so pixels where alpha is 0 stay exactly the
template's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import cv2
import numpy as np

from lipdub.audio.track import MouthTrack
from lipdub.device import Device
from lipdub.face.avatar import Avatar
from lipdub.media.audio import AudioClip
from lipdub.media.frames import crop_bgr, crop_i420
from lipdub.media.probe import MediaInfo


class FrameTask:
    """One output frame to render.

    The crop is converted from the frame on first use: an engine that needs only part of it (the
    retrieval engine's lower face) reads that part with :meth:`region`, and the rest of a 1080p face
    box is never converted.
    """

    def __init__(self, out_index: int, template_index: int, crop: np.ndarray | None,
                 box: tuple[int, int, int, int], landmarks: np.ndarray | None,
                 frame: np.ndarray | None = None) -> None:
        if crop is None and frame is None:
            raise ValueError("a FrameTask needs its crop or the frame to cut it from")
        self.out_index = out_index  # index in the output video
        self.template_index = template_index  # which template frame it is drawn on
        self.box = box  # (x0, y0, x1, y1) of the crop in the frame, even-aligned
        self.landmarks = landmarks  # (478, 2) float32 in crop coordinates; None: no face on this frame
        self.frame = frame  # the packed I420 template frame (read only), or None when given a crop
        self._crop = crop

    @property
    def crop(self) -> np.ndarray:
        """BGR uint8, face region of the template frame at full resolution."""
        if self._crop is None:
            assert self.frame is not None
            self._crop = crop_bgr(self.frame, self.box)
        return self._crop

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the crop, without converting it."""
        if self._crop is not None:
            return self._crop.shape[0], self._crop.shape[1]
        x0, y0, x1, y1 = self.box
        return y1 - y0, x1 - x0

    def region(self, sub: tuple[int, int, int, int]) -> np.ndarray:
        """BGR uint8 of ``sub`` (x0, y0, x1, y1 in crop coordinates, even-aligned) of the crop."""
        x0, y0, x1, y1 = sub
        if self._crop is not None or self.frame is None:
            return self.crop[y0:y1, x0:x1]
        bx, by = self.box[0], self.box[1]
        return crop_bgr(self.frame, (bx + x0, by + y0, bx + x1, by + y1))

    def region_i420(self, sub: tuple[int, int, int, int]) -> np.ndarray:
        """Packed I420 of ``sub`` (even-aligned, crop coordinates): the frame's own bytes, no conversion."""
        x0, y0, x1, y1 = sub
        if self._crop is not None or self.frame is None:
            return cv2.cvtColor(np.ascontiguousarray(self.crop[y0:y1, x0:x1]), cv2.COLOR_BGR2YUV_I420)
        bx, by = self.box[0], self.box[1]
        return crop_i420(self.frame, (bx + x0, by + y0, bx + x1, by + y1))


@dataclass
class RenderedCrop:
    """An engine's answer for one :class:`FrameTask`.

    ``crop`` and ``alpha`` may cover only part of the task's crop, starting at ``origin`` (x, y,
    even) in crop coordinates: an engine that changes a small region returns just that region.
    """

    crop: np.ndarray  # BGR uint8 (h, w, 3), or packed I420 (h * 3 / 2, w) with ``i420``: the task's crop
    # or the part of it at ``origin``
    alpha: np.ndarray | None  # float32 (h, w), in [0, 1]; None: leave the frame untouched
    origin: tuple[int, int] = (0, 0)
    i420: bool = False  # ``crop`` is in the frame's own format: blended without a colour conversion

    @classmethod
    def untouched(cls) -> RenderedCrop:
        """Leave the frame as it is (no crop is converted for it)."""
        return cls(np.zeros((0, 0, 3), np.uint8), None)


@dataclass
class RenderContext:
    """Everything known before the first frame is rendered."""

    avatar: Avatar
    mouth: MouthTrack  # one entry per output frame
    audio: AudioClip | None  # 16 kHz mono speech, for prepare() only: released before the frames are rendered
    fps: float
    template_indices: np.ndarray  # template frame index of every output frame
    options: dict = field(default_factory=dict)
    template: MediaInfo | None = None  # the template file, for engines that read its frames (retrieval bank)

    @property
    def n_frames(self) -> int:
        return len(self.template_indices)


class Renderer(ABC):
    """A mouth synthesis engine. One instance renders one job."""

    name: ClassVar[str]

    def __init__(self, device: Device, **options) -> None:
        self.device = device
        self.options = options
        self.frames_on: dict[str, int] = {}  # frames rendered, by device: an engine that falls back says so

    def count_frames(self, n: int, device: Device) -> None:
        """Record that ``n`` frames were rendered on ``device`` (for the result and the job record)."""
        if n:
            key = device.describe()
            self.frames_on[key] = self.frames_on.get(key, 0) + n

    @classmethod
    def suits(cls, avatar: Avatar) -> bool:
        """Whether ``--engine auto`` should pick this engine for ``avatar``."""
        return True

    def prepare(self, ctx: RenderContext) -> None:
        """Called once before rendering; engines precompute plans and load weights here. ``ctx.audio``
        is there for this call only: the pipeline lets go of it afterwards."""
        self.ctx = ctx

    @abstractmethod
    def render(self, tasks: list[FrameTask]) -> list[RenderedCrop]:
        """Render a batch of consecutive output frames."""

    def close(self) -> None:  # noqa: B027 - optional: most engines hold nothing open
        """Let go of what rendering held open (files, device memory); the job is over."""
