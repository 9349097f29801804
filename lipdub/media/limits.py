"""Input limits shared by the library, the CLI and the studio, so every boundary refuses the same files
with the same sentence."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Protocol

from lipdub.errors import InputError


class ProbedMedia(Protocol):
    """What the checks read of a probed file (lipdub.media.probe.MediaInfo, which itself uses these limits)."""

    kind: str
    has_audio: bool
    duration: float
    width: int
    height: int

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What an input may be. ``0`` (or ``inf``) switches a limit off."""

    max_bytes: int = 2048 * MB  # one file
    max_audio_s: float = 30 * 60.0  # speech
    max_video_s: float = 10 * 60.0  # template video
    max_side: int = 4096  # pixels, either side of a picture or video
    min_side: int = 64  # a face needs some pixels
    min_audio_s: float = 0.05  # shorter cannot speak anything

    @classmethod
    def from_options(cls, *, max_upload_mb: float | None = None, max_duration_s: float | None = None,
                     max_audio_s: float | None = None, max_video_s: float | None = None,
                     max_side: int | None = None) -> Limits:
        """Limits from CLI/server options; ``max_duration_s`` (the older single option) caps both durations."""
        base = cls()
        audio = max_audio_s if max_audio_s is not None else (max_duration_s or base.max_audio_s)
        video = max_video_s if max_video_s is not None else (max_duration_s or base.max_video_s)
        return cls(max_bytes=int(max_upload_mb * MB) if max_upload_mb else base.max_bytes,
                   max_audio_s=audio, max_video_s=video, max_side=max_side or base.max_side)


def _on(limit: float) -> bool:
    return 0 < limit < float("inf")


def check_size(name: str, size: int, limits: Limits) -> None:
    if _on(limits.max_bytes) and size > limits.max_bytes:
        raise InputError(f"{name} is {size / MB:.0f} MB; the limit is {limits.max_bytes / MB:g} MB.")


def check_picture_size(name: str, width: int, height: int, limits: Limits) -> None:
    """Called on the container header's dimensions, before any pixel is decoded (decompression bombs)."""
    if _on(limits.max_side) and max(width, height) > limits.max_side:
        raise InputError(f"{name} is {width}x{height} pixels; the limit is {limits.max_side} pixels per side "
                         "(scale it down first).")


def check_audio(info: ProbedMedia, name: str, limits: Limits) -> None:
    """``info`` must carry the speech: a sound track of a sensible length."""
    if not info.has_audio:
        raise InputError(f"{name} has no sound track; give a speech recording (wav, mp3, m4a, ...) "
                         "or a video with sound.")
    if info.duration < limits.min_audio_s:
        raise InputError(f"{name} holds no sound (it is empty or {info.duration:.2f} s long); "
                         "give a real speech recording.")
    if _on(limits.max_audio_s) and info.duration > limits.max_audio_s:
        raise InputError(f"{name} lasts {_hms(info.duration)}; the limit is {_hms(limits.max_audio_s)} of speech.")


def check_face(info: ProbedMedia, name: str, limits: Limits) -> None:
    """``info`` must be a picture of a person: a video or a photo, of a sensible size and length."""
    if info.kind not in ("video", "image"):
        raise InputError(f"{name} holds no picture: it is {info.kind}, not a video or photo of a person.")
    check_picture_size(name, info.width, info.height, limits)
    if min(info.width, info.height) < limits.min_side:
        raise InputError(f"{name} is only {info.width}x{info.height}; the face needs at least {limits.min_side} "
                         "pixels per side.")
    if info.kind == "video" and _on(limits.max_video_s) and info.duration > limits.max_video_s:
        raise InputError(f"{name} lasts {_hms(info.duration)}; the limit is {_hms(limits.max_video_s)} for a "
                         "template video.")


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    h, rem = divmod(s, 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")
# Bidirectional controls (U+202E turns "evil\u202Egpj.exe" into "evilexe.jpg" on screen) and their kin.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe_name(filename: str | None, fallback: str = "upload") -> str:
    """A display name for a user-supplied file name: the last path component only, no ``..``, no
    separators, control or bidirectional-override characters, at most 200 characters. Unicode (Chinese,
    accents) is kept. It is only ever shown or stored as text; files on disk are named by their content
    hash."""
    name = _BIDI.sub("", unicodedata.normalize("NFC", filename or ""))
    name = re.split(r"[/\\]", name)[-1]  # the last component, whatever the client's separator
    name = _UNSAFE.sub("_", name).strip(" .")
    name = name.replace("..", "_")
    return name[:200] or fallback
