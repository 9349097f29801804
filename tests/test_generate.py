"""`lipdub generate` end to end on the shared media, through the CLI and the library call."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
import soundfile as sf
from conftest import (
    AUDIOS,
    PHOTOS,
    VIDEOS,
    audio_duration,
    cut_audio,
    media,
    needs_media,
    run_cli,
    video_facts,
)

import lipdub
from lipdub.face.landmarks import FaceMesh, lip_gap
from lipdub.pipeline import Progress

pytestmark = needs_media

FACES = VIDEOS + PHOTOS
# Every template and every audio file appears at least once (the full matrix is bench/matrix.py);
# the 60-second speech goes with the smallest template to keep the suite quick.
PAIRS = [("katie_talk_512.mp4", "en_radio_8s.wav"), ("suit_talk_700_vfr.mp4", "zh_news_8s.wav"),
         ("map_talk_844.mp4", "en_speech_12s.wav"), ("blue_talk_700.mp4", "zh_speech_15s.wav"),
         ("portrait_474.png", "zh_news_8s.wav"), ("closeup_256.png", "en_speech_60s.wav"),
         ("portrait_624.jpg", "en_radio_8s.wav")]
assert {f for f, _ in PAIRS} == set(FACES) and {a for _, a in PAIRS} == set(AUDIOS)


def check_output(out, audio_path, fps: float | None = None) -> dict:
    facts = video_facts(out)
    assert facts["video_codec"] == "h264" and facts["audio_codec"] == "aac"
    assert facts["pix_fmt"] == "yuv420p" and facts["width"] % 2 == 0 and facts["height"] % 2 == 0
    dur = audio_duration(audio_path)
    rate = fps or facts["fps"]
    assert facts["frames"] == math.ceil(dur * rate - 1e-6)
    assert abs(facts["frames"] / rate - dur) <= 1 / rate + 1e-6
    assert abs(facts["audio_duration"] - dur) < 0.1
    return facts


@pytest.mark.parametrize("face,audio", PAIRS, ids=[f"{f}+{a}" for f, a in PAIRS])
def test_generate_cli(tmp_path, face: str, audio: str) -> None:
    out = tmp_path / "out.mp4"
    r = run_cli("generate", "--audio", str(media(audio)), "--face", str(media(face)), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "[INFO] Using device: cpu (" in r.stderr
    facts = check_output(out, media(audio), fps=25.0 if face in PHOTOS else None)
    assert not list(tmp_path.glob(".*partial*")), "temporary file left behind"
    if face in PHOTOS:
        assert facts["fps"] == 25


@pytest.mark.parametrize("ext", [".mp3", ".m4a"])
def test_generate_compressed_audio(tmp_path, ext: str) -> None:
    audio = cut_audio(media("en_speech_12s.wav"), tmp_path / f"speech{ext}", 4.0)
    out = tmp_path / "out.mp4"
    r = run_cli("generate", "--audio", str(audio), "--face", str(media("katie_talk_512.mp4")), "-o", str(out))
    assert r.returncode == 0, r.stderr
    check_output(out, audio)


def test_mouth_follows_speech_and_rests_in_silence(tmp_path) -> None:
    """The rendered mouth opens in speech and is closed in the silence appended after it."""
    speech = cut_audio(media("en_speech_12s.wav"), tmp_path / "speech.wav", 3.0)
    padded = tmp_path / "padded.wav"
    x, rate = sf.read(speech, dtype="float32", always_2d=True)
    sf.write(padded, np.concatenate([x, np.zeros((rate * 2, x.shape[1]), np.float32)]), rate)
    out = tmp_path / "out.mp4"
    lipdub.generate(padded, media("portrait_474.png"), out, device="cpu")
    gaps = []
    with av.open(str(out)) as c, FaceMesh(track=True) as mesh:
        for frame in c.decode(video=0):
            faces = mesh.detect(frame.to_ndarray(format="rgb24"))
            gaps.append(float(lip_gap(faces[0])) if faces else np.nan)
    gaps = np.array(gaps)
    fps = 25
    talk, rest = gaps[: 3 * fps], gaps[int(3.5 * fps):]
    assert np.isfinite(gaps).mean() > 0.95
    assert np.nanpercentile(talk, 90) > 3 * max(np.nanpercentile(rest, 90), 1.0)
    assert np.nanstd(rest) < 1.0, "the mouth quivers in silence"


def test_library_call_progress_and_cache(tmp_path, caplog) -> None:
    audio = cut_audio(media("en_radio_8s.wav"), tmp_path / "a.wav", 2.0)
    seen: list[Progress] = []
    result = lipdub.generate(audio, media("blue_talk_700.mp4"), tmp_path / "one.mp4", device="cpu",
                             progress=seen.append)
    assert result.output.exists() and result.device.startswith("cpu") and result.engine
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"analysing audio", "analysing template", "rendering"} <= {p.stage for p in seen}
    caplog.set_level("INFO")
    lipdub.generate(audio, media("blue_talk_700.mp4"), tmp_path / "two.mp4", device="cpu")
    assert "avatar cache" in caplog.text


def test_long_audio_loops_template_pingpong(tmp_path) -> None:
    """Audio longer than the template: the template plays forward then backward, no jump cut."""
    out = tmp_path / "out.mp4"
    lipdub.generate(media("en_speech_12s.wav"), media("map_talk_844.mp4"), out, device="cpu")
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="gray")[::8, ::8].astype(np.float32) for f in c.decode(video=0)]
    steps = np.array([np.abs(a - b).mean() for a, b in zip(frames, frames[1:])])
    # No step between consecutive frames is far larger than normal motion (a jump cut would be).
    assert steps.max() < 6 * np.median(steps) + 2


def test_frames_without_a_face_pass_through(tmp_path) -> None:
    """A template whose middle frames show no face still renders; those frames are left as they were."""
    src = media("katie_talk_512.mp4")
    tpl = tmp_path / "gap.mp4"
    with av.open(str(src)) as inp, av.open(str(tpl), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 512, 512, "yuv420p"
        st.options = {"crf": "12"}
        for i, frame in enumerate(inp.decode(video=0)):
            if i >= 60:
                break
            img = frame.to_ndarray(format="rgb24")
            if 20 <= i < 30:
                img = np.full_like(img, 90)  # a cut to a blank card
            for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    audio = cut_audio(media("en_radio_8s.wav"), tmp_path / "a.wav", 2.0)
    result = lipdub.generate(audio, tpl, tmp_path / "out.mp4", device="cpu")
    assert result.faces_missing == 10
    with av.open(str(tmp_path / "out.mp4")) as c:
        frames = [f.to_ndarray(format="gray") for f in c.decode(video=0)]
    assert all(abs(float(frames[i].mean()) - 90) < 3 for i in range(20, 30))


def test_cli_info() -> None:
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    assert "libx264" in r.stdout and "face mesh model" in r.stdout and "bundled" in r.stdout


def test_an_animated_transparent_face_is_rendered_as_its_first_frame(tmp_path) -> None:
    """A cut-out portrait as an animated WebP (transparent background): rendered, its first frame speaking
    over grey, where it was refused as a damaged file."""
    from PIL import Image

    rgba = np.asarray(Image.open(media("portrait_474.png")).convert("RGBA")).copy()
    rgba[:24, :, :] = 0  # a transparent band along the top
    first = Image.fromarray(rgba)
    face = tmp_path / "wave.webp"
    first.save(face, save_all=True, append_images=[first.rotate(10), first.rotate(20)], duration=100, loop=0,
               lossless=True)
    audio = cut_audio(media("en_radio_8s.wav"), tmp_path / "a.wav", 1.0)
    out = tmp_path / "out.mp4"
    result = lipdub.generate(audio, face, out, device="cpu")
    assert result.faces_missing == 0
    facts = video_facts(out)
    assert facts["width"] == first.width - first.width % 2 and abs(facts["duration"] - 1.0) < 0.1, facts
    with av.open(str(out)) as c:
        top = next(c.decode(video=0)).to_ndarray(format="rgb24")[2:20, 8:-8].astype(np.float32)
    assert np.abs(top - 128).mean() < 8  # grey, not black
