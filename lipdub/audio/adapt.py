"""Speaker adaptation: a recorded avatar carries its speaker's own speech, so the template itself shows
how this person's mouth moves with their sounds.

When a template with speech is first used, ``lipdub.pipeline.speaker_fit`` runs the speech analysis and
the mouth model on the template's own sound, and :func:`fit_from_track` pairs each speaking frame's model
embedding with the opening the face mesh measured on that frame (normalised like the model's training labels, and moved by the
sound/picture offset of the recording, so a badly synced file teaches no delay). :func:`adapt` then
blends every output frame's generic opening with the mean opening of the template's nearest frames in
embedding space. Cross-validated on ../shared/corpus (fit on each held-out speaker's first half, scored
on the second; docs/mouth_model.md): r 0.518 -> 0.528; a refitted last layer reached 0.530 at best, a
fitted lag lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipdub.audio.track import MouthTrack

log = logging.getLogger(__name__)

VERSION = 1
NEIGHBOURS = 20
WEIGHT = 0.4  # share of the speaker's own openings in the result (0.3-0.5 cross-validate alike)
MIN_SPEECH_S = 4.0  # less of the speaker's own speech than this is too little to learn from
MAX_OFFSET_FRAMES = 10
BLOCK = 512  # output frames searched at once: memory O(BLOCK x template frames)


@dataclass
class SpeakerFit:
    """The template's speaking frames: what the model made of their sound, and their real opening."""

    embedding: np.ndarray  # (n, H) float32
    opening: np.ndarray  # (n,) float32, the speaker's 5th..95th percentile of the inner-lip gap as 0..1
    offset: int  # frames the template's picture was found late against its sound (corrected)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, embedding=self.embedding, opening=self.opening, offset=np.int64(self.offset))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SpeakerFit:
        with np.load(path) as z:
            return cls(z["embedding"], z["opening"], int(z["offset"]))


def cache_path(cache_dir: Path) -> Path:
    return cache_dir / f"speaker_v{VERSION}.npz"


def normalised_opening(gap: np.ndarray, found: np.ndarray) -> np.ndarray:
    """The inner-lip gap (over the eye distance) on the model's scale: this speaker's 5th percentile 0,
    their 95th 1 (NaN where no face was found)."""
    p5, p95 = np.percentile(gap[found], [5, 95])
    return np.where(found, (gap - p5) / max(p95 - p5, 1e-6), np.nan).astype(np.float32)


def best_offset(predicted: np.ndarray, real: np.ndarray, max_lag: int = MAX_OFFSET_FRAMES) -> int:
    """The lag (frames; positive: the picture is late) at which ``real`` follows ``predicted`` best."""
    def r(lag: int) -> float:
        a, b = (predicted[: len(predicted) - lag], real[lag:]) if lag >= 0 else (predicted[-lag:], real[:lag])
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 20 or a[ok].std() < 1e-6 or b[ok].std() < 1e-6:
            return -1.0
        return float(np.corrcoef(a[ok], b[ok])[0, 1])

    return max(range(-max_lag, max_lag + 1), key=r)


def fit_from_track(track: MouthTrack, gap: np.ndarray, found: np.ndarray) -> SpeakerFit | None:
    """The fit from the model's track of the template's own speech and the gaps measured on its frames
    (both at the template's frame rate); None when there is too little speech with a face to learn from."""
    n = min(len(track), len(gap))
    if track.embedding is None or n == 0 or found[:n].sum() < 2:
        return None
    real = normalised_opening(gap[:n], found[:n])
    offset = best_offset(track.open[:n], real)
    moved = np.full(n, np.nan, np.float32)
    if offset >= 0:
        moved[: n - offset] = real[offset:]
    else:
        moved[-offset:] = real[:offset]
    keep = track.speech[:n] & np.isfinite(moved)
    if keep.sum() < MIN_SPEECH_S * track.fps:
        return None
    return SpeakerFit(track.embedding[:n][keep].astype(np.float32), moved[keep], offset)


def adapt(track: MouthTrack, fit: SpeakerFit, neighbours: int = NEIGHBOURS, weight: float = WEIGHT) -> MouthTrack:
    """The track with its opening, while speaking, partly replaced by the mean real opening of the
    template's ``neighbours`` frames whose speech the model took for the most alike."""
    if track.embedding is None or len(fit.opening) < neighbours or not len(track):
        return track
    ref = fit.embedding.astype(np.float32)
    ref_sq = (ref * ref).sum(1)
    own = np.empty(len(track), np.float32)
    for a in range(0, len(track), BLOCK):
        q = track.embedding[a: a + BLOCK].astype(np.float32)
        d = ref_sq[None, :] - 2.0 * q @ ref.T  # + |q|^2, the same for every candidate
        idx = np.argpartition(d, neighbours - 1, axis=1)[:, :neighbours]
        own[a: a + BLOCK] = fit.opening[idx].mean(1)
    blended = (1.0 - weight) * track.open + weight * np.clip(own, 0.0, 1.0) * (1.0 - track.closed)
    opening = np.where(track.speech, blended, track.open).astype(np.float32)
    return MouthTrack(track.fps, np.clip(opening, 0.0, 1.0), track.width, track.round, track.closed,
                      track.speech, embedding=track.embedding)
