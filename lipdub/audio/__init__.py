"""Speech analysis: audio -> per-frame mouth targets (``MouthTrack``) for every renderer."""

from lipdub.audio.analyse import analyse
from lipdub.audio.track import MouthTrack

__all__ = ["MouthTrack", "analyse"]
