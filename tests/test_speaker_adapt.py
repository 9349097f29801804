"""Speaker adaptation on real talking video: the template's own speech and mouth, measured and cached."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import media

from lipdub.audio import analyse
from lipdub.audio.adapt import MOUTH_AHEAD_MAX_S, SpeakerFit, adapt, cache_path, fit_from_track
from lipdub.face.analyse import analyse_template
from lipdub.face.landmarks import inter_ocular, lip_gap
from lipdub.media.audio import load_audio
from lipdub.media.probe import probe
from lipdub.pipeline import speaker_fit


def picture_delayed(src: Path, dst: Path, frames: int, sound: Path | None = None) -> Path:
    """A copy of ``src`` whose picture is ``frames`` frames late against its (untouched) sound: the first
    frame is shown ``frames`` extra times and the last ``frames`` frames are dropped. With ``sound``, that
    recording replaces the video's own (a voice-over)."""
    with av.open(str(src)) as inp:
        vin = inp.streams.video[0]
        rate = Fraction(vin.average_rate)
        pictures = [f.to_ndarray(format="rgb24") for f in inp.decode(vin)]
    clip = load_audio(sound or src)
    with av.open(str(dst), "w") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = pictures[0].shape[1], pictures[0].shape[0], "yuv420p"
        vs.options = {"crf": "16"}
        aus = out.add_stream("aac", rate=clip.sample_rate, layout="mono")
        for pic in [pictures[0]] * frames + pictures[: len(pictures) - frames]:
            out.mux(vs.encode(av.VideoFrame.from_ndarray(pic, format="rgb24")))
        out.mux(vs.encode(None))
        samples = clip.samples.reshape(1, -1)
        for a in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, a: a + 1024]), format="flt",
                                               layout="mono")
            frame.sample_rate = clip.sample_rate
            frame.pts = a
            out.mux(aus.encode(frame))
        out.mux(aus.encode(None))
    return dst


@pytest.fixture(scope="module")
def katie(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """katie_talk_512 (8 s of her own speech) and its avatar cache folder."""
    return media("katie_talk_512.mp4"), tmp_path_factory.mktemp("avatars")


def test_fit_is_measured_once_and_cached(katie: tuple[Path, Path]) -> None:
    video, cache = katie
    info = probe(video)
    avatar = analyse_template(info, info.fps, cache)
    fit = speaker_fit(avatar, info)
    assert fit is not None
    assert len(fit.opening) >= 4 * 25 and fit.embedding.shape[0] == len(fit.opening)
    assert np.isfinite(fit.opening).all()
    assert abs(fit.offset) <= 10
    assert cache_path(avatar.cache_dir).is_file()
    again = speaker_fit(avatar, info)
    assert again is not None and np.array_equal(again.opening, fit.opening)


def test_own_timing_is_kept_and_a_desynced_recording_is_not_copied(katie: tuple[Path, Path], tmp_path: Path) -> None:
    video, cache = katie
    # katie's mouth moves about 3 frames (120 ms) ahead of her sound: within what viewers accept as in
    # sync, so the output's mouth keeps her timing.
    info = probe(video)
    avatar = analyse_template(info, info.fps, cache)
    own = speaker_fit(avatar, info)
    assert own is not None and own.offset < 0
    assert round(own.lag_s * 25) == own.offset and -MOUTH_AHEAD_MAX_S <= own.lag_s < 0
    drive = analyse(load_audio(media("en_speech_12s.wav")), 25.0)
    out = adapt(drive, own).open
    r = {lag: np.corrcoef(drive.open[lag:], out[: len(out) - lag])[0, 1] for lag in range(0, 8)}
    assert max(r, key=r.get) == -own.offset  # the output's mouth leads the drive's sound as hers does

    # The same recording with its picture 8 frames late: the sound/mouth pairing is corrected by the
    # offset found, but 200 ms of lag is a broken recording, not a habit: nothing is copied.
    late = probe(picture_delayed(video, tmp_path / "late.mp4", 8))
    fit = speaker_fit(analyse_template(late, late.fps, cache), late)
    assert fit is not None
    assert fit.offset - own.offset == 8
    assert fit.lag_s == 0.0

    # Three seconds of her own recording are too little to learn the mouth's shape from, not its timing.
    speech = analyse(load_audio(video), 25.0)
    gap = lip_gap(avatar.landmarks) / np.maximum(inter_ocular(avatar.landmarks), 1e-6)
    short = fit_from_track(speech.fit_length(75), gap[:75], avatar.found[:75])
    assert short is not None and not len(short.opening)
    assert short.lag_s < 0


def test_a_voice_over_teaches_neither_timing_nor_shape(katie: tuple[Path, Path], tmp_path: Path) -> None:
    # katie's picture with another speaker's speech: her mouth does not follow it at any delay, so the
    # output keeps the generic model's timing and shape.
    video, cache = katie
    dubbed = picture_delayed(video, tmp_path / "voice_over.mp4", 0, sound=media("en_speech_12s.wav"))
    info = probe(dubbed)
    assert speaker_fit(analyse_template(info, info.fps, cache), info) is None


def test_delayed_track_rests_where_it_has_nothing_to_show() -> None:
    t = analyse(load_audio(media("en_speech_12s.wav")), 25.0)
    late, early = t.delayed(4), t.delayed(-4)
    assert len(late) == len(early) == len(t)
    assert np.array_equal(late.open[4:], t.open[:-4]) and np.array_equal(early.open[:-4], t.open[4:])
    assert not late.speech[:4].any() and not early.speech[-4:].any()
    assert (late.open[:4] == 0).all() and (early.open[-4:] == 0).all()
    assert late.embedding is not None and np.array_equal(late.embedding[4:], t.embedding[:-4])


def test_adapt_moves_only_speaking_frames(katie: tuple[Path, Path]) -> None:
    video, cache = katie
    info = probe(video)
    fit = speaker_fit(analyse_template(info, info.fps, cache), info)
    assert isinstance(fit, SpeakerFit)
    drive = analyse(load_audio(media("en_speech_12s.wav")), 25.0)
    adapted = adapt(drive, fit)
    base = drive.delayed(round(fit.lag_s * 25))  # the timing adapted alone
    assert len(adapted) == len(drive)
    assert np.array_equal(adapted.open[~base.speech], base.open[~base.speech])
    assert np.all((adapted.open >= 0) & (adapted.open <= 1))
    moved = np.abs(adapted.open - base.open)[base.speech]
    assert moved.mean() > 0.01
    # It adapts the generic opening rather than replacing it.
    assert np.corrcoef(adapted.open, base.open)[0, 1] > 0.7


def test_photos_and_silent_templates_use_the_generic_model(tmp_path: Path) -> None:
    info = probe(media("portrait_624.jpg"))
    assert speaker_fit(analyse_template(info, Fraction(25), tmp_path), info) is None
