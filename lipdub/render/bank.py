"""Mouth bank: every template frame's lower face at full resolution, with landmark descriptors.

Built once per avatar and cached in ``avatar.cache_dir`` (images as raw I420 on disk, read one entry
at a time, so a long template costs disk, not memory); the retrieval engine picks from it the source frame whose mouth
matches each output frame.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from lipdub.face.avatar import Avatar
from lipdub.face.cache import BANK_IN_PROGRESS_PREFIX, budget_bytes, mark_used, prune
from lipdub.face.landmarks import LIPS_INNER_LOWER, LIPS_INNER_UPPER, eye_centres, inter_ocular, lip_gap
from lipdub.media.decode import VideoDecoder, prefetched
from lipdub.media.frames import crop_bgr, crop_i420, frame_size, planes
from lipdub.media.probe import MediaInfo
from lipdub.render.blend import composite_polygon
from lipdub.render.masks import lower_face_polygon

log = logging.getLogger(__name__)

BANK_VERSION = 7  # 5: entries stored as I420, each its own size; 6: colour descriptors while decoding;
# 7: full-range templates stored in video range
# Points that do not move when speaking: eye corners and the nose bridge. Alignment is fitted on them.
STABLE = [33, 133, 362, 263, 168, 6, 197, 195, 5]
NOSE_TIP = 4
# The stored region reaches this far past the jaw (x inter-ocular distance), so a lowered chin and the
# feathered edge of the mask always have source pixels.
REGION_MARGIN = 0.45
# Extra room around that region (x iod): the feathered edge, and the few pixels between the landmarks
# seen while decoding and the smoothed ones the bank is described with.
REGION_PAD = 0.2
TEMP_PREFIX = BANK_IN_PROGRESS_PREFIX
# A bank being written is touched every frame; one untouched this long was left by a killed job.
STALE_TEMP_S = 6 * 3600


class BankImages:
    """The bank's lower-face crops, on disk in one raw file (I420, one entry after another), read one at a time.

    Reads go through os.pread rather than a memory map: mapped pages count as the process's resident
    memory, and a 1080p bank of a long template would then look like gigabytes of RSS. The file is
    opened once, up front: a bank that another job prunes from the cache stays readable until closed.
    Where there is no os.pread (Windows), a lock makes seek-and-read one step for the reading threads.
    """

    def __init__(self, path: Path, offsets: np.ndarray, shapes: np.ndarray) -> None:
        self.path = path
        self.offsets = offsets.astype(np.int64)  # (S,) byte offset of each entry
        self.shapes = shapes.astype(np.int64)  # (S, 2) height and width of each entry (even)
        # O_BINARY: without it Windows opens in text mode, which turns CR LF into LF and stops at 0x1A.
        self._fd: int | None = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._seek_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, j: int) -> np.ndarray:
        """Entry ``j`` as BGR."""
        return cv2.cvtColor(self.i420(j), cv2.COLOR_YUV2BGR_I420)

    def i420(self, j: int) -> np.ndarray:
        """Entry ``j`` as stored: packed I420, (h * 3 / 2, w)."""
        if self._fd is None:
            raise ValueError(f"the mouth bank {self.path} is closed")
        h, w = (int(v) for v in self.shapes[j])
        size = entry_bytes(h, w)
        data = self._read_at(self._fd, size, int(self.offsets[j]))
        if len(data) != size:
            raise OSError(f"mouth bank entry {j} is truncated in {self.path}")
        return np.frombuffer(data, np.uint8).reshape(h * 3 // 2, w)

    def _read_at(self, fd: int, size: int, offset: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(fd, size, offset)
        with self._seek_lock:
            os.lseek(fd, offset, os.SEEK_SET)
            parts, left = [], size
            while left > 0:
                part = os.read(fd, left)
                if not part:
                    break
                parts.append(part)
                left -= len(part)
            return b"".join(parts)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:  # absent when the open itself failed
            self.close()


def entry_bytes(h: int, w: int) -> int:
    """Bytes of one stored entry: I420, as decoded (half the size of BGR, and no conversion to store it)."""
    return h * w * 3 // 2


@dataclass
class MouthBank:
    """Lower-face crops and descriptors of the template frames that have a face."""

    frames: np.ndarray  # (S,) int: template frame index of each entry
    images: BankImages  # S uint8 BGR crops (sizes vary with the face), read from disk on demand
    origin: np.ndarray  # (S, 2) int32: top-left corner of each image in the frame
    gap: np.ndarray  # (S,) inner-lip gap / inter-ocular distance
    width: np.ndarray  # (S,) mouth corner distance / inter-ocular distance
    round: np.ndarray  # (S,) inner opening height / inner width (rounded lips: tall and narrow)
    teeth: np.ndarray  # (S,) 0..1 share of the inner mouth that looks like teeth
    pose: np.ndarray  # (S, 4) roll, yaw, pitch proxies and relative scale
    light: np.ndarray  # (S, 3) mean Lab of the cheeks and chin

    def __len__(self) -> int:
        return len(self.frames)

    def landmarks(self, avatar: Avatar, j: int) -> np.ndarray:
        """Landmarks of entry ``j`` in its image's coordinates."""
        return avatar.landmarks[int(self.frames[j])] - self.origin[j].astype(np.float32)


def pose_descriptor(lm: np.ndarray, ref_iod: float) -> np.ndarray:
    """Head roll (radians), yaw and pitch proxies (nose tip offset from the eye midpoint, in iod) and scale:
    (8,) for one face's landmarks, (n, 8) for n faces' at once."""
    le, re = eye_centres(lm)
    iod = np.linalg.norm(re - le, axis=-1)
    safe = np.maximum(iod, 1e-6)[..., None]
    ex = (re - le) / safe
    ey = np.stack([-ex[..., 1], ex[..., 0]], -1)
    d = (lm[..., NOSE_TIP, :] - (le + re) / 2) / safe
    return np.stack([np.arctan2(ex[..., 1], ex[..., 0]), (d * ex).sum(-1), (d * ey).sum(-1),
                     iod / max(ref_iod, 1e-6)], -1).astype(np.float32)


# Jaw points that speech hardly moves (below the ears, either side): where they sit relative to the eyes
# says how the head is turned and where the face's outline runs, which the lower jaw must match.
UPPER_JAW = [93, 132, 361, 323]


def jaw_descriptor(lm: np.ndarray) -> np.ndarray:
    """The upper jaw line in the eyes' own frame (origin between the eyes, x along them, unit the eye
    distance): (8,) for one face's landmarks, (n, 8) for n faces' at once."""
    le, re = eye_centres(lm)
    iod = np.maximum(np.linalg.norm(re - le, axis=-1), 1e-6)[..., None]
    ex = (re - le) / iod
    ey = np.stack([-ex[..., 1], ex[..., 0]], -1)
    d = (lm[..., UPPER_JAW, :] - ((le + re) / 2)[..., None, :]) / iod[..., None]
    return np.concatenate([(d * ex[..., None, :]).sum(-1), (d * ey[..., None, :]).sum(-1)], -1).astype(np.float32)


def shape_descriptors(lm: np.ndarray) -> tuple[float, float, float]:
    """(gap, width, round) of one face, in inter-ocular units."""
    iod = max(float(inter_ocular(lm)), 1e-6)
    gap = float(lip_gap(lm)) / iod
    width = float(np.linalg.norm(lm[61] - lm[291])) / iod
    inner_w = max(float(np.linalg.norm(lm[78] - lm[308])), 1e-6)
    return gap, width, float(lip_gap(lm)) / inner_w


def teeth_score(bgr: np.ndarray, lm: np.ndarray) -> float:
    """Share of the inner-lip area that is bright and unsaturated compared with the lips: visible teeth."""
    poly = np.concatenate([lm[LIPS_INNER_UPPER], lm[LIPS_INNER_LOWER[::-1]][1:-1]])
    x0, y0 = np.floor(poly.min(0)).astype(int) - 3
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 4
    h, w = bgr.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 4 or y1 - y0 < 3:
        return 0.0
    lab = cv2.cvtColor(bgr[y0:y1, x0:x1], cv2.COLOR_BGR2LAB).astype(np.float32)
    inner = np.zeros(lab.shape[:2], np.uint8)
    cv2.fillPoly(inner, [np.round(poly - [x0, y0]).astype(np.int32)], 255)
    ring = cv2.dilate(inner, np.ones((5, 5), np.uint8)) - inner
    if inner.sum() < 255 * 4 or not ring.any():
        return 0.0
    lip_l = float(np.median(lab[..., 0][ring > 0]))
    chroma = np.hypot(lab[..., 1] - 128, lab[..., 2] - 128)
    bright = (lab[..., 0] > lip_l + 12) & (chroma < 22) & (inner > 0)
    return float(bright.sum() / max((inner > 0).sum(), 1))


def region_box(lm: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Even-aligned box (x0, y0, x1, y1) around one face's lower face, with room for a lowered chin."""
    poly = lower_face_polygon(lm, chin_margin=REGION_MARGIN)
    pad = REGION_PAD * float(inter_ocular(lm))
    x0, y0 = np.floor(poly.min(0) - pad).astype(int)
    x1, y1 = np.ceil(poly.max(0) + pad).astype(int)
    x0, y0 = max(0, int(x0)) & ~1, max(0, int(y0)) & ~1
    x1 = min(width - width % 2, (int(x1) + 1) & ~1)
    y1 = min(height - height % 2, (int(y1) + 1) & ~1)
    return x0, y0, max(x1, x0 + 2), max(y1, y0 + 2)


def image_extent(lm: np.ndarray, width: int, height: int) -> np.ndarray:
    """Where the edges of one face's image lie (left, top, right, bottom), relative to its stable points'
    centre, in inter-ocular distances: for a bank entry, how far its stored crop reaches."""
    c = lm[STABLE].mean(0)
    iod = max(float(inter_ocular(lm)), 1.0)
    return np.array([-c[0], -c[1], width - c[0], height - c[1]], np.float32) / iod


def needed_extent(lm: np.ndarray, width: int, height: int) -> np.ndarray:
    """How far the composite mask of one frame reaches inside its image (left, top, right, bottom),
    relative to its stable points' centre, in inter-ocular distances: what a source pasted on it must have.
    A source is aligned on the stable points, so the two extents compare directly."""
    poly = composite_polygon(lm)
    (x0, y0), (x1, y1) = np.maximum(poly.min(0), 0), np.minimum(poly.max(0), [width, height])
    c = lm[STABLE].mean(0)
    iod = max(float(inter_ocular(lm)), 1.0)
    return np.array([x0 - c[0], y0 - c[1], x1 - c[0], y1 - c[1]], np.float32) / iod


def teeth_score_i420(crop: np.ndarray, lm: np.ndarray) -> float:
    """:func:`teeth_score` of a packed I420 crop, converting only the mouth's own box to BGR."""
    w, h = frame_size(crop)
    inner = np.concatenate([lm[LIPS_INNER_UPPER], lm[LIPS_INNER_LOWER]])
    x0, y0 = (np.floor(inner.min(0)).astype(int) - 6).clip(0) & ~1
    x1, y1 = np.minimum((np.ceil(inner.max(0)).astype(int) + 8) & ~1, [w - w % 2, h - h % 2])
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0.0
    return teeth_score(crop_bgr(crop, (int(x0), int(y0), int(x1), int(y1))), lm - np.float32([x0, y0]))


def lower_face_light_i420(crop: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Lab colour (OpenCV's 8-bit scale) of the lower face's mean colour, the light it is lit by,
    measured on the I420 planes at half resolution (a mean needs no more)."""
    y, u, v = planes(crop)
    mask = np.zeros(u.shape, np.uint8)
    cv2.fillPoly(mask, [np.round(lower_face_polygon(lm, chin_margin=0.0) / 2).astype(np.int32)], 255)
    if not mask.any():
        return np.zeros(3, np.float32)
    means = [cv2.mean(np.ascontiguousarray(p), mask=mask)[0] for p in (y[::2, ::2], u, v)]
    pixel = np.array([[means[0]] * 2, [means[0]] * 2, [means[1], means[2]]], np.float32)
    bgr = cv2.cvtColor(np.clip(np.round(pixel), 0, 255).astype(np.uint8), cv2.COLOR_YUV2BGR_I420)[:1, :1]
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)[0, 0].astype(np.float32)


class BankWriter:
    """Writes a mouth bank from frames as they are decoded: fed by the template's analysis pass, so the
    template is decoded once, or by :func:`build_bank` for an avatar analysed before.

    Crops are cut around the landmarks seen while decoding, and their colour descriptors (teeth,
    light) are measured then; the shape descriptors come at :meth:`finish` from the avatar's final
    (smoothed) landmarks, which is why the box has a little extra room.
    """

    def __init__(self, parent: Path, width: int, height: int) -> None:
        self.parent = parent
        self.width, self.height = width, height
        self.budget = budget_bytes()  # read now: a bad setting fails the job before the analysis, not after
        self.tmp: Path | None = None  # made at the first frame: a cached avatar never needs one
        self._file: BinaryIO | None = None
        self._closed = False
        self._frames: list[int] = []
        self._origins: list[tuple[int, int]] = []
        self._shapes: list[tuple[int, int]] = []
        self._offsets: list[int] = []
        self._teeth: list[float] = []
        self._light: list[np.ndarray] = []
        self._end = 0

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale_banks(self.parent)
            self.tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.parent))
            self._file = open(self.tmp / "images.u8", "wb")  # noqa: SIM115 - written frame by frame, closed in finish
        return self._file

    def __call__(self, k: int, frame: np.ndarray, landmarks: np.ndarray | None) -> None:
        """Store template frame ``k``'s lower face (I420); ``landmarks`` None means no face: nothing stored."""
        if landmarks is None or self._closed:
            return
        x0, y0, x1, y1 = region_box(landmarks, self.width, self.height)
        stored = crop_i420(frame, (x0, y0, x1, y1))
        self._open().write(memoryview(np.ascontiguousarray(stored)))  # no intermediate bytes copy
        # Colour descriptors now, from the crop in hand (reading it back later costs a disk read and a
        # conversion per frame); the landmarks are the raw ones, which is plenty for a mean colour.
        lm = landmarks - np.float32([x0, y0])
        self._teeth.append(teeth_score_i420(stored, lm))
        self._light.append(lower_face_light_i420(stored, lm))
        self._frames.append(int(k))
        self._origins.append((x0, y0))
        self._shapes.append((y1 - y0, x1 - x0))
        self._offsets.append(self._end)
        self._end += stored.nbytes

    def __len__(self) -> int:
        return len(self._frames)

    def discard(self) -> None:
        self._closed = True
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def finish(self, avatar: Avatar, folder: Path) -> MouthBank:
        """Describe every stored entry from the avatar's landmarks and move the bank into ``folder``."""
        self._open().close()
        self._closed = True
        assert self.tmp is not None
        try:
            frames = np.asarray(self._frames, np.int64)
            keep = np.array([k < avatar.n_frames and bool(avatar.found[k]) for k in frames], bool)
            origins = np.asarray(self._origins, np.int32).reshape(-1, 2)
            offsets = np.asarray(self._offsets, np.int64)
            shapes = np.asarray(self._shapes, np.int64).reshape(-1, 2)
            n = len(frames)
            gap, width, rnd = (np.zeros(n, np.float32) for _ in range(3))
            teeth = np.asarray(self._teeth, np.float32).reshape(n)
            light = np.asarray(self._light, np.float32).reshape(n, 3)
            pose = np.zeros((n, 4), np.float32)
            if keep.any():
                ref_iod = float(np.median(inter_ocular(avatar.landmarks[frames[keep]])))
            for e in np.flatnonzero(keep):
                lm_frame = avatar.landmarks[frames[e]]
                gap[e], width[e], rnd[e] = shape_descriptors(lm_frame - origins[e].astype(np.float32))
                pose[e] = pose_descriptor(lm_frame, ref_iod)
            np.savez(self.tmp / "meta.npz", frames=frames[keep], origin=origins[keep], gap=gap[keep],
                     width=width[keep], round=rnd[keep], teeth=teeth[keep], pose=pose[keep], light=light[keep],
                     offset=offsets[keep], shape=shapes[keep])
            # The process that built it: its own render finds the bank just written, not one "in the cache".
            (self.tmp / "info.json").write_text(json.dumps({"version": BANK_VERSION, "key": avatar.key,
                                                            "bytes": self._end, "pid": os.getpid()}))
            shutil.rmtree(folder, ignore_errors=True)
            folder.parent.mkdir(parents=True, exist_ok=True)  # in case the avatar was pruned meanwhile
            os.replace(self.tmp, folder)
        except BaseException:
            self.discard()
            raise
        bank = load_bank(avatar, folder)
        if bank is None:
            raise OSError(f"The mouth bank just written to {folder} could not be read back.")
        log.info("Mouth bank: %d frames, %.0f MB.", len(bank), self._end / 1e6)
        if folder.parent == avatar.cache_dir:
            for old in avatar.cache_dir.glob("mouth_bank_v*"):
                if old != folder:  # a bank of an older format: never read again
                    shutil.rmtree(old, ignore_errors=True)
        # The cache just grew by up to gigabytes: keep it within its budget (this bank is open already).
        prune(avatar.cache_dir.parent, self.budget, keep=(avatar.cache_dir,))
        return bank


def sweep_stale_banks(parent: Path) -> None:
    """Remove half-written banks left by jobs that were killed (a 1080p one can be gigabytes)."""
    now = time.time()
    for folder in parent.glob(TEMP_PREFIX + "*"):
        try:
            newest = max([folder.stat().st_mtime] + [f.stat().st_mtime for f in folder.iterdir()])
        except OSError:
            continue  # another job is removing it
        if now - newest > STALE_TEMP_S:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("Removed an unfinished mouth bank left by an interrupted job: %s", folder.name)


def bank_folder(avatar: Avatar) -> Path:
    return avatar.cache_dir / f"mouth_bank_v{BANK_VERSION}"


def build_bank(avatar: Avatar, info: MediaInfo, folder: Path) -> MouthBank:
    """Decode the template and write the bank into ``folder`` (atomically), for an avatar analysed before."""
    writer = BankWriter(folder.parent, avatar.width, avatar.height)
    try:
        fps = Fraction(avatar.fps).limit_denominator(1001)
        for k, frame in prefetched(VideoDecoder(info, fps).frames(0, avatar.n_frames)):
            if avatar.found[k]:
                writer(k, frame, avatar.landmarks[k])
    except BaseException:
        writer.discard()
        raise
    if len(writer) < int(avatar.found.sum()):
        log.warning("The mouth bank is missing %d of %d template frames.", int(avatar.found.sum()) - len(writer),
                    int(avatar.found.sum()))
    return writer.finish(avatar, folder)


def load_bank(avatar: Avatar, folder: Path) -> MouthBank | None:
    """The cached bank in ``folder``, or None when absent or stale."""
    try:
        meta = json.loads((folder / "info.json").read_text())
        if meta.get("version") != BANK_VERSION or meta.get("key") != avatar.key:
            return None
        if (folder / "images.u8").stat().st_size != int(meta["bytes"]):
            return None
        with np.load(folder / "meta.npz") as z:
            d = {k: z[k] for k in z.files}
        images = BankImages(folder / "images.u8", d["offset"], d["shape"])
    except (OSError, ValueError, KeyError):
        return None
    return MouthBank(d["frames"], images, d["origin"], d["gap"], d["width"], d["round"], d["teeth"], d["pose"],
                     d["light"])


def _built_by(folder: Path) -> int | None:
    """The process id that wrote the bank in ``folder``, where recorded."""
    try:
        return int(json.loads((folder / "info.json").read_text()).get("pid", 0)) or None
    except (OSError, ValueError):
        return None


def mouth_bank(avatar: Avatar, info: MediaInfo) -> MouthBank:
    """The avatar's mouth bank, from its cache when it was built before."""
    folder = bank_folder(avatar)
    mark_used(avatar.cache_dir)  # again: the speech analysis may have taken long since the face's
    bank = load_bank(avatar, folder)
    if bank is not None:
        if _built_by(folder) != os.getpid():
            log.info("Mouth bank found in the avatar cache (%d frames).", len(bank))
        return bank
    avatar.cache_dir.mkdir(parents=True, exist_ok=True)
    return build_bank(avatar, info, folder)
