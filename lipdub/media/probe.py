"""Probe a media file by its content (never by its extension)."""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from lipdub.errors import InputError
from lipdub.media.limits import Limits, check_picture_size, check_size

log = logging.getLogger(__name__)

# Demuxers and codecs that mean "a still picture", whatever the file is called.
_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif", "webp"}
_IMAGE_CODECS = {"png", "mjpeg", "webp", "bmp", "tiff", "jpegls", "jpeg2000", "gif"}
# EXIF orientation -> (mirrored left to right first, then degrees clockwise): what Pillow's exif_transpose does.
_EXIF_ORIENTATION = {1: (False, 0), 2: (True, 0), 3: (False, 180), 4: (True, 180), 5: (True, 270), 6: (False, 90),
                     7: (True, 90), 8: (False, 270)}


@dataclass(frozen=True)
class MediaInfo:
    """What a file really holds."""

    path: Path
    kind: str  # "video", "image" or "audio"
    container: str
    duration: float  # seconds; 0 for images
    has_video: bool
    has_audio: bool
    width: int = 0  # display size, after rotation
    height: int = 0
    fps: Fraction = Fraction(0)
    frames_estimate: int = 0
    rotation: int = 0  # degrees clockwise the decoded picture must be turned for display
    mirror: bool = False  # flipped left to right before it is turned (EXIF orientations 2, 4, 5, 7)
    # A still that Pillow decodes (FFmpeg reads its first frame wrongly or not at all): an animated GIF or
    # WebP, whose first frame is the photo, or a picture with transparency, composed over grey.
    pillow_still: bool = False
    video_codec: str = ""
    audio_codec: str = ""
    sample_rate: int = 0
    channels: int = 0
    # Colour tags of the video stream as FFmpeg numbers them (AVCOL_SPC_*, AVCOL_PRI_*, AVCOL_TRC_*):
    # the YUV matrix, primaries and transfer; 2 is unspecified.
    colour: tuple[int, int, int] = (2, 2, 2)  # UNSPECIFIED each


UNSPECIFIED = 2  # FFmpeg's number for an unspecified colour tag, in all three tables


def probe(path: str | os.PathLike, limits: Limits | None = None) -> MediaInfo:
    """Open ``path`` and describe its streams; raise :class:`InputError` when it is not usable media.

    Only headers are read, plus one frame of a video; ``limits`` (size, picture dimensions) are
    checked before that frame is decoded, so a decompression bomb is refused by its header."""
    limits = limits or Limits()
    p = Path(path)
    if not p.exists():
        raise InputError(f"File not found: {p}")
    if p.is_dir():
        raise InputError(f"{p} is a folder; give a media file instead.")
    if p.stat().st_size == 0:
        raise InputError(f"{p.name} is empty (0 bytes); give a real media file.")
    check_size(p.name, p.stat().st_size, limits)
    still = _pillow_still(p)
    if still is not None:  # FFmpeg decodes a still to probe it: refuse a bomb before that
        check_picture_size(p.name, still.width, still.height, limits)
        if still.decode_with_pillow:
            return _still_info(p, still)
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{p.name} is not a readable audio, video or image file ({_short(e)}).") from e
    with container:
        fmt = container.format.name
        vstreams = [s for s in container.streams.video if not _is_cover_art(s)]
        astreams = list(container.streams.audio)
        duration = _duration(container)
        if duration <= 0 and fmt.split(",")[0] not in _IMAGE_FORMATS:
            duration = _scanned_duration(p)
        info = dict(path=p, container=fmt, duration=duration, has_video=bool(vstreams), has_audio=bool(astreams))
        if astreams:
            a = astreams[0]
            info.update(audio_codec=a.codec_context.name, sample_rate=int(a.codec_context.sample_rate or 0),
                        channels=int(a.codec_context.channels or 0))
        if vstreams:
            v = vstreams[0]
            cc = v.codec_context
            is_image = fmt.split(",")[0] in _IMAGE_FORMATS or (cc.name in _IMAGE_CODECS and (v.frames or 0) <= 1
                                                                and duration <= 0.1)
            w, h = int(cc.width or 0), int(cc.height or 0)
            check_picture_size(p.name, w, h, limits)  # before _rotation decodes a frame
            mirror = False
            if is_image and still is not None and still.orientation in _EXIF_ORIENTATION:
                # EXIF says how to turn (and mirror) the photo; FFmpeg's angle alone loses the mirroring.
                mirror, rotation = _EXIF_ORIENTATION[still.orientation]
            else:
                rotation = _rotation(container, v)
            if rotation in (90, 270):
                w, h = h, w
            if w <= 0 or h <= 0:
                if fmt.split(",")[0] in _IMAGE_FORMATS and still is None:
                    # Picked by its name (image2 goes by the extension) and not a picture Pillow knows either.
                    raise InputError(f"{p.name} is not an image or video (its content is no picture, whatever its "
                                     "name says); give a video or photo of a person.")
                raise InputError(f"{p.name} has a video stream without a picture size; the file is probably damaged.")
            fps = Fraction(0) if is_image else _fps(v)
            frames = 1 if is_image else int(v.frames or round(duration * float(fps)))
            info.update(kind="image" if is_image else "video", width=w, height=h, fps=fps, frames_estimate=frames,
                        rotation=rotation, mirror=mirror, video_codec=cc.name, duration=0.0 if is_image else duration,
                        colour=_colour_tags(cc))
        elif astreams:
            info["kind"] = "audio"
            _check_pcm_length(p, astreams[0])
        else:
            raise InputError(f"{p.name} holds neither audio nor video.")
    return MediaInfo(**info)


def _colour_tags(cc: av.codec.context.CodecContext) -> tuple[int, int, int]:
    """(matrix, primaries, transfer); reserved values read as unspecified: 3 in all three tables, and 0
    for primaries and transfer (for the matrix, 0 is RGB)."""
    tags = []
    for name, lowest in (("colorspace", 0), ("color_primaries", 1), ("color_trc", 1)):
        try:
            value = int(getattr(cc, name))
        except (AttributeError, TypeError, ValueError):
            value = UNSPECIFIED
        tags.append(value if lowest <= value < 256 and value != 3 else UNSPECIFIED)
    return tags[0], tags[1], tags[2]


def _check_pcm_length(p: Path, stream: av.stream.Stream) -> None:
    """A WAV header states its length; one that claims far more than the file holds is lying or truncated.
    FFmpeg quietly plays what is there, so a 44-byte file could otherwise pose as two hours of speech."""
    cc = stream.codec_context
    if not cc.name.startswith("pcm_"):
        return
    with open(p, "rb") as f:
        head = f.read(4096)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(head):
        tag, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if tag == b"data":
            if size in (0, 0xFFFFFFFF):  # streamed WAVs leave the size open
                return
            bytes_per_s = int(cc.sample_rate or 0) * int(cc.channels or 1) * max(1, (cc.format.bits if cc.format
                                                                                  else 16) // 8)
            held = p.stat().st_size - (pos + 8)
            if bytes_per_s and size > 2 * bytes_per_s and held < size / 2:
                raise InputError(f"{p.name}'s header claims {size / bytes_per_s:.0f} s of sound but the file holds "
                                 f"only {max(0, held) / bytes_per_s:.1f} s; it is truncated or damaged.")
            return
        pos += 8 + size + (size & 1)


@dataclass(frozen=True)
class _Still:
    """What Pillow reads from an image file's header (it opens lazily: no pixel is decoded)."""

    format: str
    width: int  # as stored, before the EXIF orientation
    height: int
    orientation: int  # EXIF orientation tag, 0 if none
    animated: bool
    transparent: bool  # has an alpha channel or a transparent colour

    @property
    def decode_with_pillow(self) -> bool:
        # FFmpeg refuses an animated WebP and drops a picture's alpha (transparent pixels come out as
        # whatever colour they hold, often black); Pillow reads both.
        return self.animated or self.transparent


def _pillow_still(p: Path) -> _Still | None:
    """The header of an image file, or None if it is no image Pillow knows (FFmpeg will tell)."""
    try:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its DecompressionBombWarning: we refuse those ourselves
            with Image.open(p) as im:
                try:
                    orientation = int(im.getexif().get(0x0112, 0) or 0)
                except Exception:  # noqa: BLE001 - a damaged EXIF block: no orientation
                    orientation = 0
                transparent = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
                return _Still(str(im.format or ""), int(im.width), int(im.height), orientation,
                              bool(getattr(im, "is_animated", False)), transparent)
    except Exception:  # noqa: BLE001 - not an image Pillow knows
        return None


def _still_info(p: Path, still: _Still) -> MediaInfo:
    """A still that Pillow decodes, described from its header once its first frame was decoded (its size
    was checked before: no bomb is expanded), so a damaged file is refused at upload, not in the render."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(p) as im:
                im.seek(0)
                im.load()
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for a damaged picture
        raise InputError(f"{p.name} is not a readable audio, video or image file ({_short(e)}).") from e
    mirror, rotation = _EXIF_ORIENTATION.get(still.orientation, (False, 0))
    w, h = (still.height, still.width) if rotation in (90, 270) else (still.width, still.height)
    if still.animated:
        log.info("%s is animated; its first frame is used as the photo.", p.name)
    return MediaInfo(path=p, kind="image", container=still.format.lower(), duration=0.0, has_video=True,
                     has_audio=False, width=w, height=h, frames_estimate=1, rotation=rotation, mirror=mirror,
                     video_codec=still.format.lower(), pillow_still=True)


def _is_cover_art(stream: av.stream.Stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _duration(container: av.container.InputContainer) -> float:
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000
    best = 0.0
    for s in container.streams:
        if s.duration and s.time_base:
            best = max(best, float(s.duration * s.time_base))
    return best


def _scanned_duration(p: Path) -> float:
    """Length from the packets themselves, for files whose header states none: streamed WebM or MKV,
    as a browser's MediaRecorder writes them. Reads the file without decoding it."""
    first, end = None, 0.0
    try:
        with av.open(str(p), metadata_errors="ignore") as c:
            streams = [s for s in c.streams if s.type in ("audio", "video") and not _is_cover_art(s)]
            for pkt in c.demux(streams):
                if pkt.pts is None or pkt.time_base is None:
                    continue
                t = float(pkt.pts * pkt.time_base)
                first = t if first is None else min(first, t)
                end = max(end, float((pkt.pts + (pkt.duration or 0)) * pkt.time_base))
    except (av.FFmpegError, OSError):
        pass  # what could be read counts; a damaged file is answered by the checks that follow
    return max(0.0, end - (first or 0.0))


def _fps(v: av.video.stream.VideoStream) -> Fraction:
    for rate in (v.average_rate, v.guessed_rate, v.base_rate):
        if rate and 1 <= float(rate) <= 240:
            # Tidy rates like 2997/100 to 30000/1001 without drifting real averages of VFR files.
            return Fraction(rate).limit_denominator(1001)
    return Fraction(25)


def _rotation(container: av.container.InputContainer, v: av.video.stream.VideoStream) -> int:
    """Clockwise display rotation from the display matrix (or the legacy 'rotate' tag)."""
    tag = v.metadata.get("rotate")
    if tag:
        try:
            return int(tag) % 360
        except ValueError:
            pass
    try:
        frame = next(container.decode(v))
        # PyAV reports the display matrix angle counter-clockwise.
        return int(round(-getattr(frame, "rotation", 0))) % 360
    except (StopIteration, av.FFmpegError):
        return 0


def _short(e: Exception) -> str:
    """FFmpeg's reason without its errno and the path it repeats."""
    text = str(e).strip().split("\n")[0]
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    text = re.sub(r"\s*:\s*'[^']*'$", "", text)
    return text[:120]
