"""Avatar: the cached analysis of a template (video or photo), keyed by its content hash."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Bump when the analysis changes, so old caches are not reused.
ANALYSIS_VERSION = 8  # 2: zero-phase landmark smoothing; 3: mesh window shrunk to 640 px; 4: one-face tracker;
# 5: the window stays put when a close-up face nears the frame's edges; 6: full-range input decoded to video range;
# 7: no smoothing across a jump to another face, and the speaker taken back when they reappear; 8: small faces
# found with the full-range detector


@dataclass
class Avatar:
    """Per-frame face geometry of a template, in display orientation and full-resolution pixels.

    ``landmarks[i]`` holds the 478 mediapipe face-mesh points (x, y) of the main face on template
    frame ``i`` (temporally smoothed), or NaN where no face was found.
    """

    key: str  # content hash of the template file
    kind: str  # "video" or "image"
    width: int
    height: int
    fps: float
    landmarks: np.ndarray  # (n_frames, 478, 2) float32
    cache_dir: Path  # engines keep their own per-avatar data here (mouth bank, ...)
    source: str = ""  # the template's file name when it was analysed (for people reading the cache)

    @property
    def n_frames(self) -> int:
        return len(self.landmarks)

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.landmarks[:, 0, 0])

    def save(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / "analysis.tmp.npz"
        np.savez_compressed(tmp, landmarks=self.landmarks)
        os.replace(tmp, self.cache_dir / "analysis.npz")
        meta = dict(key=self.key, kind=self.kind, width=self.width, height=self.height, fps=self.fps,
                    version=ANALYSIS_VERSION, source=self.source)
        (self.cache_dir / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, cache_dir: Path) -> Avatar | None:
        """The cached avatar in ``cache_dir``, or None when absent, stale or unreadable."""
        try:
            meta = json.loads((cache_dir / "meta.json").read_text())
            if meta.get("version") != ANALYSIS_VERSION:
                return None
            with np.load(cache_dir / "analysis.npz") as z:
                landmarks = z["landmarks"].astype(np.float32)
        except (OSError, ValueError, KeyError):
            return None
        return cls(meta["key"], meta["kind"], int(meta["width"]), int(meta["height"]), float(meta["fps"]),
                   landmarks, cache_dir, str(meta.get("source", "")))


def default_cache_root() -> Path:
    env = os.environ.get("LIPDUB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lipdub"


def content_hash(path: str | os.PathLike, extra: str = "") -> str:
    """SHA-256 of the file's bytes (and of ``extra`` settings), streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    h.update(extra.encode())
    return h.hexdigest()
