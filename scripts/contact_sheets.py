"""Contact sheets of lipdub output for every talking video and photo in ../shared/media, and for the hard
templates of ../shared/corpus (heads that turn and tilt, small faces) driven by speech from ../shared/media.

Talking videos are split the way the eval does: template = first half (silent), speech = second
half, ground truth = second half's frames. Each row is one output frame (every 10th): template frame
| output | ground truth, then full-resolution close-ups of the output and truth mouths. Photos are
driven by a speech clip and show template | output | output close-up. Hard templates show template |
output, whole, then the template's and the output's lower face close up (cut around each frame's own face).

    PYTHONPATH=. python scripts/contact_sheets.py [--engine auto] [--out docs] [--only katie]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import wave
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lipdub.face.landmarks import inter_ocular  # noqa: E402
from lipdub.media.audio import load_audio  # noqa: E402
from lipdub.media.decode import VideoDecoder, pingpong_indices  # noqa: E402
from lipdub.media.probe import probe  # noqa: E402
from lipdub.pipeline import generate  # noqa: E402

log = logging.getLogger("contact_sheets")

VIDEOS = ["katie_talk_512.mp4", "suit_talk_700_vfr.mp4", "map_talk_844.mp4", "blue_talk_700.mp4"]
PHOTOS = ["portrait_474.png", "closeup_256.png", "portrait_624.jpg"]
PHOTO_SPEECH = "en_radio_8s.wav"
JPEG_QUALITY = 92  # a fifth of a PNG's size, and no artefact shows at this setting at full size
PHOTO_SECONDS = 4.0
TILE = 256  # height of a whole-frame tile
ZOOM = 200  # height of a mouth close-up tile (full resolution cut, shown at least 1:1 where it fits)
EVERY = 10
MAX_ROWS = 10
# Hard templates (../shared/corpus): file, first second, seconds used; all driven by HARD_SPEECH.
HARD = {
    "astorfi_3q_view": ("astorfi__lip-reading-deeplearning__data__sample_video.mp4", 0.0, 7.0),
    "tps_head_turn": ("yoyo-nb__Thin-Plate-Spline-Motion-Model__driving.mp4", 0.0, 6.8),
    "edtalk_pose": ("tanshuai0219__EDTalk__test_data__pose_source2.mp4", 0.0, 10.0),
    "latentsync_phone": ("bytedance__LatentSync__demo1_video.mp4", 0.0, 5.0),
    "minimates_podium": ("kleinlee__MiniMates__driving.mp4", 0.0, 8.0),
}
HARD_SPEECH, HARD_SECONDS = "en_speech_12s.wav", 6.0
HARD_EVERY = 15


def _bgr_frames(path: Path, fps: Fraction | None = None) -> list[np.ndarray]:
    info = probe(path)
    rate = fps or info.fps
    return [cv2.cvtColor(f, cv2.COLOR_YUV2BGR_I420) for _, f in VideoDecoder(info, rate).frames()]


def _write_video(frames: list[np.ndarray], fps: Fraction, path: Path) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height = frames[0].shape[1], frames[0].shape[0]
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "12", "preset": "fast"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def _write_wav(samples: np.ndarray, rate: int, path: Path) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())


def _mouth_box(frame: np.ndarray) -> tuple[int, int, int, int] | None:
    """A square around the mouth, found with lipdub's own face mesh (for the close-up column)."""
    from lipdub.face.landmarks import FaceMesh

    with FaceMesh(track=False) as mesh:
        faces = mesh.detect(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    if not faces:
        return None
    lm = faces[0]
    c = lm[[61, 291, 13, 14]].mean(0)
    r = 0.75 * float(inter_ocular(lm))
    h, w = frame.shape[:2]
    x0, y0 = int(max(c[0] - r, 0)), int(max(c[1] - r * 0.8, 0))
    return x0, y0, int(min(c[0] + r, w)), int(min(c[1] + r * 1.0, h))


def _tile(img: np.ndarray, height: int) -> np.ndarray:
    s = height / img.shape[0]
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST
    return cv2.resize(img, (max(1, round(img.shape[1] * s)), height), interpolation=interp)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _sheet(rows: list[list[np.ndarray]]) -> np.ndarray:
    lines = []
    width = max(sum(t.shape[1] + 4 for t in r) for r in rows)
    for r in rows:
        hmax = max(t.shape[0] for t in r)
        line = np.hstack([np.pad(t, ((2, 2 + hmax - t.shape[0]), (2, 2), (0, 0)), constant_values=255) for t in r])
        lines.append(np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255))
    return np.vstack(lines)


def video_sheet(name: str, media: Path, out_dir: Path, engine: str, work: Path) -> Path:
    src = media / name
    info = probe(src)
    frames = _bgr_frames(src)
    split = len(frames) // 2
    template, truth = frames[:split], frames[split:]
    clip = load_audio(src)
    t0 = split / float(info.fps)
    speech = clip.samples[int(t0 * clip.sample_rate) : int(len(truth) / float(info.fps) * clip.sample_rate + t0 *
                                                          clip.sample_rate)]
    tpl, wav, out = work / f"{src.stem}_template.mp4", work / f"{src.stem}_speech.wav", work / f"{src.stem}_out.mp4"
    _write_video(template, info.fps, tpl)
    _write_wav(speech, clip.sample_rate, wav)
    generate(wav, tpl, out, engine=engine)
    output = _bgr_frames(out, info.fps)
    indices = pingpong_indices(len(output), len(template))
    box = _mouth_box(truth[0])
    rows = []
    for k in range(0, min(len(output), len(truth)), EVERY)[:MAX_ROWS]:
        row = [_label(_tile(template[indices[k]], TILE), f"template {indices[k]}"),
               _label(_tile(output[k], TILE), f"output {k}"), _label(_tile(truth[k], TILE), f"truth {k}")]
        if box is not None:
            x0, y0, x1, y1 = box
            row += [_label(_tile(output[k][y0:y1, x0:x1], ZOOM), "output mouth"),
                    _label(_tile(truth[k][y0:y1, x0:x1], ZOOM), "truth mouth")]
        rows.append(row)
    path = out_dir / f"contact_{src.stem}.jpg"
    cv2.imwrite(str(path), _sheet(rows), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return path


def photo_sheet(name: str, media: Path, out_dir: Path, engine: str, work: Path) -> Path:
    src = media / name
    clip = load_audio(media / PHOTO_SPEECH)
    wav = work / f"{src.stem}_speech.wav"
    _write_wav(clip.samples[: int(PHOTO_SECONDS * clip.sample_rate)], clip.sample_rate, wav)
    out = work / f"{src.stem}_out.mp4"
    generate(wav, src, out, engine=engine)
    output = _bgr_frames(out)
    still = cv2.imread(str(src))
    still = still[: still.shape[0] - still.shape[0] % 2, : still.shape[1] - still.shape[1] % 2]
    box = _mouth_box(still)
    rows = []
    step = max(EVERY, math.ceil(len(output) / MAX_ROWS))
    for k in range(0, len(output), step):
        row = [_label(_tile(still, TILE), "template"), _label(_tile(output[k], TILE), f"output {k}")]
        if box is not None:
            x0, y0, x1, y1 = box
            row.append(_label(_tile(output[k][y0:y1, x0:x1], ZOOM), "output mouth"))
        rows.append(row)
    path = out_dir / f"contact_{src.stem}.jpg"
    cv2.imwrite(str(path), _sheet(rows), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return path


def hard_sheet(key: str, corpus: Path, media: Path, out_dir: Path, engine: str, work: Path) -> Path:
    from lipdub.face.analyse import analyse_template

    name, start, seconds = HARD[key]
    info = probe(corpus / name)
    fps = info.fps
    template = [cv2.cvtColor(f, cv2.COLOR_YUV2BGR_I420)
                for _, f in VideoDecoder(info, fps).frames(int(start * fps), int((start + seconds) * fps))]
    tpl, wav, out = work / f"{key}_template.mp4", work / f"{key}_speech.wav", work / f"{key}_out.mp4"
    _write_video(template, fps, tpl)
    clip = load_audio(media / HARD_SPEECH)
    _write_wav(clip.samples[: int(HARD_SECONDS * clip.sample_rate)], clip.sample_rate, wav)
    generate(wav, tpl, out, engine=engine)
    avatar = analyse_template(probe(tpl), fps)
    output = _bgr_frames(out, fps)
    indices = pingpong_indices(len(output), len(template))
    rows = []
    for k in range(0, len(output), HARD_EVERY)[:MAX_ROWS]:
        t = int(indices[k])
        row = [_label(_tile(template[t], TILE), f"template {t}"), _label(_tile(output[k], TILE), f"output {k}")]
        lm = avatar.landmarks[t]
        if not np.isnan(lm[0, 0]):
            # The lower face with room around it: where a ghost jaw line or pasted skin would show.
            iod = float(inter_ocular(lm))
            c = lm[[61, 291, 152, 4]].mean(0)
            h, w = template[t].shape[:2]
            x0, y0 = int(max(c[0] - 1.3 * iod, 0)), int(max(c[1] - 1.1 * iod, 0))
            x1, y1 = int(min(c[0] + 1.3 * iod, w)), int(min(c[1] + 1.5 * iod, h))
            row += [_label(_tile(template[t][y0:y1, x0:x1], TILE), "template face"),
                    _label(_tile(output[k][y0:y1, x0:x1], TILE), "output face")]
        rows.append(row)
    path = out_dir / f"contact_hard_{key}.jpg"
    cv2.imwrite(str(path), _sheet(rows), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media")
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--only", default="", help="only media whose name contains this text")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lipdub-sheets-") as tmp:
        for name in VIDEOS + PHOTOS:
            if args.only not in name or not (args.media / name).exists():
                continue
            make = video_sheet if name in VIDEOS else photo_sheet
            log.info("%s -> %s", name, make(name, args.media, args.out, args.engine, Path(tmp)))
        for key, (name, _, _) in HARD.items():
            if args.only not in key or not (args.corpus / name).exists():
                continue
            log.info("%s -> %s", name, hard_sheet(key, args.corpus, args.media, args.out, args.engine, Path(tmp)))


if __name__ == "__main__":
    main()
