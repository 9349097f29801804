"""Bad input gets one actionable line and a non-zero exit, never a traceback."""

from __future__ import annotations

import shutil

import av
import numpy as np
import pytest
from conftest import media, needs_media, run_cli

pytestmark = needs_media


def assert_clean_error(r, *needles: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("[ERROR]")]
    assert len(errors) == 1, r.stderr
    for n in needles:
        assert n.lower() in errors[0].lower(), errors[0]


def gen(tmp_path, audio, face):
    return run_cli("generate", "--audio", str(audio), "--face", str(face), "-o", str(tmp_path / "o.mp4"))


def test_missing_file(tmp_path) -> None:
    assert_clean_error(gen(tmp_path, tmp_path / "nope.wav", media("portrait_474.png")), "not found", "nope.wav")


def test_corrupt_file(tmp_path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    assert_clean_error(gen(tmp_path, media("en_radio_8s.wav"), bad), "bad.mp4")


def test_unsupported_file(tmp_path) -> None:
    txt = tmp_path / "notes.wav"
    txt.write_text("this is not audio\n" * 50)
    assert_clean_error(gen(tmp_path, txt, media("portrait_474.png")), "notes.wav")


def test_audio_file_without_sound_track(tmp_path) -> None:
    silent_video = tmp_path / "mute.mp4"
    with av.open(str(silent_video), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 64, 64, "yuv420p"
        for _ in range(10):
            for p in st.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    assert_clean_error(gen(tmp_path, silent_video, media("portrait_474.png")), "no sound track")


def test_face_is_an_audio_file(tmp_path) -> None:
    assert_clean_error(gen(tmp_path, media("en_radio_8s.wav"), media("zh_news_8s.wav")), "no picture")


def test_template_without_a_face(tmp_path) -> None:
    import cv2

    landscape = tmp_path / "wall.png"
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 255, (360, 480, 3), dtype=np.uint8), (0, 0), 6)
    cv2.imwrite(str(landscape), img)
    assert_clean_error(gen(tmp_path, media("en_radio_8s.wav"), landscape), "no face")


@pytest.mark.parametrize("kind", ["zero-bytes", "zero-samples"])
def test_zero_length_audio(tmp_path, kind: str) -> None:
    audio = tmp_path / "empty.wav"
    if kind == "zero-bytes":
        audio.write_bytes(b"")
    else:
        import soundfile as sf

        sf.write(audio, np.zeros(0, np.float32), 16000)
    assert_clean_error(gen(tmp_path, audio, media("portrait_474.png")), "empty")


def test_unknown_engine_and_device(tmp_path) -> None:
    r = run_cli("generate", "--audio", str(media("en_radio_8s.wav")), "--face", str(media("portrait_474.png")),
                "-o", str(tmp_path / "o.mp4"), "--engine", "magic")
    assert_clean_error(r, "unknown engine")
    r = run_cli("generate", "--audio", str(media("en_radio_8s.wav")), "--face", str(media("portrait_474.png")),
                "-o", str(tmp_path / "o.mp4"), "--device", "tpu")
    assert_clean_error(r, "unknown device")


def test_no_output_left_on_failure(tmp_path) -> None:
    shutil.copy(media("portrait_474.png"), tmp_path / "p.png")
    gen(tmp_path, tmp_path / "missing.wav", tmp_path / "p.png")
    assert not (tmp_path / "o.mp4").exists()


def test_an_output_that_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch) -> None:
    """The output was first opened after the analysis: minutes of work, then a traceback."""
    import lipdub
    import lipdub.pipeline
    from lipdub.errors import InputError

    def too_early(*_a, **_k):
        raise AssertionError("the analysis started before the output was checked")

    monkeypatch.setattr(lipdub.pipeline, "analyse_audio", too_early)
    monkeypatch.setattr(lipdub.pipeline, "_analyse_face", too_early)
    blocker = tmp_path / "report.txt"
    blocker.write_text("a file where a folder would have to be")
    audio, face = media("en_speech_60s.wav"), media("portrait_474.png")
    with pytest.raises(InputError, match="report.txt is a file"):
        lipdub.generate(audio, face, blocker / "out.mp4", device="cpu")
    with pytest.raises(InputError, match="is a folder"):
        lipdub.generate(audio, face, tmp_path, device="cpu")
    r = run_cli("generate", "--audio", str(audio), "--face", str(face), "-o", str(blocker / "o.mp4"))
    assert_clean_error(r, "report.txt is a file", "choose another output")


def test_batch_checks_its_inputs_against_the_limits_its_renders_use(tmp_path) -> None:
    """`batch` checked every input with no length limit, then each render refused it with the default one."""
    from conftest import cut_audio

    speech = cut_audio(media("en_radio_8s.wav"), tmp_path / "speech.wav", 3.0)
    face = media("portrait_474.png")
    r = run_cli("batch", "--audio", str(speech), "--face", str(face), "-o", str(tmp_path / "out"),
                "--max-audio-s", "2")
    assert_clean_error(r, "speech.wav", "the limit is")
    assert not (tmp_path / "out").exists()  # refused before anything was rendered
