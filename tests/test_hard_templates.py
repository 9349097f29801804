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

from lipdub.audio.track import MouthTrack
from lipdub.device import select_device
from lipdub.face.analyse import analyse_template
from lipdub.face.landmarks import FACE_OVAL, eye_centres, inter_ocular
from lipdub.media.audio import AudioClip
from lipdub.media.decode import pingpong_indices
from lipdub.media.probe import probe
from lipdub.pipeline import generate
from lipdub.render import RenderContext
from lipdub.render.retrieval import RetrievalRenderer

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
    assert moved > len(res) // 3


@pytest.fixture(scope="module")
def head_turn(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The head-turn clip's last three seconds, analysed, with a retrieval engine prepared for 150 frames of
    steady talking."""
    root = tmp_path_factory.mktemp("turn")
    template = cut_frames(corpus(HEAD_TURN), root / "turn.mp4", 90, 169)
    info = probe(template)
    avatar = analyse_template(info, Fraction(25), root / "cache")
    n_out = 150
    open_ = (0.45 + 0.4 * np.sin(np.arange(n_out) / 2.7)).astype(np.float32)
    z = np.zeros(n_out, np.float32)
    track = MouthTrack(25.0, open_, z, z.copy(), z.copy(), open_ > 0.02)
    ctx = RenderContext(avatar=avatar, mouth=track, audio=AudioClip(np.zeros(16000, np.float32)), fps=25.0,
                        template_indices=pingpong_indices(n_out, avatar.n_frames), template=info)
    renderer = RetrievalRenderer(select_device("cpu"))
    renderer.prepare(ctx)
    return ctx, renderer


def _jaw_in_eye_frame(lm: np.ndarray) -> np.ndarray:
    """The jaw points below the ears relative to the eyes (unit: eye distance), as the test sees them."""
    le, re = eye_centres(lm)
    ex = (re - le) / np.linalg.norm(re - le, axis=-1, keepdims=True)
    ey = np.stack([-ex[..., 1], ex[..., 0]], -1)
    d = (lm[..., [93, 132, 361, 323], :] - ((le + re) / 2)[..., None, :]) / inter_ocular(lm)[..., None, None]
    return np.stack([(d * ex[..., None, :]).sum(-1), (d * ey[..., None, :]).sum(-1)], -1)


def test_sources_are_chosen_with_a_jaw_line_like_the_frame_they_are_pasted_on(head_turn: tuple) -> None:
    """Retrieval used to weigh only the mouth and a rough head pose: on a turning head it pasted lower faces
    whose jaw ran elsewhere than the frame's (their jaw line then had to be bent onto the frame's)."""
    ctx, renderer = head_turn
    av = ctx.avatar
    base = ctx.template_indices
    src = renderer.bank.frames[renderer.path]
    gap = np.linalg.norm(_jaw_in_eye_frame(av.landmarks[src]) - _jaw_in_eye_frame(av.landmarks[base]), axis=-1)
    assert float(np.sqrt((gap ** 2).mean())) < 0.065, f"jaw lines {np.sqrt((gap ** 2).mean()):.3f} eye distances apart"
    # ... while the mouth still follows the track: wide where it asks for wide.
    wide, narrow = ctx.mouth.open > 0.7, ctx.mouth.open < 0.2
    assert renderer.bank.gap[renderer.path][wide].mean() > renderer.bank.gap[renderer.path][narrow].mean() + 0.05


def test_where_no_source_fits_the_frame_fades_smoothly_to_its_own_mouth(head_turn: tuple,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A source whose pose is far from the frame's is not pasted: the frame fades to its own mouth, over
    several frames (no flicker), and the render logs how many frames took each path."""
    import logging

    from lipdub.render.retrieval import FADE_FRAMES, MISFIT_BAD
    from lipdub.render.select import pose_misfit

    ctx, renderer = head_turn
    weight = renderer.paste_weight
    assert weight.shape == (ctx.n_frames,) and weight.min() >= 0.0 and weight.max() <= 1.0
    assert np.abs(np.diff(weight)).max() <= 1.0 / (2 * FADE_FRAMES + 1) + 1e-6  # ramps, never a jump
    # A plan whose every source is the worst-posed one in the bank: no frame may show it.
    av = ctx.avatar
    from lipdub.render.bank import jaw_descriptor, pose_descriptor

    lm = av.landmarks[renderer.bank.frames]
    ref = float(np.median(inter_ocular(lm)))
    misfit = pose_misfit(pose_descriptor(lm, ref)[:, None], pose_descriptor(lm, ref)[None, :],
                         jaw_descriptor(lm)[:, None], jaw_descriptor(lm)[None, :])
    a, b = np.unravel_index(int(np.argmax(misfit)), misfit.shape)
    assert misfit[a, b] > MISFIT_BAD  # the premise: the clip turns far enough
    worst = np.full(ctx.n_frames, b)
    frames_of_a = ctx.template_indices == renderer.bank.frames[a]
    assert frames_of_a.any()
    faded = RetrievalRenderer.paste_weights(ctx, renderer.bank, worst)
    assert np.all(faded[frames_of_a] == 0.0)
    with caplog.at_level(logging.INFO, logger="lipdub.render.retrieval"):
        renderer.close()
    assert any("Retrieval paths" in r.getMessage() for r in caplog.records)
