"""Issue #7: the corpus of broken files through the CLI and the API. Every case gets a specific answer,
the server keeps answering /health, and nothing is written outside the data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import MEDIA, media, needs_media, run_cli
from fastapi.testclient import TestClient
from hostile_corpus import Case, build
from studio_support import LOCAL, NoRender, short_audio

from lipdub.studio.jobs.service import Settings, Studio
from lipdub.studio.web.app import create_app

pytestmark = [needs_media, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Case]:
    return {c.id: c for c in build(MEDIA, tmp_path_factory.mktemp("corpus"))}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("good")
    return {"audio": short_audio(tmp / "speech_1s.wav", 1.0), "face": media("portrait_474.png")}


def build_ids() -> list[Case]:
    # Case ids (for parametrize) without writing files: build into a throwaway folder once.
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return build(MEDIA, Path(d)) if MEDIA.is_dir() else []


CASES = build_ids()
REFUSED = [c.id for c in CASES if c.expect is not None and not c.render]


def _check_cli_error(r, case: Case) -> None:
    assert r.returncode != 0, (case.id, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("[ERROR]")]
    assert len(errors) == 1, r.stderr
    for word in case.expect or ():
        assert word.lower() in errors[0].lower(), (case.id, errors[0])


@pytest.mark.parametrize("case_id", REFUSED)
def test_cli_refuses(corpus, good, tmp_path, case_id: str) -> None:
    case = corpus[case_id]
    audio = case.path if case.role == "audio" else good["audio"]
    face = case.path if case.role == "face" else good["face"]
    out = tmp_path / "o.mp4"
    r = run_cli("generate", "--audio", str(audio), "--face", str(face), "-o", str(out), "--device", "cpu")
    _check_cli_error(r, case)
    assert not out.exists()


@pytest.mark.parametrize("audio_id,face_id", [
    ("2 s of digital silence", "1-frame video"),  # silence is valid: a resting mouth
    ("Chinese file name", "two faces in one photo"),
    (None, "bit-flipped frames (mid-file)"),
    (None, "image with no face"),
    (None, "very dark photo (2% brightness)"),
])
def test_cli_render_cases(corpus, good, tmp_path, audio_id: str | None, face_id: str) -> None:
    """Cases only a render can decide: a correct MP4, or one clear error after the analysis."""
    audio = corpus[audio_id].path if audio_id else good["audio"]
    face = corpus[face_id].path
    out = tmp_path / "渲染 out.mp4"
    r = run_cli("generate", "--audio", str(audio), "--face", str(face), "-o", str(out), "--device", "cpu",
                "--engine", "warp")
    expect = corpus[face_id].expect
    if expect is None:
        assert r.returncode == 0, r.stderr
        from conftest import video_facts

        facts = video_facts(out)
        assert facts["frames"] >= 20 and facts["audio_codec"] == "aac"
    else:
        _check_cli_error(r, corpus[face_id])
        assert not out.exists()


def _tree(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


def test_api_corpus(corpus, good, tmp_path) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data, device="cpu", workers=1, rate_per_minute=0)  # rate: test_security
    outside_before = _tree(tmp_path) | _tree(Path(os.getcwd()))
    app = create_app(settings, Studio(settings, dispatcher=NoRender()))
    answers = {}
    with TestClient(app, base_url=LOCAL) as client:
        for case in CASES:
            c = corpus[case.id]
            other = good["face"] if c.role == "audio" else good["audio"]
            names = {c.role: c.path, ("face" if c.role == "audio" else "audio"): other}
            r = client.post("/api/v1/jobs", files=[(k, (p.name, p.read_bytes())) for k, p in names.items()])
            answers[case.id] = r.status_code
            if c.expect is not None and not c.render:
                assert r.status_code == 422, (case.id, r.text)
                body = r.json()
                assert body["field"] == c.role, body
                assert c.path.name in body["detail"], body
                for word in c.expect:
                    assert word.lower() in body["detail"].lower(), (case.id, body)
                assert str(data) not in body["detail"]
            else:  # valid at the door; the render's answer is checked through the CLI
                assert r.status_code == 202, (case.id, r.text)
            assert client.get("/api/v1/health").json()["status"] == "ok"
        # A refused upload leaves nothing behind; only the accepted ones are stored.
        stored = list((data / "uploads").rglob("*.*"))
        accepted = {corpus[c.id].path.read_bytes() for c in CASES if answers[c.id] == 202}
        accepted |= {good["audio"].read_bytes(), good["face"].read_bytes()}
        assert {p.read_bytes() for p in stored} <= accepted
    new_outside = (_tree(tmp_path) | _tree(Path(os.getcwd()))) - outside_before
    assert all(p.startswith(str(data)) for p in new_outside), new_outside
