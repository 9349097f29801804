"""Speech analysis: audio -> per-frame mouth targets (``MouthTrack``) for every renderer.

The stages are modules named after them: ``features`` (loudness, spectrum, formants), ``vad``,
``phones`` (pocketsphinx allphone and forced alignment), ``timing`` (phones -> mouth shapes over
time) and ``fusion``, whose :func:`analyse` runs them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lipdub.audio.fusion import analyse
    from lipdub.audio.track import MouthTrack

__all__ = ["MouthTrack", "analyse"]


def __getattr__(name: str) -> Any:
    # Lazy: the phone-recognition workers import lipdub.audio.phones and nothing else of this package,
    # and importing scipy.signal and the VAD for them would cost each worker about 1.3 s at start.
    if name == "analyse":
        from lipdub.audio.fusion import analyse

        return analyse
    if name == "MouthTrack":
        from lipdub.audio.track import MouthTrack

        return MouthTrack
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
