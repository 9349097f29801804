"""A corpus of broken and hostile inputs, generated from ../shared/media (nothing binary is checked in).

Each :class:`Case` names the file, the role it is offered in (``audio`` or ``face``), and what the
answer must contain: a refusal's key words, or ``None`` where the file is valid input (the answer is
a correct render). docs/reliability.md lists the same cases with their results.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Case:
    id: str
    role: str  # "audio" or "face": the other input is a known-good file
    path: Path
    expect: tuple[str, ...] | None  # words of the refusal; None: accepted and rendered
    render: bool = False  # the CLI run has to render (slow): only where validation cannot decide


def _png(path: Path, width: int, height: int) -> Path:
    """A real grey PNG of any size, written row by row (a 10000x10000 one is ~100 KB: a decompression bomb)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate,
            rate * channels * 2, channels * 2, 16) + b"data" + struct.pack("<I", data_bytes))


def _video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for p in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:, :, ::-1]), format="rgb24")):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path


def _flip(data: bytes, lo: int, hi: int, n: int, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for i in rng.integers(lo, hi, n):
        out[i] ^= 0xFF
    return bytes(out)


def build(media_dir: Path, out: Path) -> list[Case]:
    """Write the corpus into ``out``; return its cases."""
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    wav = (media_dir / "en_radio_8s.wav").read_bytes()
    mp4 = (media_dir / "katie_talk_512.mp4").read_bytes()
    portrait = cv2.imread(str(media_dir / "portrait_474.png"))
    rng = np.random.default_rng(7)
    cases: list[Case] = []

    def add(id_: str, role: str, name: str, data: bytes | None, expect: tuple[str, ...] | None,
            render: bool = False) -> Path:
        p = out / name
        if data is not None:
            p.write_bytes(data)
        cases.append(Case(id_, role, p, expect, render))
        return p

    add("zero-length audio", "audio", "empty.wav", b"", ("empty", "0 bytes"))
    add("zero-length face", "face", "empty.png", b"", ("empty", "0 bytes"))
    add("truncated video (moov lost)", "face", "truncated.mp4", mp4[: len(mp4) // 3], ("not a readable",))
    add("truncated WAV (header says 8 s)", "audio", "truncated.wav", wav[: len(wav) // 10], ("truncated",))
    add("bit-flipped video (moov)", "face", "bitflip_moov.mp4", _flip(mp4, len(mp4) - 4000, len(mp4), 400, rng),
        ("not a readable",))
    # Damage inside the frames only: the header is fine, decoding fails or conceals mid-file.
    clip = _video(out / "clip.mp4", [np.roll(portrait[:464, :464], i, axis=1) for i in range(25)]).read_bytes()
    add("bit-flipped frames (mid-file)", "face", "bitflip_frames.mp4",
        _flip(clip, len(clip) // 2, len(clip) * 9 // 10, 20, rng),
        None, True)
    flipped_wav = bytearray(wav)
    for i in range(0, 44):  # the whole RIFF/fmt header
        flipped_wav[i] ^= 0x5A
    add("bit-flipped WAV header", "audio", "bitflip.wav", bytes(flipped_wav), ("not a readable",))
    add("text renamed .wav", "audio", "notes.wav", b"this is not audio\n" * 50, ("not a readable",))
    add("WAV renamed .png, as face", "face", "photo.png", wav, ("no picture",))
    add("PNG renamed .mp3, as audio", "audio", "speech.mp3", (media_dir / "portrait_474.png").read_bytes(),
        ("no sound track",))
    add("random bytes .mp4", "face", "random.mp4", rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes(),
        ("not a readable",))
    add("header-only MP4", "face", "header_only.mp4", mp4[:1024], ("not a readable",))
    add("header-only WAV (44 bytes)", "audio", "header_only.wav", wav[:44], ("truncated",))
    add("WAV header claiming 2 h", "audio", "two_hours.wav",
        _wav_header(16000, 1, 16000 * 2 * 7200) + b"\x00" * 32000, ("truncated", "7200 s"))
    cases.append(Case("10000x10000 PNG (bomb)", "face", _png(out / "huge.png", 10000, 10000),
                      ("10000x10000", "4096")))
    cases.append(Case("32x32 PNG", "face", _png(out / "tiny.png", 32, 32), ("32x32", "64 pixels")))
    _video(out / "mute.mp4", [portrait[:464, :464]] * 10)
    cases.append(Case("video without sound, as audio", "audio", out / "mute.mp4", ("no sound track",)))
    cases.append(Case("1-frame video", "face", _video(out / "one_frame.mp4", [portrait[:464, :464]]), None, True))
    silent = out / "silence.wav"
    silent.write_bytes(_wav_header(16000, 1, 16000 * 2 * 2) + b"\x00" * (16000 * 2 * 2))
    cases.append(Case("2 s of digital silence", "audio", silent, None, True))
    noise = cv2.GaussianBlur(rng.integers(0, 255, (360, 480, 3), dtype=np.uint8), (0, 0), 6)
    cv2.imwrite(str(out / "wall.png"), noise)
    cases.append(Case("image with no face", "face", out / "wall.png", ("no face",), True))
    cv2.imwrite(str(out / "dark.png"), (portrait.astype(np.float32) * 0.02).astype(np.uint8))
    cases.append(Case("very dark photo (2% brightness)", "face", out / "dark.png", ("no face",), True))
    two = np.concatenate([portrait, portrait[:, ::-1]], axis=1)
    cv2.imwrite(str(out / "two_faces.png"), two)
    cases.append(Case("two faces in one photo", "face", out / "two_faces.png", None, True))
    zh = out / "中文 演讲 (测试).wav"
    zh.write_bytes(_wav_header(16000, 1, 16000 * 2) + rng.integers(-3000, 3000, 16000, dtype=np.int16).tobytes())
    cases.append(Case("Chinese file name", "audio", zh, None, True))
    return cases
