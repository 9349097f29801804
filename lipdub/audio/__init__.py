"""Speech -> per-frame mouth targets (:class:`MouthTrack`)."""

from __future__ import annotations

from lipdub.audio.envelope import envelope_track
from lipdub.audio.track import MouthTrack
from lipdub.media.audio import AudioClip

__all__ = ["MouthTrack", "analyse"]


def analyse(clip: AudioClip, fps: float, n_frames: int | None = None, text: str | None = None) -> MouthTrack:
    return envelope_track(clip, fps, n_frames)
