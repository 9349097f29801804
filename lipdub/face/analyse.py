"""Template analysis: the main face's landmarks on every frame, cached on disk by content hash."""

from __future__ import annotations

import logging
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipdub.errors import NoFaceError
from lipdub.face.avatar import ANALYSIS_VERSION, Avatar, content_hash, default_cache_root
from lipdub.face.cache import avatars_root, mark_used
from lipdub.face.landmarks import N_POINTS, FaceMesh, FarFaceDetector
from lipdub.face.tracking import choose_main_face, same_face, smooth_landmarks
from lipdub.media.decode import VideoDecoder, load_image, output_size, prefetched
from lipdub.media.frames import crop_rgb, to_rgb
from lipdub.media.probe import MediaInfo

log = logging.getLogger(__name__)

# Face mesh runs on a copy no larger than this: its own network input is 192-256 px, so more only costs time.
ANALYSIS_MAX_SIDE = 1280
# The mesh resamples the face to 192 px whatever it is given, so a window 2.2 faces wide needs no more
# than this: a 1080p face window shrinks before its colour conversion instead of after.
WINDOW_MAX_SIDE = 640
# After the main face changed to another person, the whole frame is searched every ANCHOR_EVERY frames
# for the one it replaced, for up to ANCHOR_FRAMES (about 10 s): a speaker hidden for a moment while
# someone else is in view gets the lip-sync back when they reappear.
ANCHOR_EVERY = 3
ANCHOR_FRAMES = 250
# A face the mesh's own detector misses in the whole frame (a small face in a wide shot) is looked for
# with the full-range detector, and the mesh then runs on a window this many face boxes wide around
# it, resampled to FAR_WINDOW_SIDE pixels: there the face is as large as the mesh's detector likes it.
FAR_WINDOW = 2.2
FAR_WINDOW_SIDE = 320
# At most this many far faces get a mesh pass per frame (a crowd in the background need not cost more).
FAR_MAX_FACES = 4


FrameSink = Callable[[int, np.ndarray, "np.ndarray | None"], None]


def analyse_template(info: MediaInfo, fps: Fraction, cache_root: Path | None = None,
                     progress: Callable[[float], None] | None = None, frame_sink: FrameSink | None = None) -> Avatar:
    """The :class:`Avatar` of a template, from the cache when this exact file was analysed before.

    ``frame_sink(k, frame, landmarks)`` sees every decoded template frame (packed I420) with the face
    found on it (None if none) while a video is analysed, so other per-frame work (the mouth bank)
    needs no second decode. It is not called when the analysis comes from the cache."""
    # How the picture is decoded is part of the key: a mirrored or transparent photo looks different now.
    how = (":mirror" if info.mirror else "") + (":pillow" if info.pillow_still else "")
    key = content_hash(info.path, extra=f"v{ANALYSIS_VERSION}:{fps}:{info.rotation}{how}")
    cache_dir = avatars_root(cache_root or default_cache_root()) / key[:24]
    mark_used(cache_dir)  # first, so pruning by another job leaves it alone from now on
    cached = Avatar.load(cache_dir)
    if cached is not None and cached.key == key:
        log.info("Template analysis found in the avatar cache (%d frames).", cached.n_frames)
        return cached
    w, h = output_size(info)
    if info.kind == "image":
        landmarks = _analyse_image(info)
        avatar = Avatar(key, "image", w, h, float(fps), landmarks, cache_dir, info.path.name)
    else:
        landmarks = _analyse_video(info, fps, progress, frame_sink)
        avatar = Avatar(key, "video", w, h, float(fps), landmarks, cache_dir, info.path.name)
    found = avatar.found
    if not found.any():
        raise NoFaceError(f"No face was found in {info.path.name}; use a video or photo where a face is clearly "
                          "visible and faces the camera.")
    if not found.all():
        log.warning("No face on %d of %d template frames; those frames pass through unchanged.",
                    int((~found).sum()), len(found))
    avatar.save()
    mark_used(cache_dir)
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
        if not faces:
            with FarFaceDetector() as far:
                faces = [f * s for f in far_faces(mesh, far, frame)]
    main = choose_main_face(faces, (rgb.shape[1], rgb.shape[0]), None)
    out = np.full((1, N_POINTS, 2), np.nan, np.float32)
    if main is not None:
        out[0] = main / s
    return out


def _analyse_video(info: MediaInfo, fps: Fraction, progress: Callable[[float], None] | None,
                   frame_sink: FrameSink | None = None) -> np.ndarray:
    decoder = VideoDecoder(info, fps)
    window = _FaceWindow(*output_size(info))
    rows: list[np.ndarray] = []
    previous: np.ndarray | None = None
    expected = max(1, info.frames_estimate)
    # Two meshes: one that tracks the main face alone in its window (mediapipe runs its face detector
    # on every frame while it tracks fewer faces than it may, which is a quarter of the cost), and one
    # that looks for every face in a whole frame, to choose the main one when it is lost.
    with FaceMesh(track=True, max_faces=1) as tracker, FaceMesh(track=False) as searcher:
        try:
            for k, frame in prefetched(decoder.frames()):
                main = window.find(tracker, searcher, frame, previous)
                previous = main
                rows.append(np.full((N_POINTS, 2), np.nan, np.float32) if main is None else main.astype(np.float32))
                if frame_sink is not None:
                    frame_sink(k, frame, main)
                if progress and k % 10 == 0:
                    progress(min(1.0, (k + 1) / expected))
        finally:
            window.close()
    if not rows:
        return np.zeros((0, N_POINTS, 2), np.float32)
    return smooth_landmarks(np.stack(rows), float(fps))


class _FaceWindow:
    """Runs the face mesh on a window that follows the face instead of on the whole frame.

    Only the window is converted to RGB, which at 1080p costs a fraction of the full frame. The
    window moves only when the face nears its edge or changes size, so the mesh's own tracking
    sees a steady picture; when the face is lost the next frame is searched whole.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.box: tuple[int, int, int, int] | None = None
        self.last: np.ndarray | None = None  # the main face when it was last seen
        # Who was followed before the main face changed to someone else (the speaker hidden for a moment
        # while another person is in view): looked for again now and then, and returned to when back.
        self.anchor: np.ndarray | None = None
        self.anchor_age = 0
        self.far: FarFaceDetector | None = None  # made when first needed: most templates never need it

    def close(self) -> None:
        if self.far is not None:
            self.far.close()
            self.far = None

    def find(self, tracker: FaceMesh, searcher: FaceMesh, frame: np.ndarray,
             previous: np.ndarray | None) -> np.ndarray | None:
        """The main face in ``frame``: tracked in the window (``tracker``, one face), or searched for in
        the whole frame (``searcher``, every face) when there is no window or the face left it."""
        if self.anchor is not None:
            self.anchor_age += 1
            if self.anchor_age > ANCHOR_FRAMES:
                self.anchor = None
            elif self.anchor_age % ANCHOR_EVERY == 0:
                back = [f for f in self._search(searcher, frame) if same_face(f, self.anchor)]
                if back:
                    self.anchor, self.box = None, None
                    self.last = back[0]
                    return back[0]
        main = self._find(tracker, searcher, frame, previous)
        if main is not None:
            self.last = main
            if self.anchor is not None and same_face(main, self.anchor):
                self.anchor = None  # found again on its own
        return main

    def _search(self, searcher: FaceMesh, frame: np.ndarray) -> list[np.ndarray]:
        rgb, s = to_rgb(frame, ANALYSIS_MAX_SIDE)
        faces = [f / s for f in searcher.detect(rgb)]
        if faces:
            return faces
        if self.far is None:
            self.far = FarFaceDetector()
        return far_faces(searcher, self.far, frame, rgb, s)

    def _find(self, tracker: FaceMesh, searcher: FaceMesh, frame: np.ndarray,
              previous: np.ndarray | None) -> np.ndarray | None:
        box = self.box
        if previous is not None:
            self._follow(previous)
        else:
            self.box = None
        if self.box is not None and previous is not None:
            x0, y0, x1, y1 = self.box
            rgb, (sx, sy) = crop_rgb(frame, self.box, WINDOW_MAX_SIDE)
            scale = np.array([sx, sy], np.float32)
            faces = tracker.detect(rgb)
            if self.box != box:
                # The tracker follows the face in window coordinates: after the window moved, its first
                # answer comes from where the face was in the old window. The second starts from that.
                faces = tracker.detect(rgb)
            if faces:
                main = faces[0] / scale + np.array([x0, y0], np.float32)
                if same_face(main, previous):  # tracking may have jumped to a neighbour's face
                    return main
            self.box = None
        # Lost: search the whole frame, preferring whoever is where the main face was last seen.
        ref = previous if previous is not None else self.last
        main = choose_main_face(self._search(searcher, frame), (self.width, self.height), ref)
        if main is not None and ref is not None and not same_face(main, ref) and self.anchor is None:
            self.anchor, self.anchor_age = ref, 0
        return main

    def _follow(self, lm: np.ndarray) -> None:
        fx0, fy0 = lm.min(0)
        fx1, fy1 = lm.max(0)
        size = max(fx1 - fx0, fy1 - fy0)
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            margin = 0.12 * (x1 - x0)
            # A side that lies on the frame's border cannot move further out: a close-up face may come
            # near it without moving the window (which would cost a second mesh pass on every frame).
            inside = ((x0 == 0 or fx0 > x0 + margin) and (y0 == 0 or fy0 > y0 + margin)
                      and (x1 == self.width or fx1 < x1 - margin) and (y1 == self.height or fy1 < y1 - margin))
            if inside and 0.3 < size / (x1 - x0) < 0.6:
                return
        # A square window 2.2 face-sizes wide, centred on the face, even-aligned, inside the frame.
        half = 1.1 * size
        cx, cy = (fx0 + fx1) / 2, (fy0 + fy1) / 2
        x0 = int(max(0, cx - half)) & ~1
        y0 = int(max(0, cy - half)) & ~1
        x1 = min(self.width, int(cx + half + 1) + 1 & ~1)
        y1 = min(self.height, int(cy + half + 1) + 1 & ~1)
        self.box = (x0, y0, x1, y1) if x1 - x0 >= 64 and y1 - y0 >= 64 else None


def far_faces(searcher: FaceMesh, far: FarFaceDetector, frame: np.ndarray, rgb: np.ndarray | None = None,
              scale: float = 1.0) -> list[np.ndarray]:
    """Faces in a packed I420 ``frame`` too small for the mesh's own detector, in the frame's pixels:
    each box the full-range detector finds (on ``rgb``, the frame at ``scale``, or the whole frame)
    gets a mesh pass on a window around it, cut from the frame at full resolution and resampled to
    FAR_WINDOW_SIDE."""
    import cv2

    if rgb is None:
        rgb, scale = to_rgb(frame, ANALYSIS_MAX_SIDE)
    height, width = rgb.shape[0] / scale, rgb.shape[1] / scale
    faces: list[np.ndarray] = []
    for bx0, by0, bx1, by1 in far.boxes(rgb)[:FAR_MAX_FACES]:
        cx, cy = (bx0 + bx1) / 2 / scale, (by0 + by1) / 2 / scale
        half = FAR_WINDOW * max(bx1 - bx0, by1 - by0) / scale / 2
        x0, y0 = int(max(0, cx - half)) & ~1, int(max(0, cy - half)) & ~1
        x1, y1 = min(int(width) & ~1, int(cx + half + 2) & ~1), min(int(height) & ~1, int(cy + half + 2) & ~1)
        if x1 - x0 < 16 or y1 - y0 < 16:
            continue
        window, _ = crop_rgb(frame, (x0, y0, x1, y1))
        k = FAR_WINDOW_SIDE / max(x1 - x0, y1 - y0)
        window = cv2.resize(window, (round((x1 - x0) * k), round((y1 - y0) * k)),
                            interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
        sx, sy = window.shape[1] / (x1 - x0), window.shape[0] / (y1 - y0)
        for f in searcher.detect(window):
            face = f / np.array([sx, sy], np.float32) + np.array([x0, y0], np.float32)
            centre = face.mean(0) * scale
            # The window may hold a neighbour's face too: keep only the one this box was found for.
            if bx0 <= centre[0] <= bx1 and by0 <= centre[1] <= by1 and not any(same_face(face, g) for g in faces):
                faces.append(face)
    return faces
