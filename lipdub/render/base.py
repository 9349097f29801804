"""The one interface every mouth engine implements.

The pipeline hands an engine the face region ("crop") of each template frame at full resolution,
with the landmarks in crop coordinates. The engine returns a new crop and an alpha mask; the
pipeline blends it into the frame, so pixels where alpha is 0 stay exactly the template's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from lipdub.audio.track import MouthTrack
from lipdub.device import Device
from lipdub.face.avatar import Avatar
from lipdub.media.audio import AudioClip
from lipdub.media.probe import MediaInfo


@dataclass
class FrameTask:
    """One output frame to render."""

    out_index: int  # index in the output video
    template_index: int  # which template frame it is drawn on
    crop: np.ndarray  # BGR uint8, face region of the template frame at full resolution
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the crop in the frame
    landmarks: np.ndarray | None  # (478, 2) float32 in crop coordinates; None: no face on this frame


@dataclass
class RenderedCrop:
    """An engine's answer for one :class:`FrameTask`."""

    crop: np.ndarray  # BGR uint8, same shape as the task's crop
    alpha: np.ndarray | None  # float32 (h, w) in [0, 1]; None: leave the frame untouched


@dataclass
class RenderContext:
    """Everything known before the first frame is rendered."""

    avatar: Avatar
    mouth: MouthTrack  # one entry per output frame
    audio: AudioClip  # 16 kHz mono speech
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

    @classmethod
    def suits(cls, avatar: Avatar) -> bool:
        """Whether ``--engine auto`` should pick this engine for ``avatar``."""
        return True

    def prepare(self, ctx: RenderContext) -> None:
        """Called once before rendering; engines precompute plans and load weights here."""
        self.ctx = ctx

    @abstractmethod
    def render(self, tasks: list[FrameTask]) -> list[RenderedCrop]:
        """Render a batch of consecutive output frames."""
