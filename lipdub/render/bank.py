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
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from lipdub.face.avatar import Avatar
from lipdub.face.landmarks import LIPS_INNER_LOWER, LIPS_INNER_UPPER, eye_centres, inter_ocular, lip_gap
from lipdub.media.decode import VideoDecoder
from lipdub.media.frames import crop_i420
from lipdub.media.probe import MediaInfo
from lipdub.render.masks import lower_face_polygon

log = logging.getLogger(__name__)

BANK_VERSION = 5  # 5: entries stored as I420
# Points that do not move when speaking: eye corners and the nose bridge. Alignment is fitted on them.
STABLE = [33, 133, 362, 263, 168, 6, 197, 195, 5]
NOSE_TIP = 4
# The stored region reaches this far past the jaw (x inter-ocular distance), so a lowered chin and the
# feathered edge of the mask always have source pixels.
REGION_MARGIN = 0.45


class BankImages:
    """The bank's lower-face crops, on disk in one raw file, read one entry at a time.

    Reads go through os.pread rather than a memory map: mapped pages count as the process's resident
    memory, and a 1080p bank of a long template would then look like gigabytes of RSS.
    """

    def __init__(self, path: Path, count: int, h: int, w: int, rows: np.ndarray | None = None) -> None:
        self.path = path
        self.shape = (count if rows is None else len(rows), h, w, 3)
        self._size = entry_bytes(h, w)
        self._rows = rows

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, j: int) -> np.ndarray:
        k = int(self._rows[j]) if self._rows is not None else int(j)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, self._size, k * self._size)
        finally:
            os.close(fd)
        if len(data) != self._size:
            raise OSError(f"mouth bank entry {k} is truncated in {self.path}")
        h, w = self.shape[1:3]
        return cv2.cvtColor(np.frombuffer(data, np.uint8).reshape(h * 3 // 2, w), cv2.COLOR_YUV2BGR_I420)


def entry_bytes(h: int, w: int) -> int:
    """Bytes of one stored entry: I420, as decoded (half the size of BGR, and no conversion to store it)."""
    return h * w * 3 // 2


@dataclass
class MouthBank:
    """Lower-face crops and descriptors of the template frames that have a face."""

    frames: np.ndarray  # (S,) int: template frame index of each entry
    images: BankImages  # (S, H, W, 3) uint8 BGR crops, read from disk on demand
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
    """Head roll (radians), yaw and pitch proxies (nose tip offset from the eye midpoint, in iod) and scale."""
    le, re = eye_centres(lm)
    iod = float(np.linalg.norm(re - le))
    ex = (re - le) / max(iod, 1e-6)
    ey = np.array([-ex[1], ex[0]])
    d = (lm[NOSE_TIP] - (le + re) / 2) / max(iod, 1e-6)
    return np.array([np.arctan2(ex[1], ex[0]), d @ ex, d @ ey, iod / max(ref_iod, 1e-6)], np.float32)


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


def _region_boxes(avatar: Avatar, idx: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Fixed-size (even) box per entry around the lower face, clamped to the frame; returns (origins, H, W)."""
    centres, sizes = [], []
    for i in idx:
        lm = avatar.landmarks[i]
        poly = lower_face_polygon(lm, chin_margin=REGION_MARGIN)
        iod = float(inter_ocular(lm))
        lo = poly.min(0) - 0.15 * iod
        hi = poly.max(0) + 0.15 * iod
        centres.append((lo + hi) / 2)
        sizes.append(hi - lo)
    sizes_a = np.array(sizes)
    w = min(int(np.ceil(sizes_a[:, 0].max() / 2)) * 2, avatar.width - avatar.width % 2)
    h = min(int(np.ceil(sizes_a[:, 1].max() / 2)) * 2, avatar.height - avatar.height % 2)
    origins = np.empty((len(idx), 2), np.int32)
    for k, c in enumerate(centres):
        x0 = int(np.clip(round(c[0] - w / 2), 0, avatar.width - w)) & ~1
        y0 = int(np.clip(round(c[1] - h / 2), 0, avatar.height - h)) & ~1
        origins[k] = (x0, y0)
    return origins, h, w


def _lower_face_light(bgr: np.ndarray, lm: np.ndarray) -> np.ndarray:
    poly = lower_face_polygon(lm, chin_margin=0.0)
    mask = np.zeros(bgr.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 255)
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
    return np.array(cv2.mean(lab, mask=mask)[:3], np.float32)


def build_bank(avatar: Avatar, info: MediaInfo, folder: Path) -> MouthBank:
    """Decode the template once and write the bank into ``folder`` (atomically)."""
    idx = np.flatnonzero(avatar.found)
    origins, h, w = _region_boxes(avatar, idx)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    images = open(tmp / "images.u8", "wb")  # noqa: SIM115 - written frame by frame, closed below
    slot = {int(i): k for k, i in enumerate(idx)}
    n_desc = len(idx)
    gap, width, rnd, teeth = (np.zeros(n_desc, np.float32) for _ in range(4))
    light = np.zeros((n_desc, 3), np.float32)
    ref_iod = float(np.median(inter_ocular(avatar.landmarks[idx])))
    pose = np.stack([pose_descriptor(avatar.landmarks[i], ref_iod) for i in idx]) if len(idx) else np.zeros((0, 4))
    fps = Fraction(avatar.fps).limit_denominator(1001)
    filled = np.zeros(n_desc, bool)
    for k_frame, frame in VideoDecoder(info, fps).frames(0, avatar.n_frames):
        k = slot.get(int(k_frame))
        if k is None:
            continue
        x0, y0 = origins[k]
        stored = crop_i420(frame, (int(x0), int(y0), int(x0) + w, int(y0) + h))
        images.seek(k * entry_bytes(h, w))
        images.write(stored.tobytes())
        crop = cv2.cvtColor(stored, cv2.COLOR_YUV2BGR_I420)
        lm = avatar.landmarks[idx[k]] - origins[k].astype(np.float32)
        gap[k], width[k], rnd[k] = shape_descriptors(lm)
        teeth[k] = teeth_score(crop, lm)
        light[k] = _lower_face_light(crop, lm)
        filled[k] = True
    images.truncate(len(idx) * entry_bytes(h, w))  # entries the decoder never delivered read as zeros
    images.close()
    if not filled.all():
        log.warning("The mouth bank is missing %d of %d template frames.", int((~filled).sum()), n_desc)
    np.savez(tmp / "meta.npz", frames=idx[filled], origin=origins[filled], gap=gap[filled], width=width[filled],
             round=rnd[filled], teeth=teeth[filled], pose=pose[filled], light=light[filled], filled=filled)
    (tmp / "info.json").write_text(json.dumps({"version": BANK_VERSION, "key": avatar.key, "count": len(idx),
                                               "height": h, "width": w}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log.info("Mouth bank: %d frames of %dx%d px.", int(filled.sum()), w, h)
    return load_bank(avatar, folder)  # type: ignore[return-value]


def load_bank(avatar: Avatar, folder: Path) -> MouthBank | None:
    """The cached bank in ``folder``, or None when absent or stale."""
    try:
        meta = json.loads((folder / "info.json").read_text())
        if meta.get("version") != BANK_VERSION or meta.get("key") != avatar.key:
            return None
        count, h, w = int(meta["count"]), int(meta["height"]), int(meta["width"])
        if (folder / "images.u8").stat().st_size != count * entry_bytes(h, w):
            return None
        with np.load(folder / "meta.npz") as z:
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None
    filled = d.pop("filled")
    # Rarely a frame the decoder did not deliver leaves a hole: index around it.
    images = BankImages(folder / "images.u8", count, h, w, None if filled.all() else np.flatnonzero(filled))
    return MouthBank(d["frames"], images, d["origin"], d["gap"], d["width"], d["round"], d["teeth"], d["pose"],
                     d["light"])


def mouth_bank(avatar: Avatar, info: MediaInfo) -> MouthBank:
    """The avatar's mouth bank, from its cache when it was built before."""
    folder = avatar.cache_dir / f"mouth_bank_v{BANK_VERSION}"
    bank = load_bank(avatar, folder)
    if bank is not None:
        log.info("Mouth bank found in the avatar cache (%d frames).", len(bank))
        return bank
    avatar.cache_dir.mkdir(parents=True, exist_ok=True)
    return build_bank(avatar, info, folder)
