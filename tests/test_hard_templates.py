"""Templates as people shoot them (../shared/corpus): heads that turn and tilt while they talk. A mouth
renderer must change nothing outside the face: no ghost jaw line over the neck, no skin over the wall."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import SHARED, cut_audio, media

from lipdub.face.analyse import analyse_template
from lipdub.face.landmarks import FACE_OVAL, inter_ocular
from lipdub.media.decode import pingpong_indices
from lipdub.media.probe import probe
from lipdub.pipeline import generate

CORPUS = SHARED / "corpus"
HEAD_TURN = "yoyo-nb__Thin-Plate-Spline-Motion-Model__driving.mp4"  # turns away near its end


def corpus(name: str) -> Path:
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"shared corpus clip not found: {path}")
    return path


def cut_frames(src: Path, dst: Path, start: int, stop: int) -> Path:
    """Frames [start, stop) of ``src`` re-encoded near-lossless at 25 fps, without sound."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        ins = inp.streams.video[0]
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = ins.codec_context.width // 2 * 2, ins.codec_context.height // 2 * 2, "yuv420p"
        st.options = {"crf": "10"}
        for k, frame in enumerate(inp.decode(ins)):
            if k >= stop:
                break
            if k >= start:
                img = frame.to_ndarray(format="rgb24")[: st.height, : st.width]
                for p in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return dst


def _luma(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="gray").astype(np.int16) for f in c.decode(video=0)]


def _grown(mask: np.ndarray, r: float) -> np.ndarray:
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * max(1, int(r)) + 1,) * 2)).astype(bool)


def spilled_outside_face(out: Path, template: Path, cache: Path, level: int = 16) -> np.ndarray:
    """Per output frame, the % of a ring around the template frame's face (0.1 to 0.7 eye distances
    outside the mesh's face oval) whose luma the render changed by more than ``level``: the product's
    own equivalent of ../shared/eval/outside_face.py, which knows which template frame each output
    frame was drawn on instead of guessing it."""
    avatar = analyse_template(probe(template), Fraction(25), cache)
    tpl, res = _luma(template), _luma(out)
    idx = pingpong_indices(len(res), len(tpl))
    shares = []
    for k, frame in enumerate(res):
        lm = avatar.landmarks[idx[k]]
        if np.isnan(lm[0, 0]):
            continue
        iod = float(inter_ocular(lm))
        face = np.zeros(frame.shape, np.uint8)
        cv2.fillConvexPoly(face, cv2.convexHull(np.round(lm[FACE_OVAL]).astype(np.int32)), 1)

        ring = _grown(face, 0.7 * iod) & ~_grown(face, 0.1 * iod)
        shares.append(100.0 * float(np.mean(np.abs(frame - tpl[idx[k]])[ring] > level)))
    return np.array(shares)


def test_a_turning_head_gets_nothing_pasted_outside_its_face(tmp_path: Path) -> None:
    """The last three seconds of a talking head that turns: a lower face retrieved from a frame with
    another pose used to bring its jaw line and background along, over the target's neck and wall (a
    fifth of the frames had more than 2% of the ring around the face changed)."""
    template = cut_frames(corpus(HEAD_TURN), tmp_path / "turn.mp4", 90, 169)
    audio = cut_audio(media("en_speech_12s.wav"), tmp_path / "speech.wav", 3.0)
    out = tmp_path / "out.mp4"
    generate(audio, template, out, engine="retrieval", device="cpu", cache_dir=tmp_path / "cache")
    spilled = spilled_outside_face(out, template, tmp_path / "cache")
    assert len(spilled) >= 70
    assert float(np.mean(spilled > 2.0)) <= 0.02, f"{np.flatnonzero(spilled > 2.0).tolist()} spilled"
    # ... and the mouth still speaks: it is not the template's own on most frames.
    avatar = analyse_template(probe(template), Fraction(25), tmp_path / "cache")
    tpl, res = _luma(template), _luma(out)
    idx = pingpong_indices(len(res), len(tpl))
    moved = 0
    for k, frame in enumerate(res):
        lips = avatar.landmarks[idx[k]][[61, 291, 0, 17]]
        (x0, y0), (x1, y1) = lips.min(0).astype(int), lips.max(0).astype(int) + 1
        moved += int(np.abs(frame - tpl[idx[k]])[y0:y1, x0:x1].mean() > 3)
    assert moved > len(res) // 2
