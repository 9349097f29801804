"""Retrieval engine: source choice (Viterbi), silence, engine auto-choice, bank cache, pixels outside the mask."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from conftest import cut_audio, cut_video, media, wide_shot

from lipdub.audio.track import MouthTrack
from lipdub.device import select_device
from lipdub.face.analyse import analyse_template
from lipdub.face.landmarks import inter_ocular
from lipdub.media.audio import AudioClip
from lipdub.media.decode import TemplateFrames, pingpong_indices
from lipdub.media.frames import crop_i420, planes
from lipdub.media.probe import probe
from lipdub.pipeline import _render_chunk, generate
from lipdub.render import RenderContext, engine_for
from lipdub.render import bank as bank_mod
from lipdub.render.masks import lower_face_polygon, polygon_alpha
from lipdub.render.retrieval import RetrievalRenderer, remap_i420
from lipdub.render.select import Costs, candidates, map_targets, unary_costs, viterbi

N_TEMPLATE = 50


def fake_bank(gap: np.ndarray) -> SimpleNamespace:
    n = len(gap)
    return SimpleNamespace(frames=np.arange(n), gap=gap.astype(np.float32), width=np.full(n, 0.8, np.float32),
                           pose=np.zeros((n, 4), np.float32), light=np.zeros((n, 3), np.float32),
                           teeth=np.zeros(n, np.float32))


def test_viterbi_matches_targets_and_prefers_neighbouring_frames() -> None:
    rng = np.random.default_rng(0)
    gap = np.clip(0.08 + 0.07 * np.sin(np.arange(200) / 4.0) + rng.normal(0, 0.005, 200), 0, None)
    bank = fake_bank(gap)
    t = 120
    target_gap = np.clip(0.08 + 0.07 * np.sin(np.arange(t) / 5.0 + 1.0), 0, None).astype(np.float32)
    targets = SimpleNamespace(gap=target_gap, width=np.full(t, 0.8, np.float32), speech=np.ones(t, bool), rest=0.0)
    c = Costs(base_pose_weight=0.0, same_frame_bonus=0.0)
    unary = unary_costs(targets, bank, np.full(t, -1), np.zeros((t, 4), np.float32), c)
    cand, cost = candidates(targets, bank, np.full(t, -1), np.zeros((t, 4), np.float32), c, block=50)
    # Blocks give the same candidates as the whole matrix would.
    np.testing.assert_allclose(np.sort(cost, 1), np.sort(unary, 1)[:, : cost.shape[1]], rtol=1e-6)
    path = viterbi(cand, cost, bank, targets.speech, c)
    err = np.abs(gap[path] - target_gap)
    assert np.median(err) < 0.015
    steps = np.diff(path)
    # Mostly played forwards (or held); far jumps are the exception, not every frame.
    assert np.mean((steps >= -1) & (steps <= 3)) > 0.6
    greedy = np.argmin(unary, 1)
    assert np.mean(np.abs(np.diff(path)) > 3) < np.mean(np.abs(np.diff(greedy)) > 3)


def test_silence_maps_to_the_resting_mouth() -> None:
    gap = np.linspace(0.0, 0.2, 100)
    n = 50
    o = np.zeros(n, np.float32)
    o[10:30] = np.linspace(0.2, 0.9, 20)
    z = np.zeros(n, np.float32)
    track = MouthTrack(25.0, o, z, z.copy(), z.copy(), o > 0)
    targets = map_targets(track, gap, np.full(100, 0.8))
    assert np.all(targets.gap[:10] == targets.rest) and np.all(targets.gap[30:] == targets.rest)
    assert targets.rest <= np.quantile(gap, 0.06)
    assert np.all(np.diff(targets.gap[10:30]) >= 0)  # monotone in the track's opening
    assert targets.gap[29] > np.quantile(gap, 0.9)


@pytest.fixture(scope="module")
def short_template(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The first ``N_TEMPLATE`` frames of a real talking video, analysed."""
    path = cut_video(media("katie_talk_512.mp4"), tmp_path_factory.mktemp("tpl") / "katie_short.mp4", N_TEMPLATE)
    info = probe(path)
    avatar = analyse_template(info, Fraction(25), tmp_path_factory.mktemp("cache"))
    return info, avatar


def _context(info, avatar, n_out: int, open_: np.ndarray) -> RenderContext:
    z = np.zeros(n_out, np.float32)
    track = MouthTrack(25.0, open_.astype(np.float32), z, z.copy(), z.copy(), open_ > 0.02)
    return RenderContext(avatar=avatar, mouth=track, audio=AudioClip(np.zeros(16000, np.float32)), fps=25.0,
                         template_indices=pingpong_indices(n_out, avatar.n_frames), template=info)


def test_auto_picks_retrieval_for_talking_video_and_warp_for_photo(short_template: tuple,
                                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    _, avatar = short_template
    assert engine_for("auto", avatar) == "retrieval"
    photo = analyse_template(probe(media("portrait_474.png")), Fraction(25), tmp_path_factory.mktemp("cache"))
    assert not RetrievalRenderer.suits(photo)
    assert engine_for("auto", photo) == "warp"
    still = SimpleNamespace(**{**avatar.__dict__})
    still.landmarks = np.repeat(avatar.landmarks[:1], avatar.n_frames, 0)  # a video whose mouth never moves
    still.found = avatar.found
    assert not RetrievalRenderer.suits(still)  # type: ignore[arg-type]


def test_bank_is_cached_with_the_avatar(short_template: tuple, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    info, avatar = short_template
    first = bank_mod.mouth_bank(avatar, info)
    assert len(first) == int(avatar.found.sum())
    assert first.images.shapes[:, 0].min() > 0.5 * float(np.median(inter_ocular(avatar.landmarks[avatar.found])))

    def fail(*_: object) -> None:
        raise AssertionError("the bank was rebuilt")

    monkeypatch.setattr(bank_mod, "build_bank", fail)
    second = bank_mod.mouth_bank(avatar, info)
    assert isinstance(second.images, bank_mod.BankImages)  # on disk, read per entry: memory stays flat
    np.testing.assert_array_equal(first.gap, second.gap)
    np.testing.assert_array_equal(np.asarray(first.images[3]), np.asarray(second.images[3]))


def test_bank_reads_where_there_is_no_pread(short_template: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no os.pread: entries read by seek and read under a lock come out the same, also
    when the render and encoder threads read at once."""
    from concurrent.futures import ThreadPoolExecutor

    info, avatar = short_template
    bank = bank_mod.mouth_bank(avatar, info)
    expected = [bank.images.i420(j).copy() for j in range(len(bank))]
    monkeypatch.delattr(bank_mod.os, "pread")
    order = np.random.default_rng(1).permutation(np.tile(np.arange(len(bank)), 6))
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(bank.images.i420, order))
    for j, image in zip(order, got, strict=True):
        np.testing.assert_array_equal(image, expected[j])


def test_pixels_outside_the_lower_face_equal_the_template(short_template: tuple) -> None:
    info, avatar = short_template
    n_out = 48
    open_ = np.clip(0.5 + 0.5 * np.sin(np.arange(n_out) / 2.5), 0, 1) * (np.arange(n_out) % 24 < 18)
    ctx = _context(info, avatar, n_out, open_)
    renderer = RetrievalRenderer(select_device("cpu"))
    renderer.prepare(ctx)
    frames = list(TemplateFrames(info, Fraction(25), avatar.n_frames).frames_for(ctx.template_indices))
    changed = 0
    worst = np.inf
    for start in range(0, n_out, 16):
        chunk = frames[start : start + 16]
        out, missing = _render_chunk(chunk, start, ctx.template_indices, avatar, renderer)
        assert missing == 0
        for k, (before, after) in enumerate(zip(chunk, (o.packed() for o in out))):
            lm = avatar.landmarks[ctx.template_indices[start + k]]
            h, w = avatar.height, avatar.width
            # The lower-face region with room for a lowered chin and the feathered edge.
            inside = polygon_alpha(lower_face_polygon(lm, chin_margin=0.5), (h, w), 0) > 0
            inside = np.pad(inside, ((0, h // 2), (0, 0)))  # I420: chroma rows follow the luma rows
            inside[h:] = True  # chroma planes: compared via luma only (checked below on Y)
            diff = (after.astype(np.float64) - before.astype(np.float64))[~inside]
            mse = float(np.mean(diff ** 2))
            worst = min(worst, 10 * np.log10(255 ** 2 / mse) if mse > 0 else np.inf)
            changed += int(np.any(after[:h] != before[:h]))
    assert worst >= 45.0
    assert changed > n_out // 3  # and it did change the mouth on many frames


def test_retrieval_choices_follow_the_track(short_template: tuple) -> None:
    info, avatar = short_template
    n_out = 60
    open_ = np.zeros(n_out)
    open_[20:40] = 0.8
    ctx = _context(info, avatar, n_out, open_)
    renderer = RetrievalRenderer(select_device("cpu"))
    renderer.prepare(ctx)
    gaps = renderer.bank.gap[renderer.path]  # type: ignore[union-attr]
    assert gaps[25:35].mean() > gaps[:15].mean() + 0.03
    # Silence: the resting mouth, held still rather than quivering.
    assert np.std(gaps[:15]) < 0.02 and np.std(gaps[45:]) < 0.02


def test_logs_plan(short_template: tuple, caplog: pytest.LogCaptureFixture) -> None:
    info, avatar = short_template
    ctx = _context(info, avatar, 20, np.full(20, 0.4))
    with caplog.at_level(logging.INFO, logger="lipdub.render.retrieval"):
        RetrievalRenderer(select_device("cpu")).prepare(ctx)
    assert any("Retrieval plan" in r.getMessage() for r in caplog.records)


def test_a_new_template_is_decoded_once_and_its_bank_matches_a_rebuilt_one(
        short_template: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The analysis pass fills the mouth bank; the separate build (for avatars analysed before) agrees."""
    info, _ = short_template

    def fail(*_: object) -> None:
        raise AssertionError("the bank was built by a second decode")

    monkeypatch.setattr(bank_mod, "build_bank", fail)
    audio = cut_audio(media("en_radio_8s.wav"), tmp_path / "a.wav", 1.0)
    result = generate(audio, info.path, tmp_path / "out.mp4", device="cpu", engine="retrieval",
                      cache_dir=tmp_path / "cache")
    assert result.engine == "retrieval"
    avatar = analyse_template(info, Fraction(25), tmp_path / "cache")
    from_analysis = bank_mod.load_bank(avatar, bank_mod.bank_folder(avatar))
    assert from_analysis is not None and len(from_analysis) == int(avatar.found.sum())
    monkeypatch.undo()
    rebuilt = bank_mod.build_bank(avatar, info, tmp_path / "rebuilt")
    np.testing.assert_array_equal(from_analysis.frames, rebuilt.frames)
    np.testing.assert_allclose(from_analysis.gap, rebuilt.gap, atol=1e-6)
    # Colour descriptors: measured with the raw landmarks while decoding, with the smoothed ones here.
    assert np.abs(from_analysis.teeth - rebuilt.teeth).mean() < 0.02
    np.testing.assert_allclose(from_analysis.teeth, rebuilt.teeth, atol=0.1)
    np.testing.assert_allclose(from_analysis.light, rebuilt.light, atol=3.0)
    # Same pixels wherever both crops cover the frame.
    j = len(rebuilt) // 2
    a, b = from_analysis.images[j], rebuilt.images[j]
    (ax, ay), (bx, by) = from_analysis.origin[j], rebuilt.origin[j]
    x0, y0 = max(ax, bx), max(ay, by)
    x1, y1 = min(ax + a.shape[1], bx + b.shape[1]), min(ay + a.shape[0], by + b.shape[0])
    assert x1 - x0 > 50 and y1 - y0 > 50
    np.testing.assert_array_equal(a[y0 - ay:y1 - ay, x0 - ax:x1 - ax], b[y0 - by:y1 - by, x0 - bx:x1 - bx])


def test_torch_kernels_render_what_the_opencv_path_renders(short_template: tuple) -> None:
    """The GPU path's kernels, run here on the CPU, give the same frames as the OpenCV path."""
    info, avatar = short_template
    n_out = 32
    open_ = np.clip(0.5 + 0.5 * np.sin(np.arange(n_out) / 2.5), 0, 1)
    frames = list(TemplateFrames(info, Fraction(25), avatar.n_frames).frames_for(
        pingpong_indices(n_out, avatar.n_frames)))
    outputs = []
    for options in ({}, {"kernels": "torch"}):
        ctx = _context(info, avatar, n_out, open_)
        renderer = RetrievalRenderer(select_device("cpu"), **options)
        renderer.prepare(ctx)
        assert renderer.use_torch == bool(options)
        out: list[np.ndarray] = []
        for start in range(0, n_out, 16):
            out += [o.packed() for o in _render_chunk(frames[start:start + 16], start, ctx.template_indices, avatar,
                                                      renderer)[0]]
        outputs.append(out)
    changed = 0
    for before, a, b in zip(frames, *outputs):
        changed += int(np.any(a != before))
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        assert mse == 0 or 10 * np.log10(255 ** 2 / mse) > 38.0
    assert changed > n_out // 3


def test_bank_writer_makes_nothing_until_fed_and_sweeps_banks_left_by_killed_jobs(tmp_path: Path) -> None:
    import os
    import time

    stale = tmp_path / (bank_mod.TEMP_PREFIX + "killed")
    stale.mkdir()
    (stale / "images.u8").write_bytes(b"\0" * 64)
    old = time.time() - bank_mod.STALE_TEMP_S - 60
    for p in (stale / "images.u8", stale):
        os.utime(p, (old, old))
    running = tmp_path / (bank_mod.TEMP_PREFIX + "running")  # another job writing right now
    running.mkdir()
    (running / "images.u8").write_bytes(b"\0" * 64)

    idle = bank_mod.BankWriter(tmp_path, 64, 64)
    idle(0, np.zeros((96, 64), np.uint8), None)  # no face: nothing to store
    idle.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([stale.name, running.name])

    writer = bank_mod.BankWriter(tmp_path, 64, 64)
    lm = np.zeros((478, 2), np.float32)
    lm[:, 0] = np.linspace(10, 50, 478)
    lm[:, 1] = np.linspace(10, 50, 478)[::-1]
    writer(0, np.zeros((96, 64), np.uint8), lm)
    assert len(writer) == 1 and not stale.exists() and running.exists()
    writer.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name]


def test_i420_resampling_keeps_luma_and_chroma_aligned() -> None:
    """A map shifted by (6, 4) pixels moves the luma by as many pixels and the chroma by (3, 2) samples."""
    with av.open(str(media("katie_talk_512.mp4"))) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="yuv420p")
    src = crop_i420(frame, (100, 100, 300, 260))
    h, w = 120, 160
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    sy, su, sv = planes(src)
    for dx, dy in ((0, 0), (6, 4)):
        out = remap_i420(src, np.dstack([gx + dx, gy + dy]), (20, 20, 100, 80))  # bicubic inside that box
        oy, ou, ov = planes(out)
        np.testing.assert_array_equal(oy, sy[dy:dy + h, dx:dx + w])
        np.testing.assert_array_equal(ou, su[dy // 2:dy // 2 + h // 2, dx // 2:dx // 2 + w // 2])
        np.testing.assert_array_equal(ov, sv[dy // 2:dy // 2 + h // 2, dx // 2:dx // 2 + w // 2])


def test_average_ranks_match_scipy() -> None:
    from scipy.stats import rankdata

    from lipdub.render.select import average_ranks

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 500):
        for x in (rng.random(n), np.round(rng.random(n) * 4) / 4, np.zeros(n)):  # distinct, tied, all equal
            assert np.array_equal(average_ranks(x), rankdata(x))


def _face_near_the_edges(dst: Path) -> Path:
    """Katie's clip cropped so her mouth and chin sit at the left and bottom edges (a tight selfie)."""
    with av.open(str(media("katie_talk_512.mp4"))) as src, av.open(str(dst), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 312, 420, "yuv420p"
        for f in src.decode(video=0):
            img = np.ascontiguousarray(f.to_ndarray(format="rgb24")[40:460, 200:512])
            for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return dst


def test_a_face_at_the_frame_edge_gets_no_mouth_from_beyond_it(tmp_path: Path) -> None:
    """Each bank entry's crop is cut by the frame's edge. A source cut where its output frame still has
    face was once pasted anyway, and resampling filled the gap with its edge row repeated: a block of
    streaks under the chin. Sources must cover what their frame needs, and whatever still falls beyond
    a source's crop must come from the frame itself (alpha 0)."""
    from lipdub.render.bank import image_extent, needed_extent
    from lipdub.render.retrieval import fade_beyond_source
    from lipdub.render.select import missing_region

    info = probe(_face_near_the_edges(tmp_path / "edge.mp4"))
    avatar = analyse_template(info, Fraction(25), tmp_path / "cache")
    n_out = 120
    open_ = 0.45 + 0.4 * np.sin(np.arange(n_out) / 3.0)  # talking all along: every source is in play
    ctx = _context(info, avatar, n_out, open_)
    renderer = RetrievalRenderer(select_device("cpu"))
    renderer.prepare(ctx)
    bank = renderer.bank
    assert bank is not None
    reach = np.array([image_extent(bank.landmarks(avatar, j), int(w), int(h))
                      for j, (h, w) in enumerate(bank.images.shapes)])
    need = np.array([needed_extent(avatar.landmarks[int(f)], avatar.width, avatar.height)
                     for f in ctx.template_indices])

    def worst(path: np.ndarray) -> float:
        return float(missing_region(need, reach[path]).max())

    blind, _ = RetrievalRenderer.plan(ctx, bank, Costs(edge_tol=float("inf")))  # the choice as it was
    assert worst(blind) > 0.15  # the premise: this template does tempt the plan into cut sources
    assert worst(renderer.path) < 0.08  # in the mask's faint outer feather, and faded out at the cut

    alpha = np.ones((40, 60), np.float32)
    gx, gy = np.meshgrid(np.arange(60, dtype=np.float32) - 20.0, np.arange(40, dtype=np.float32) + 20.0)
    faded = fade_beyond_source(alpha, np.dstack([gx, gy]), 100, 100, feather=8.0)
    assert np.all(faded[:, :20] == 0) and np.all(faded[:, 28:] == 1)  # the source starts at column 20


def _luma(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="gray").astype(np.int16) for f in c.decode(video=0)]


def test_a_small_face_in_a_wide_shot_gets_its_mouth_rendered(tmp_path: Path) -> None:
    """A presenter whose face is a tenth of a 1280x720 frame's width: the render used to stop at once with
    "No face was found". Now each frame's mouth is rendered and the rest of the wide shot is left alone."""
    template = wide_shot(tmp_path / "wide.mp4", 50)
    audio = cut_audio(media("en_radio_8s.wav"), tmp_path / "speech.wav", 2.0)
    out = tmp_path / "out.mp4"
    generate(audio, template, out, engine="retrieval", device="cpu")
    avatar = analyse_template(probe(template), Fraction(25))
    assert avatar.found.all()
    before, after = _luma(template), _luma(out)
    assert len(after) >= 48
    mouth_changed = 0
    for k, frame in enumerate(after[:50]):  # the first 50 output frames are the template's, in order
        lm = avatar.landmarks[k]
        iod = float(inter_ocular(lm))
        (x0, y0), (x1, y1) = lm.min(0) - iod, lm.max(0) + iod
        diff = np.abs(frame - before[k])
        outside = diff.copy()
        outside[int(y0):int(y1), int(x0):int(x1)] = 0
        assert outside.max() <= 12  # codec noise only, away from the face
        mouth = lm[[61, 291, 13, 14, 17]]
        (mx0, my0), (mx1, my1) = mouth.min(0).astype(int), mouth.max(0).astype(int) + 1
        mouth_changed += int(diff[my0:my1, mx0:mx1].mean() > 3)
    assert mouth_changed > 50 // 3
