"""MouthTrack: what the mouth should do on every output frame. The contract between speech
analysis and every renderer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class MouthTrack:
    """Per-frame mouth targets at the video's frame rate.

    Ranges (all float32 arrays of one value per frame, except ``speech``):
    - ``open``: 0 = lips together, 1 = wide open ("ah"); lip gap about 0.32 x inter-ocular distance.
    - ``width``: 0 = relaxed, 1 = fully spread ("ee"); negative values (down to -1) = narrowed.
    - ``round``: 0 = unrounded, 1 = fully rounded and protruded ("oo", "w").
    - ``closed``: 0..1, how firmly the lips are pressed (1 on p/b/m closures).
    - ``speech``: bool, voice activity.
    """

    fps: float
    open: np.ndarray
    width: np.ndarray
    round: np.ndarray
    closed: np.ndarray
    speech: np.ndarray
    # (frames, H) what the mouth model made of the speech on each frame, for speaker adaptation
    # (lipdub.audio.adapt); None where the track did not come from the model. Not serialised.
    embedding: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.open)
        for name in ("width", "round", "closed", "speech"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"MouthTrack.{name} has {len(getattr(self, name))} frames, open has {n}")

    def __len__(self) -> int:
        return len(self.open)

    @property
    def times(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.float64) / self.fps

    @classmethod
    def silent(cls, n_frames: int, fps: float) -> MouthTrack:
        z = np.zeros(n_frames, np.float32)
        return cls(fps, z.copy(), z.copy(), z.copy(), z.copy(), np.zeros(n_frames, bool))

    def fit_length(self, n_frames: int) -> MouthTrack:
        """Cut or pad (with a resting mouth) to exactly ``n_frames``."""
        n = len(self)
        if n == n_frames:
            return self
        if n > n_frames:
            emb = None if self.embedding is None else self.embedding[:n_frames]
            return MouthTrack(self.fps, *(getattr(self, k)[:n_frames] for k in _KEYS), embedding=emb)
        pad = n_frames - n
        arrays = [np.concatenate([getattr(self, k), np.zeros(pad, getattr(self, k).dtype)]) for k in _KEYS]
        # The padded frames are silent, so speaker adaptation never reads their (zero) embedding.
        emb = None if self.embedding is None else np.concatenate(
            [self.embedding, np.zeros((pad, self.embedding.shape[1]), self.embedding.dtype)])
        return MouthTrack(self.fps, *arrays, embedding=emb)

    def delayed(self, frames: int) -> MouthTrack:
        """The same track ``frames`` later (earlier when negative), with a resting mouth where it has
        nothing to show: before the sound starts, or after it ends."""
        if frames == 0 or not len(self):
            return self
        n, k = len(self), min(abs(frames), len(self))

        def move(a: np.ndarray) -> np.ndarray:
            out = np.zeros_like(a)
            if frames > 0:
                out[k:] = a[: n - k]
            else:
                out[: n - k] = a[k:]
            return out

        emb = None if self.embedding is None else move(self.embedding)
        return MouthTrack(self.fps, *(move(getattr(self, key)) for key in _KEYS), embedding=emb)

    def to_dict(self) -> dict:
        d: dict = {"fps": float(self.fps)}
        for k in _KEYS:
            a = getattr(self, k)
            d[k] = a.astype(bool).tolist() if k == "speech" else np.round(a.astype(float), 4).tolist()
        return d

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, d: dict) -> MouthTrack:
        arrays = [np.asarray(d[k], bool if k == "speech" else np.float32) for k in _KEYS]
        return cls(float(d["fps"]), *arrays)


_KEYS = ("open", "width", "round", "closed", "speech")
