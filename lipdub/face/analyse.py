"""Template analysis: the main face's landmarks on every frame, cached on disk by content hash."""

from __future__ import annotations

import logging
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipdub.errors import NoFaceError
from lipdub.face.avatar import ANALYSIS_VERSION, Avatar, content_hash, default_cache_root
from lipdub.face.landmarks import N_POINTS, FaceMesh
from lipdub.face.tracking import OneEuroFilter, choose_main_face
from lipdub.media.decode import VideoDecoder, load_image, output_size
from lipdub.media.frames import to_rgb
from lipdub.media.probe import MediaInfo

log = logging.getLogger(__name__)

# Face mesh runs on a copy no larger than this: its own network input is 192-256 px, so more only costs time.
ANALYSIS_MAX_SIDE = 1280


def analyse_template(info: MediaInfo, fps: Fraction, cache_root: Path | None = None,
                     progress: Callable[[float], None] | None = None) -> Avatar:
    """The :class:`Avatar` of a template, from the cache when this exact file was analysed before."""
    key = content_hash(info.path, extra=f"v{ANALYSIS_VERSION}:{fps}:{info.rotation}")
    cache_dir = (cache_root or default_cache_root()) / "avatars" / key[:24]
    cached = Avatar.load(cache_dir)
    if cached is not None and cached.key == key:
        log.info("Template analysis found in the avatar cache (%d frames).", cached.n_frames)
        return cached
    w, h = output_size(info)
    if info.kind == "image":
        landmarks = _analyse_image(info)
        avatar = Avatar(key, "image", w, h, float(fps), landmarks, cache_dir)
    else:
        landmarks = _analyse_video(info, fps, progress)
        avatar = Avatar(key, "video", w, h, float(fps), landmarks, cache_dir)
    found = avatar.found
    if not found.any():
        raise NoFaceError(f"No face was found in {info.path.name}; use a video or photo where a face is clearly "
                          "visible and faces the camera.")
    if not found.all():
        log.warning("No face on %d of %d template frames; those frames pass through unchanged.",
                    int((~found).sum()), len(found))
    avatar.save()
    return avatar


def _analyse_image(info: MediaInfo) -> np.ndarray:
    frame = load_image(info)
    rgb, s = to_rgb(frame, ANALYSIS_MAX_SIDE)
    with FaceMesh(track=False) as mesh:
        faces = mesh.detect(rgb)
        if not faces:
            # Small photos: the detector likes faces of 100+ px; try once on an upscaled copy.
            import cv2

            big = cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
            faces = [f / 2 for f in mesh.detect(big)]
    main = choose_main_face(faces, (rgb.shape[1], rgb.shape[0]), None)
    out = np.full((1, N_POINTS, 2), np.nan, np.float32)
    if main is not None:
        out[0] = main / s
    return out


def _analyse_video(info: MediaInfo, fps: Fraction, progress: Callable[[float], None] | None) -> np.ndarray:
    decoder = VideoDecoder(info, fps)
    smoother = OneEuroFilter(float(fps))
    rows: list[np.ndarray] = []
    previous: np.ndarray | None = None
    expected = max(1, info.frames_estimate)
    with FaceMesh(track=True) as mesh:
        for k, frame in decoder.frames():
            rgb, s = to_rgb(frame, ANALYSIS_MAX_SIDE)
            main = choose_main_face(mesh.detect(rgb), (rgb.shape[1], rgb.shape[0]),
                                    None if previous is None else previous * s)
            if main is None:
                smoother.reset()
                previous = None
                rows.append(np.full((N_POINTS, 2), np.nan, np.float32))
            else:
                previous = main / s
                rows.append(smoother(previous))
            if progress and k % 10 == 0:
                progress(min(1.0, (k + 1) / expected))
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, N_POINTS, 2), np.float32)
