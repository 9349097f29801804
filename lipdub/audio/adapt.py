"""Speaker adaptation: a recorded avatar carries its speaker's own speech, so the template itself shows
how this person's mouth moves with their sounds.

When a template with speech is first used, ``lipdub.pipeline.speaker_fit`` runs the speech analysis and
the mouth model on the template's own sound, and :func:`fit_from_track` pairs each speaking frame's model
embedding with the opening the face mesh measured on that frame (normalised like the model's training labels, and moved by the
sound/picture offset of the recording, so a badly synced file teaches no delay). :func:`adapt` then
blends every output frame's generic opening with the mean opening of the template's nearest frames in
embedding space. Cross-validated on ../shared/corpus (fit on each held-out speaker's first half, scored
on the second; docs/mouth_model.md): r 0.518 -> 0.528; a refitted last layer reached 0.530 at best.

The same pairing shows the recording's own timing: how many frames this template's mouth follows its
sound late (or early). Where that delay is clear, the output's mouth keeps it, so the avatar speaks
with the timing its own recording has, as long as viewers would accept that timing as in sync.
Cross-validated on the corpus against the mouths as recorded (a 2.5-4 s window of each held-out clip
fits, the rest of the clip scores): r 0.365 -> 0.381-0.397, no clip worse.
Against offset-corrected mouths it cannot gain, which is why the pairing above uses the corrected one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipdub.audio.track import MouthTrack

log = logging.getLogger(__name__)

VERSION = 2
NEIGHBOURS = 20
WEIGHT = 0.4  # share of the speaker's own openings in the result (0.3-0.5 cross-validate alike)
MIN_SPEECH_S = 4.0  # less of the speaker's own speech than this is too little to learn from
MIN_LAG_SPEECH_S = 2.0  # the delay needs less: one number, not a mapping
MAX_OFFSET_FRAMES = 10
# Before the output is moved, the delay must stand out: r there at least LAG_MIN_R and LAG_EVIDENCE above
# r at none. Unrelated sound (a voice-over, music) pairs with a mouth at some delay by chance: corpus
# mouths paired with other speakers' speech were given a delay 75% of the time by the second rule alone,
# 3% (4 s windows) to 15% (2.5 s) by both; own speech keeps the gain (docs/mouth_model.md).
LAG_EVIDENCE = 0.1
LAG_MIN_R = 0.5
# A delay is kept only within what viewers accept as in sync (ITU-R BT.1359 acceptability: sound up to
# 185 ms after the picture, 90 ms before it): a speaker's own habit. Beyond, the recording itself is out
# of sync (old film, a bad re-encode), and copying that would make the output look dubbed.
MOUTH_AHEAD_MAX_S = 0.185
MOUTH_BEHIND_MAX_S = 0.090
# Below this r (at the best delay) the template's mouth hardly follows its sound: a voice-over, music,
# or a speaker the model reads badly. Its frames then teach nothing about this speaker. (Every corpus
# clip's own first half reaches 0.4, so this costs the cross-validated gain nothing.)
SHAPE_MIN_R = 0.3
BLOCK = 512  # output frames searched at once: memory O(BLOCK x template frames)


@dataclass
class SpeakerFit:
    """The template's speaking frames: what the model made of their sound, and their real opening."""

    embedding: np.ndarray  # (n, H) float32; n = 0 where the template has too little speech to pair
    opening: np.ndarray  # (n,) float32, the speaker's 5th..95th percentile of the inner-lip gap as 0..1
    offset: int  # frames the template's picture was found late against its sound (corrected)
    lag_s: float = 0.0  # the delay the output keeps: offset / fps where it was clear, else 0

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, embedding=self.embedding, opening=self.opening, offset=np.int64(self.offset),
                 lag_s=np.float64(self.lag_s))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SpeakerFit:
        with np.load(path) as z:
            return cls(z["embedding"], z["opening"], int(z["offset"]), float(z["lag_s"]))

    @property
    def empty(self) -> bool:
        return not len(self.opening) and self.lag_s == 0.0


def cache_path(cache_dir: Path) -> Path:
    return cache_dir / f"speaker_v{VERSION}.npz"


def normalised_opening(gap: np.ndarray, found: np.ndarray) -> np.ndarray:
    """The inner-lip gap (over the eye distance) on the model's scale: this speaker's 5th percentile 0,
    their 95th 1 (NaN where no face was found)."""
    p5, p95 = np.percentile(gap[found], [5, 95])
    return np.where(found, (gap - p5) / max(p95 - p5, 1e-6), np.nan).astype(np.float32)


def lagged_r(predicted: np.ndarray, real: np.ndarray, lag: int) -> float:
    """Pearson r of predicted[i] with real[i + lag]; -1 where too few frames overlap to tell."""
    a, b = (predicted[: len(predicted) - lag], real[lag:]) if lag >= 0 else (predicted[-lag:], real[:lag])
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 20 or a[ok].std() < 1e-6 or b[ok].std() < 1e-6:
        return -1.0
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def best_offset(predicted: np.ndarray, real: np.ndarray, max_lag: int = MAX_OFFSET_FRAMES) -> int:
    """The lag (frames; positive: the picture is late) at which ``real`` follows ``predicted`` best."""
    return max(range(-max_lag, max_lag + 1), key=lambda lag: lagged_r(predicted, real, lag))


def in_sync(delay_s: float) -> bool:
    """Whether a mouth this many seconds behind its sound (ahead: negative) still looks in sync."""
    return -MOUTH_AHEAD_MAX_S <= delay_s <= MOUTH_BEHIND_MAX_S


def kept_delay(predicted: np.ndarray, real: np.ndarray, offset: int, fps: float) -> int:
    """``offset`` where the real mouth follows the prediction clearly and strongly best there, and the
    delay is one viewers accept as in sync; else 0."""
    if not in_sync(offset / fps):
        return 0
    r = lagged_r(predicted, real, offset)
    return offset if r >= LAG_MIN_R and r - lagged_r(predicted, real, 0) >= LAG_EVIDENCE else 0


def fit_from_track(track: MouthTrack, gap: np.ndarray, found: np.ndarray) -> SpeakerFit | None:
    """The fit from the model's track of the template's own speech and the gaps measured on its frames
    (both at the template's frame rate); None when there is too little speech with a face to learn from.
    Between MIN_LAG_SPEECH_S and MIN_SPEECH_S of speech, only the delay is kept."""
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
    speaking = int((track.speech[:n] & found[:n]).sum())
    enough = speaking >= MIN_LAG_SPEECH_S * track.fps
    lag_s = kept_delay(track.open[:n], real, offset, track.fps) / track.fps if enough else 0.0
    if keep.sum() < MIN_SPEECH_S * track.fps or lagged_r(track.open[:n], real, offset) < SHAPE_MIN_R:
        if lag_s == 0.0:
            return None
        width = track.embedding.shape[1]
        return SpeakerFit(np.zeros((0, width), np.float32), np.zeros(0, np.float32), offset, lag_s)
    return SpeakerFit(track.embedding[:n][keep].astype(np.float32), moved[keep], offset, lag_s)


def adapt(track: MouthTrack, fit: SpeakerFit, neighbours: int = NEIGHBOURS, weight: float = WEIGHT) -> MouthTrack:
    """The track with its opening, while speaking, partly replaced by the mean real opening of the
    template's ``neighbours`` frames whose speech the model took for the most alike, and delayed as the
    template's own mouth is against its sound."""
    delay = round(fit.lag_s * track.fps)
    if track.embedding is None or len(fit.opening) < neighbours or not len(track):
        return track.delayed(delay)
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
                      track.speech, embedding=track.embedding).delayed(delay)
